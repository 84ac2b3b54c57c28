"""`make chaos`: the pipeline's and the service's failure modes, tried and measured,
written to docs/reliability.md.

    python -m reliability [--exhaustive] [--seed 0] [--candidates small|all] [--stages a,b]
                          [--skip-pipeline] [--skip-service] [--skip-hostile]
                          [--soak-seconds 30] [--examples 500] [--out docs/reliability.md]

The pipeline: a real DVC project in a temporary folder (2,000 training images; the
small profile's two candidates, or all nine with --candidates all). Every stage is killed
at a seeded moment (while importing, mid-work, or while writing its outputs) with SIGKILL
or SIGTERM; the six ways take turns from stage to stage, so one run tries each way on
several stages. --exhaustive kills every stage all six ways (six times as long). After
each kill the outputs still at their paths must be whole, and `dvc repro` must repair the
project to the clean run's bytes with a clean `dvc status` and no MLflow run left
RUNNING. Then promotion and packaging are killed at their weakest moments, and two
forced runs must give the same bytes.

The service (reliability/service.py): soak, overload, a killed worker, log volume; and
hostile input generated from its OpenAPI schema.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.faults import promotion_under_kill
from harness.mnist import mirror
from harness.project import Project, new_project, open_project, small_profile
from harness.report import ROOT, Report

SECTION = "The pipeline under faults"
MOMENTS = ("importing", "mid-work", "writing outputs")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}


@dataclass
class Trial:
    stage: str
    moment: str
    signal: str
    how: str  # the delay or the fault point
    exit_code: int | None
    half_written: list[str]
    repaired: bool
    differing: list[str]  # outputs whose bytes differ from the clean run's after repair
    status_clean: bool
    running_runs: int
    repair_seconds: float

    @property
    def survived(self) -> bool:
        return (
            not self.half_written
            and self.repaired
            and not self.differing
            and self.status_clean
            and self.running_runs == 0
        )


def stages(project: Project) -> list[str]:
    listed = project.run("dvc", "stage", "list", "--name-only").stdout.split()
    return [name for name in listed if name]


def stage_process(dvc: subprocess.Popen, stage: str, timeout: float = 60) -> psutil.Process:
    """The stage's own Python process, under `dvc repro`."""
    module = "pipeline.stages." + stage.split("@")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(dvc.pid).children(recursive=True):
                if module in " ".join(child.cmdline()):
                    return child
        except psutil.Error:
            pass
        if dvc.poll() is not None:
            raise RuntimeError(f"{stage} finished before it could be killed")
        time.sleep(0.01)
    raise RuntimeError(f"{stage}: no process of {module} seen in {timeout} s")


def mlflow_running(project: Project) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    return len(runs)


def half_written(project: Project, clean: dict[str, str]) -> list[str]:
    """Output files whose bytes are neither absent nor the clean run's."""
    now = project.fingerprint()
    return [path for path, digest in now.items() if path in clean and digest != clean[path]]


def kill(
    project: Project,
    stage: str,
    moment: str,
    sig: str,
    rng: random.Random,
    durations: dict[str, float],
    clean: dict[str, str],
) -> Trial:
    env = dict(project.env)
    if moment == "writing outputs":  # just before the first atomic rename
        env["MNIST_FAULT"] = f"atomic.replace#1:{'kill' if sig == 'SIGKILL' else 'term'}"
        how = env["MNIST_FAULT"]
        result = project.run(
            "dvc", "repro", "--force", "--single-item", stage, check=False, env=env
        )
        code = result.returncode
    else:
        if moment == "importing":  # torch and friends take a second or more to import
            delay = rng.uniform(0.05, 0.5)
        else:  # somewhere in the middle of the clean run's duration
            delay = rng.uniform(0.3, 0.7) * durations[stage]
        how = f"after {delay:.2f} s"
        dvc = subprocess.Popen(
            ["dvc", "repro", "--force", "--single-item", stage],
            cwd=project.path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            target = stage_process(dvc, stage)
            time.sleep(delay)
            target.send_signal(SIGNALS[sig])
        except (RuntimeError, psutil.Error):
            how += " (the stage ended first)"
        code = dvc.wait(timeout=600)
    broken = half_written(project, clean)
    started = time.perf_counter()
    repaired = project.run("dvc", "repro", check=False).returncode == 0
    seconds = time.perf_counter() - started
    return Trial(
        stage,
        moment,
        sig,
        how,
        code,
        broken,
        repaired,
        half_written(project, clean),
        "up to date" in project.run("dvc", "status", check=False).stdout,
        mlflow_running(project),
        seconds,
    )


def all_nine(params: dict) -> dict:
    """2,000 training images, every candidate at its own settings."""
    params["split"].update(val_size=1000, train_limit=2000, test_limit=1000)
    for c in params["train"]["candidates"].values():
        if "train_size" in c:
            c["train_size"] = None
    return params


def run_pipeline(
    report: Report,
    seed: int,
    candidates: str,
    tmp: Path,
    only: list[str] | None = None,
    exhaustive: bool = False,
    project: Project | None = None,
    tiny: bool = False,
) -> None:
    """Kill the stages (``only`` these, if given) of ``project`` (an already reproduced
    one, else a new copy of the repository on ``candidates``' profile) and measure the
    repair; ``tiny``: no forced rerun and no promotion scenario afterwards."""
    rng = random.Random(seed)
    if project is None:
        profile = all_nine if candidates == "all" else small_profile
        project = new_project(tmp / "project", mirror(), profile=profile)
    project.run("dvc", "repro")
    clean = project.fingerprint()
    chosen = [s for s in stages(project) if not only or s.split("@")[0] in only]
    durations = {}
    for stage in chosen:  # each stage alone, timed, for the mid-work moment
        started = time.perf_counter()
        project.run("dvc", "repro", "--force", "--single-item", stage)
        durations[stage] = time.perf_counter() - started
    report.table(
        SECTION,
        "stage",
        "moment",
        "signal",
        "how",
        "exit",
        "half-written outputs",
        "repaired",
        "same bytes",
        "status clean",
        "runs left RUNNING",
        "repair",
    )
    trials = []
    ways = list(itertools.product(MOMENTS, SIGNALS))  # the six ways to kill a stage
    for number, stage in enumerate(chosen):
        for moment, sig in ways if exhaustive else [ways[number % len(ways)]]:
            trial = kill(project, stage, moment, sig, rng, durations, clean)
            trials.append(trial)
            report.add(
                SECTION,
                stage,
                moment,
                sig,
                trial.how,
                str(trial.exit_code),
                ", ".join(trial.half_written) or "0",
                yes(trial.repaired),
                ", ".join(trial.differing) or "yes",
                yes(trial.status_clean),
                str(trial.running_runs),
                f"{trial.repair_seconds:.1f} s",
            )
    survived = sum(t.survived for t in trials)
    report.note(
        SECTION,
        f"{survived} of {len(trials)} kills survived: whole outputs, "
        "repaired to the clean run's bytes, clean status, no RUNNING run.",
    )
    if only:
        report.note(
            SECTION,
            f"Stages killed: {', '.join(chosen)} (--stages {','.join(only)}).",
        )
    if not exhaustive:
        report.note(
            SECTION,
            "Each stage killed one way, the six ways (three moments, two signals) taking "
            "turns; `python -m reliability --exhaustive` kills every stage all six ways.",
        )
    if tiny:
        return
    project.run("dvc", "repro", "--force")
    report.row(
        "Determinism",
        "`dvc repro --force` gives the clean run's bytes for every "
        "reproducible output (weights, metrics, predictions, pictures, data)",
        ", ".join(half_written(project, clean)) or "yes",
    )
    if candidates != "all":  # the scenario counts on the small profile's two candidates
        promotion(report, project)


def promotion(report: Report, project: Project) -> None:
    facts = promotion_under_kill(project)
    section = "Promotion and packaging under kill"
    register, alias, after = (
        facts["after_register_kill"],
        facts["after_alias_kill"],
        facts["after_repro"],
    )
    report.row(
        section,
        "promote killed between registering a version and moving the alias: "
        "the alias stays on the old champion, which loads",
        yes(register["champion"] == "mlp128" and register["loadable"]),
    )
    report.row(
        section,
        "promote killed between moving the alias and recording it: the new champion loads",
        yes(alias["loadable"]),
    )
    report.row(
        section,
        "package killed before building: the previous Bento still serves",
        yes(facts["previous_bento_serves"]),
    )
    report.row(
        section,
        "`dvc repro` after those: no duplicate registration",
        yes(after["versions"] == register["versions"]),
    )
    report.row(
        section,
        "... champion_history without a gap or a double entry",
        yes(after["no_gap"] and after["no_double"]),
    )
    report.row(
        section, "... the Bento built from the new champion", yes(after["bento_of_champion"])
    )


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m reliability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--exhaustive", action="store_true", help="kill every stage all six ways (slow)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="seconds, not minutes: kill split only (or --stages), no forced rerun, no "
        "promotion scenario, no soak; 20 hostile requests (the suite's check of the command)",
    )
    p.add_argument(
        "--project",
        type=Path,
        help="an already reproduced DVC project to kill stages in (default: a new copy)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", choices=["small", "all"], default="small")
    p.add_argument("--stages", help="comma-separated stage names to kill (default: every stage)")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-hostile", action="store_true")
    p.add_argument("--soak-seconds", type=int, default=30)
    p.add_argument("--examples", type=int, default=500, help="hostile requests to generate")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = p.parse_args()
    report = Report("Reliability")
    report.calibrate()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_pipeline:
            only = args.stages.split(",") if args.stages else ["split"] if args.tiny else None
            project = (
                open_project(args.project, mirror(), os.environ.get("BENTOML_HOME"))
                if args.project
                else None
            )
            run_pipeline(
                report,
                args.seed,
                args.candidates,
                Path(tmp),
                only,
                args.exhaustive,
                project=project,
                tiny=args.tiny,
            )
        if not (args.skip_service and args.skip_hostile):
            from reliability import service as chaos_service

            chaos_service.run_all(
                report,
                Path(tmp),
                soak_seconds=args.soak_seconds,
                examples=20 if args.tiny else args.examples,
                seed=args.seed,
                service=not (args.skip_service or args.tiny),
                capacity_seconds=2 if args.tiny else 10,
                hostile=not args.skip_hostile,
                bento_json=(args.project or ROOT) / "reports/package/bento.json",
            )
    report.write(args.out)
    print(json.dumps({"wrote": str(args.out)}))


if __name__ == "__main__":
    main()
