"""Same params, same weights: every candidate trained by the code at a git ref and by the
working tree must write the same bytes.

    python -m harness.same_weights --base HEAD
    python -m harness.same_weights --base main~3 --candidates mlp128,cnn_fast --no-distributed

For each candidate of params.yaml's ``train.candidates`` (as the base ref has them), a
small profile (a stratified cut of the training images, 1 epoch, 2 for cnn_fast,
1 thread, on the CPU) is trained twice with the train stage: once by the code at
``--base`` (a ``git worktree`` in a temporary folder, removed afterwards) and once by
the working tree. Each run has its own output folder and its own MLflow SQLite store.
Compared: the sha256 of weights.safetensors, history.csv, iterations.csv and
metrics.json, and the MLflow run (status, params, metric names and the values that do not
measure time, tags, artifacts, the logged model) and run.json's keys. Each ensemble
trains once more with the other ``member_data`` (cnn_ensemble_own: each member its own
order and jitter), and mlp128 once more as 2 data-parallel processes (torchrun, gloo)
unless ``--no-distributed``. fp16's gradient scaler needs a CUDA GPU: not run here.

Data: ``--data`` (a folder of normalised train.npz, val.npz and stats.json; default the
workspace's data/normalised when `dvc repro` has made it), else (or with
``--from-mirror``) built here by the pipeline's own fetch, split and normalise stages
from the offline MNIST mirror (harness/mnist.py).

Out: a table (candidate, base sha, tree sha, same?) on stdout; exit 1 if anything differs
or a run fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPARED_FILES = ("weights.safetensors", "history.csv", "iterations.csv", "metrics.json")
TWO_EPOCHS = "cnn_fast"  # its OneCycle schedule spans both epochs
DISTRIBUTED = "mlp128"
# Metrics that measure time or the machine, not the training: their names are compared,
# not their values (system metrics not at all: how many samples land varies).
TIMED_METRICS = {"seconds", "train_seconds", "train_images_per_s"}
# Tags that name the process or the code's commit (mlflow.source.git.* too: the base is a
# detached worktree).
VARYING_TAGS = {"pid", "pid_started", "git_commit", "git_source_changed", "git_changed_source"}
# Tags whose values are compared; of the others, only that they are there.
COMPARED_TAGS = ("candidate", "arch", "data_sha256.", "mlflow.runName")


@dataclass(frozen=True)
class Job:
    candidate: str
    side: str  # "base" or "tree"
    code: Path  # the repository root whose pipeline/ runs
    processes: int = 1

    @property
    def label(self) -> str:
        return self.candidate if self.processes == 1 else f"{self.candidate} x{self.processes}"


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def checkout(commit: str, path: Path, files: list[str] = ()) -> Path:
    """A ``git worktree`` of ``commit`` at ``path``, with ``files`` copied over it from the
    working tree."""
    git("worktree", "add", "--detach", "--quiet", str(path), commit)
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, path / name)
    return path


def stage_env(code: Path, work: Path) -> dict[str, str]:
    """The train stage's environment: ``code``'s pipeline first on the path, one thread, its
    own MLflow store, nothing from the caller's faults or tracking."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MNIST_FAULT", "DVC_ROOT", "PYTHONPATH")
    }
    return env | {
        "PYTHONPATH": str(code),
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }


def run_stage(module: str, args: list[str], code: Path, work: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` with ``code``'s pipeline, in ``work`` (MLflow's local
    artifacts land there, not in either checkout)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=work,
        env=stage_env(code, work),
        capture_output=True,
        text=True,
        timeout=1200,
    )


def small_data(
    source: Path | None, out: Path, train_images: int, val_images: int, code: Path, params: dict
) -> Path:
    """train.npz (a stratified ``train_images``), val.npz (a stratified ``val_images``) and
    stats.json in ``out``: cut from ``source``, or made by ``code``'s fetch, split and
    normalise with ``params``."""
    out.mkdir(parents=True)
    if source is None:
        return built_data(out, train_images, val_images, code, params)
    import numpy as np

    from pipeline.dataset import stratified_take

    for name, size in (("train", train_images), ("val", val_images)):
        with np.load(source / f"{name}.npz", allow_pickle=False) as arrays:
            images, labels = stratified_take(arrays["images"], arrays["labels"], size, seed=0)
        np.savez(out / f"{name}.npz", images=images, labels=labels)
    shutil.copy(source / "stats.json", out / "stats.json")
    return out


def built_data(out: Path, train_images: int, val_images: int, code: Path, params: dict) -> Path:
    """The pipeline's own fetch (from the offline mirror), split and normalise."""
    from harness.mnist import mirror

    params = json.loads(json.dumps(params))  # a copy
    params["split"].update(train_limit=train_images, val_size=val_images, test_limit=1000)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ["MNIST_MIRROR"] = str(mirror())
    steps = [
        ("fetch", ["--out", "raw"]),
        ("split", ["--raw", "raw", "--out", "split"]),
        ("normalise", ["--split", "split", "--out", "normalised"]),
    ]
    for stage, args in steps:
        result = run_stage(
            f"pipeline.stages.{stage}", ["--params", "params.yaml", *args], code, out
        )
        if result.returncode:
            sys.exit(f"same_weights: {stage} failed:\n{result.stdout}\n{result.stderr}")
    return out / "normalised"


def profile(params: dict, names: list[str] | None) -> dict:
    """params.yaml cut to a short run of each candidate: 1 epoch (2 for TWO_EPOCHS), all of
    the (already cut) training images, 1 thread, float32 on the CPU; ``train.enabled`` the
    ``names`` (default: every candidate), each ensemble followed by a twin with the other
    ``member_data`` (its name suffixed with it): shared and own images take different
    paths through the loop."""
    params["train"].update(threads=1, device="cpu", precision="auto", processes=1)
    candidates = params["train"]["candidates"]
    enabled = []
    for name in names or list(candidates):
        candidate = candidates[name]
        candidate["train_size"] = None
        if "epochs" in candidate:
            candidate["epochs"] = 2 if name == TWO_EPOCHS else 1
        enabled.append(name)
        if candidate.get("members", 1) > 1:
            other = "own" if candidate.get("member_data", "shared") == "shared" else "shared"
            candidates[f"{name}_{other}"] = candidate | {"member_data": other}
            enabled.append(f"{name}_{other}")
    params["train"]["enabled"] = enabled
    return params


def train(job: Job, params: dict, data: Path, work: Path) -> dict:
    """Run the train stage for ``job`` in its own folder; what it wrote, hashed."""
    folder = work / job.side / job.label.replace(" ", "_")
    folder.mkdir(parents=True)
    params = json.loads(json.dumps(params))  # a copy
    params["train"]["processes"] = job.processes
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    args = ["--params", "params.yaml", "--candidate", job.candidate, "--data", str(data)]
    started = time.perf_counter()
    result = run_stage("pipeline.stages.train", [*args, "--out", "out"], job.code, folder)
    seconds = time.perf_counter() - started
    if result.returncode:
        tail = (result.stdout + result.stderr)[-3000:]
        return {"error": f"exit {result.returncode}:\n{tail}", "seconds": seconds}
    out = folder / "out"
    hashes = {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in COMPARED_FILES
    }
    return {"files": hashes, "run": mlflow_run(folder), "seconds": seconds}


def mlflow_run(folder: Path) -> dict:
    """What the run in ``folder``'s store holds, less what names the process or the time."""
    from mlflow import MlflowClient

    run_json = json.loads((folder / "out" / "run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    run = client.get_run(run_json["run_id"])
    metrics = {}
    for key in sorted(run.data.metrics):
        if key.startswith("system/"):
            continue
        history = client.get_metric_history(run.info.run_id, key)
        timed = key in TIMED_METRICS
        metrics[key] = [(m.step, None if timed else m.value) for m in history]

    def artifacts(path: str | None = None) -> list[str]:
        found = []
        for item in client.list_artifacts(run.info.run_id, path):
            found += artifacts(item.path) if item.is_dir else [item.path]
        return found

    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    return {
        "status": run.info.status,
        "params": run.data.params,
        "metrics": metrics,
        "tags": {
            k: (v if k.startswith(COMPARED_TAGS) else "...")
            for k, v in sorted(run.data.tags.items())
            if k not in VARYING_TAGS and not k.startswith("mlflow.source.git")
        },
        "inputs": sorted(
            (i.dataset.name, i.dataset.digest, *(t.value for t in i.tags))
            for i in run.inputs.dataset_inputs
        ),
        "artifacts": sorted(artifacts()),
        "models": sorted((m.name, str(m.status)) for m in models),
        "run.json": sorted(run_json),
    }


def differences(base: dict, tree: dict) -> list[str]:
    """What differs between two runs' results, by name."""
    if "error" in base or "error" in tree:
        return ["the run failed"]
    found = [name for name in COMPARED_FILES if base["files"][name] != tree["files"][name]]
    for key, value in base["run"].items():
        other = tree["run"].get(key)
        if value == other:
            continue
        if isinstance(value, dict) and isinstance(other, dict):  # name the entries
            keys = sorted(k for k in value.keys() | other.keys() if value.get(k) != other.get(k))
            found.append(f"mlflow {key} ({', '.join(keys)})")
        else:
            found.append(f"mlflow {key}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.same_weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", required=True, help="git ref of the code to compare against")
    default_data = ROOT / "data" / "normalised"
    p.add_argument(
        "--data",
        type=Path,
        default=default_data if (default_data / "train.npz").is_file() else None,
        help="folder of normalised train.npz, val.npz, stats.json "
        "(default: data/normalised if present, else built from the MNIST mirror)",
    )
    p.add_argument(
        "--from-mirror", action="store_true", help="build the data from the MNIST mirror"
    )
    p.add_argument("--candidates", help="comma-separated names (default: every candidate)")
    p.add_argument("--train-images", type=int, default=1200, help="default: %(default)s")
    p.add_argument("--val-images", type=int, default=1000, help="default: %(default)s")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (default: %(default)s)")
    p.add_argument(
        "--no-distributed", action="store_true", help=f"skip {DISTRIBUTED} on 2 processes"
    )
    p.add_argument(
        "--files",
        nargs="+",
        metavar="PATH",
        help="compare the base with the base plus only these files of the working tree "
        "(while other work in the tree is unfinished)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)

    commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    params = yaml.safe_load(git("show", f"{commit}:params.yaml"))
    params = profile(params, args.candidates.split(",") if args.candidates else None)
    names = params["train"]["enabled"]
    work = Path(tempfile.mkdtemp(prefix="same_weights-"))
    worktrees = [checkout(commit, work / "base-code")]
    try:
        if args.files:  # the base with only these files from the working tree
            worktrees.append(checkout(commit, work / "tree-code", files=args.files))
        sides = {"base": worktrees[0], "tree": worktrees[-1] if args.files else ROOT}
        source = None if args.from_mirror else args.data
        data = small_data(
            source, work / "data", args.train_images, args.val_images, worktrees[0], params
        )
        jobs = [Job(name, side, code) for name in names for side, code in sides.items()]
        if not args.no_distributed and DISTRIBUTED in names:
            jobs += [Job(DISTRIBUTED, side, code, 2) for side, code in sides.items()]
        tree = f"{commit[:12]} with {' '.join(args.files)}" if args.files else "the working tree"
        print(
            f"same_weights: base {commit[:12]} vs {tree}; {len(jobs) // 2} trainings "
            f"each, {args.train_images} training images, in {work}",
            flush=True,
        )
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda job: train(job, params, data, work), jobs))
            results = dict(zip(jobs, done, strict=True))
    finally:
        for path in worktrees:
            git("worktree", "remove", "--force", str(path))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report(jobs, results)


def report(jobs: list[Job], results: dict[Job, dict]) -> int:
    """The table; 1 if any candidate differs."""
    rows = [("candidate", "base sha", "tree sha", "same?", "seconds")]
    failed = []
    for base, tree in zip(jobs[::2], jobs[1::2], strict=True):
        b, t = results[base], results[tree]
        diff = differences(b, t)
        short = [
            r["files"]["weights.safetensors"][:12] if "files" in r else "failed" for r in (b, t)
        ]
        same = "yes" if not diff else "NO: " + ", ".join(diff)
        rows.append((base.label, *short, same, f"{b['seconds']:.0f} / {t['seconds']:.0f}"))
        failed += [
            (job.label, job.side, r["error"]) for job, r in ((base, b), (tree, t)) if "error" in r
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
    print(
        "(sha: weights.safetensors; same? also compares history.csv, iterations.csv, "
        "metrics.json and the MLflow run)"
    )
    for label, side, error in failed:
        print(f"\n{label} ({side}) failed: {error}", file=sys.stderr)
    return 1 if any(not row[3].startswith("yes") for row in rows[1:]) else 0


if __name__ == "__main__":
    sys.exit(main())
