"""Speed figures for the pipeline (issues 2 and 3), printed as a table.

    python -m bench.pipeline_bench [--skip-repro] [--skip-training]

Measures on the full data set from the local mirror (MNIST_MIRROR):
- fetch (read, gunzip, verify four files) plus idx parsing, in process;
- a full `dvc repro` of a fresh copy of the project with one candidate (mlp128), and a
  no-op `dvc repro` beside `dvc version` as the baseline of DVC's own start-up;
- per candidate: training images/s, R1 (10 epochs) and R2 (2 epochs) full runs, and
  the time to evaluate the 10,000 test images.
Times are wall-clock seconds on this machine; compare ratios, absolute times are noisy.
The first line calibrates the machine (a pure-Python loop and a float32 matmul), so that
figures from different runs, or from a VM whose neighbours are busy, can be compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from pipeline import fetch, models, normalise, split, train
from pipeline.evaluate import make_predictor, to_pixels
from pipeline.params import EvaluateParams, FetchParams, SplitParams, TrainParams, load_section

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
rows: list[tuple[str, str, str]] = []


def report(what: str, figure: str, target: str = "") -> None:
    rows.append((what, figure, target))
    print(f"{what:<58} {figure:>16}  {target}", flush=True)


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def calibrate() -> None:
    def python_loop():
        total = 0
        for i in range(10_000_000):
            total += i
        return total

    a = torch.randn(1024, 1024)
    loop, _ = timed(python_loop, repeat=3)
    matmul, _ = timed(lambda: [a @ a for _ in range(20)], repeat=3)
    report("calibration: 10^7 Python additions (best of 3)", f"{loop:.2f} s")
    report("calibration: 20 float32 1024x1024 matmuls (best of 3)", f"{matmul:.2f} s")


def bench_fetch(tmp: Path) -> dict:
    params = load_section(PARAMS, "fetch", FetchParams)
    raw = tmp / "raw"

    def fetch_and_parse():
        fetch.fetch_all(params, raw)
        return split.load_raw(raw, "train"), split.load_raw(raw, "t10k")

    seconds, (train_part, test_part) = timed(fetch_and_parse, repeat=3)
    report("fetch from local mirror + verify + parse (best of 3)", f"{seconds:.2f} s", "<= 3 s")
    parts = split.split(train_part, test_part, load_section(PARAMS, "split", SplitParams))
    stats = normalise.statistics(parts["train"][0], standardise=False)
    data = {name: (normalise.apply(x, stats), y) for name, (x, y) in parts.items()
            if name != "test"}
    return data | {"test_pixels": to_pixels(parts["test"][0])}


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def bench_repro(tmp: Path) -> None:
    project = tmp / "project"
    project.mkdir()
    for name in ["pipeline", "serving", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, project / name)
    shutil.copytree(ROOT / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load(PARAMS.read_text())
    params["train"]["enabled"] = ["mlp128"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "BENTOML_HOME": str(tmp / "bentoml")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True)
    full = run(["dvc", "repro"], project, env)
    report("full `dvc repro`, 60,000 images, mlp128, incl. promote+package",
           f"{full:.1f} s", "<= 90 s")
    noop = statistics.median(run(["dvc", "repro"], project, env) for _ in range(5))
    baseline = statistics.median(run(["dvc", "version"], project, env) for _ in range(5))
    report("no-op `dvc repro` (median of 5)", f"{noop:.2f} s", "<= 1.5 s")
    # The issue puts DVC's own start-up at about 0.5 s and the target at 1.5 s: 3x.
    report("  baseline: `dvc version` (median of 5)", f"{baseline:.2f} s",
           f"no-op / baseline {noop / baseline:.1f}x (target 1.5 / 0.5 s = 3x)")


def trained(c, data: "train.Data") -> torch.nn.Module:
    net = train.build_net(c)
    train.train_torch(net, c, data, seed=0)
    return net


def bench_training(data: dict) -> None:
    candidates = load_section(PARAMS, "train", TrainParams).candidates
    to_tensors = lambda part: (torch.from_numpy(part[0]), torch.from_numpy(part[1].astype("int64")))
    x_train, y_train = to_tensors(data["train"])
    x_val, y_val = to_tensors(data["val"])
    pixels = data["test_pixels"]
    batch_size = load_section(PARAMS, "evaluate", EvaluateParams).batch_size
    full_runs = {"mlp_tanh16": "<= 5 s (R1, 10 epochs)", "cnn_numpy": "<= 15 s (R2, 2 epochs)"}
    for name, c in candidates.items():
        if c.arch == "logreg":
            continue
        net = train.build_net(c)
        threads = train.set_threads(0, c.arch)
        if name in full_runs:  # best of 2, each from a fresh network, validation included
            data_full = train.Data(x_train, y_train, x_val, y_val)
            seconds, net = timed(lambda: trained(c, data_full), repeat=2)
            report(f"train {name}, {c.epochs} epochs on 50,000 (best of 2)", f"{seconds:.1f} s",
                   full_runs[name])
        # Throughput on a 10,000-image slice, one epoch (validation pass excluded); the
        # best of 2, so that one-off set-up (oneDNN picking kernels) is not counted.
        n = 10_000
        short = c.model_copy(update={"epochs": 1})
        sliced = train.Data(x_train[:n], y_train[:n], x_val[:1], y_val[:1])
        seconds, _ = timed(lambda: trained(short, sliced), repeat=2)
        report(f"train {name}: images/s (1 epoch of {n:,}, batch {c.batch_size}, "
               f"{threads} thread{'s' if threads > 1 else ''})",
               f"{n / seconds:,.0f} img/s")
        # As the evaluate stage does it: its batch size, CNNs in channels_last.
        predictor = make_predictor(c, net, {"mean": 0.0, "std": 1.0}, channels_last=True)
        models.predict_proba(predictor, pixels[:batch_size], batch_size)  # warm-up
        seconds, _ = timed(lambda: models.predict_proba(predictor, pixels, batch_size), repeat=3)
        report(f"evaluate {name}: 10,000 test images (tta={c.tta})", f"{seconds:.2f} s", "<= 1 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-repro", action="store_true", help="skip the dvc repro timings")
    p.add_argument("--skip-training", action="store_true", help="skip per-candidate timings")
    args = p.parse_args()
    if not os.environ.get(fetch.MIRROR_ENV):
        sys.exit(f"set {fetch.MIRROR_ENV} to the offline MNIST mirror (e.g. ../shared/mnist)")
    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    calibrate()
    with tempfile.TemporaryDirectory() as tmp:
        data = bench_fetch(Path(tmp))
        if not args.skip_repro:
            bench_repro(Path(tmp))
        if not args.skip_training:
            bench_training(data)


if __name__ == "__main__":
    main()
