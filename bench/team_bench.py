"""Speed figures for working as a team, against the real stack on 127.0.0.1.

    python -m bench.team_bench

Measures, with deploy/stack.py's PostgreSQL, object store and `mlflow server` started
for the run and stopped after it:
- the small-profile pipeline (`dvc repro` of mlp128 alone on 2,000 images) against the
  tracking server, as a ratio to the same pipeline against the default SQLite file;
- `dvc pull` of the workspace's full pipeline outputs from the object store into a fresh
  clone, beside the training time of the `make run` that made them (needs a completed
  `make run` with its dvc.lock and metrics committed; skipped, and said, otherwise);
- two queued single-thread experiments of that pipeline at `dvc queue start -j 2` against
  `-j 1`.
`python -m bench` runs this with the other benchmarks and writes docs/performance.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy import stack as team_stack
from harness.experiments import run_queue
from harness.mnist import mirror
from harness.project import Project, new_project, small_profile
from harness.report import ROOT, Report, timed
from harness.serve import free_port

SECTION = "Working as a team"


def bench_server_against_sqlite(report: Report, stack: team_stack.Stack, tmp: Path) -> Project:
    """The same small pipeline against each store; returns the SQLite one, reproduced."""
    seconds, projects = {}, {}
    for store in ("SQLite", "server"):
        project = new_project(tmp / f"pipeline-{store}", mirror(), profile=single_threaded)
        if store == "server":
            project.env["MLFLOW_TRACKING_URI"] = stack.tracking_uri
        seconds[store], _ = timed(lambda p=project: p.run("dvc", "repro"))
        projects[store] = project
    report.row(
        SECTION,
        "small-profile `dvc repro` (mlp128 alone on one thread, 2,000 images), SQLite store",
        f"{seconds['SQLite']:.1f} s",
    )
    report.row(
        SECTION,
        "the same against the tracking server (PostgreSQL, S3 artifacts)",
        f"{seconds['server']:.1f} s",
    )
    report.row(SECTION, "server / SQLite", f"{seconds['server'] / seconds['SQLite']:.2f}x")
    return projects["SQLite"]


def bench_pull(report: Report, stack: team_stack.Stack, tmp: Path) -> None:
    summary = ROOT / "reports/summary/summary.json"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(summary)], cwd=ROOT, capture_output=True
    )
    if tracked.returncode != 0 or not (ROOT / ".dvc/cache").is_dir():
        report.note(
            SECTION,
            "`dvc pull` not measured: this workspace has no committed "
            "`make run` (summary.json in git, outputs in .dvc/cache).",
        )
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # Both clones take the workspace's dvc.lock, which names what its cache holds: the
    # committed one may name outputs of a run on another machine that this cache never had.
    pusher = Project(tmp / "pusher", env)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(pusher.path)], check=True)
    shutil.copy(ROOT / "dvc.lock", pusher.path / "dvc.lock")
    shutil.copytree(ROOT / ".dvc/cache", pusher.path / ".dvc/cache")
    for command in team_stack.dvc_remote(stack, "s3://dvc/bench"):
        pusher.run(*command)
    pusher.run("dvc", "push")
    puller = Project(tmp / "puller", env)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(puller.path)], check=True)
    shutil.copy(pusher.path / ".dvc/config", puller.path / ".dvc/config")
    shutil.copy(pusher.path / ".dvc/config.local", puller.path / ".dvc/config.local")
    shutil.copy(ROOT / "dvc.lock", puller.path / "dvc.lock")
    seconds, _ = timed(lambda: puller.run("dvc", "pull"))
    trained = sum(row["train_seconds"] for row in json.loads(summary.read_text()).values())
    size = sum(f.stat().st_size for f in (puller.path / ".dvc/cache").rglob("*") if f.is_file())
    report.row(
        SECTION,
        f"`dvc pull` of the full pipeline's outputs ({size / 2**20:.0f} MiB) into a fresh clone",
        f"{seconds:.1f} s",
    )
    report.row(
        SECTION,
        "the training alone in the `make run` that made them (sum of "
        "train_seconds; `make run` takes longer)",
        f"{trained:.0f} s",
    )
    report.row(SECTION, "pull / training", f"{seconds / trained:.3f}x")


def single_threaded(params: dict) -> dict:
    """The small profile with mlp128 alone, on one thread."""
    params = small_profile(params)
    params["train"]["enabled"] = ["mlp128"]
    params["train"]["threads"] = 1
    return params


def bench_queue(report: Report, project: Project) -> None:
    """Queued experiments of ``project`` (reproduced, the single_threaded profile)."""
    seconds = {}
    grids = {1: ["0.0004", "0.0008"], 2: ["0.0005", "0.001"]}
    for jobs, values in grids.items():
        seconds[jobs], experiments = timed(lambda j=jobs, v=values: run_queue(project, v, j))
        failed = [name for name, rev in experiments.items() if rev["state"] != "success"]
        if failed:
            report.note(SECTION, f"-j {jobs}: experiments {failed} did not succeed")
    report.row(
        SECTION, "2 queued single-thread experiments, `dvc queue start -j 1`", f"{seconds[1]:.1f} s"
    )
    report.row(SECTION, "the same at `-j 2`", f"{seconds[2]:.1f} s")
    report.row(SECTION, "-j 1 / -j 2 (speed-up)", f"{seconds[1] / seconds[2]:.2f}x")


def run_all(report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        folder = tmp / "stack"
        try:
            stack = team_stack.up(
                folder, pg_port=free_port(), s3_port=free_port(), mlflow_port=free_port()
            )
            project = bench_server_against_sqlite(report, stack, tmp)
            bench_pull(report, stack, tmp)
        finally:
            team_stack.down(folder, purge=True)
        bench_queue(report, project)


def main() -> None:
    report = Report("Working as a team")
    report.calibrate()
    run_all(report)
    print(report.markdown())


if __name__ == "__main__":
    main()
