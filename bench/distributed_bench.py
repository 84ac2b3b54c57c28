"""Training past one CPU, measured on this machine: data-parallel processes against
threads, and bf16 autocast against float32.

    python -m bench.distributed_bench

- cnn_compact for one epoch of the 50,000 training images: 2 processes x 1 thread
  (torchrun, gloo) against 1 process x 2 threads, as a ratio;
- cnn_fast's 2 epochs in float32 and under bf16 autocast on the CPU: seconds and
  validation accuracy.
`python -m bench` runs this with the other benchmarks and writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.report import Report
from pipeline import atomic, distributed, models, training
from pipeline.params import FetchParams, SplitParams, TrainParams, load_section
from pipeline.stages import fetch, normalise, split

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
SECTION = "Training past one CPU"


def write_arrays(folder: Path) -> None:
    """The normalised train and val arrays of the full data set and their stats.json, as
    the normalise stage writes them."""
    fetch.fetch_all(load_section(PARAMS, "fetch", FetchParams), folder / "raw")
    parts = split.split(
        split.load_raw(folder / "raw", "train"),
        split.load_raw(folder / "raw", "t10k"),
        load_section(PARAMS, "split", SplitParams),
    )
    stats = normalise.statistics(parts["train"][0], standardise=False)
    atomic.write_json(folder / "stats.json", stats)
    for name in ("train", "val"):
        images, labels = parts[name]
        atomic.write_npz(
            folder / f"{name}.npz",
            images=normalise.apply(images, stats),
            labels=labels.astype("int64"),
        )


def epoch(candidate_name: str, folder: Path, threads: int, precision: str, epochs: int) -> dict:
    """Train a candidate (this process's part of it, under torchrun) and time it."""
    candidate = load_section(PARAMS, "train", TrainParams).candidates[candidate_name]
    candidate = candidate.model_copy(update={"epochs": epochs})
    context = distributed.start("cpu", precision)
    torch.set_num_threads(threads)
    data = training.load_data(folder, candidate, seed=0)
    torch.manual_seed(0)
    net = models.build(candidate)
    started = time.perf_counter()
    history = training.train_torch(net, candidate, data, seed=0, context=context)
    seconds = time.perf_counter() - started
    distributed.finish(context)
    return {
        "seconds": seconds,
        "rank": context.rank,
        "val_accuracy": history.epochs[-1]["val_accuracy"] if history.epochs else None,
    }


def worker_result(command: list[str]) -> dict:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def run_all(report: Report) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_arrays(folder)
        worker = [sys.executable, "-m", "bench.distributed_bench", "--worker", str(folder)]
        one = worker_result([*worker, "--threads", "2"])
        two = worker_result(
            [
                torchrun,
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "bench.distributed_bench",
                "--worker",
                str(folder),
                "--threads",
                "1",
            ]
        )
        report.row(
            SECTION,
            "cnn_compact, 1 epoch of 50,000: 1 process x 2 threads",
            f"{one['seconds']:.1f} s",
        )
        report.row(
            SECTION, "the same: 2 processes x 1 thread (torchrun, gloo)", f"{two['seconds']:.1f} s"
        )
        report.row(
            SECTION,
            "2 processes / 1 process (time)",
            f"{two['seconds'] / one['seconds']:.2f}x",
            "the path to many machines",
        )
        for precision in ("fp32", "bf16"):
            result = worker_result(
                [
                    *worker,
                    "--threads",
                    "2",
                    "--candidate",
                    "cnn_fast",
                    "--epochs",
                    "2",
                    "--precision",
                    precision,
                ]
            )
            report.row(
                SECTION,
                f"cnn_fast, 2 epochs on the CPU, {precision}: time",
                f"{result['seconds']:.1f} s",
            )
            report.row(
                SECTION,
                f"cnn_fast, 2 epochs on the CPU, {precision}: validation accuracy",
                f"{result['val_accuracy']:.4f}",
            )


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.distributed_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--worker", type=Path, help="(internal) train from these arrays, print JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--candidate", default="cnn_compact")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    if args.worker:
        result = epoch(args.candidate, args.worker, args.threads, args.precision, args.epochs)
        if result["rank"] == 0:
            print(json.dumps(result))
        return
    report = Report("Training past one CPU")
    report.calibrate()
    run_all(report)
    print(report.markdown())


if __name__ == "__main__":
    main()
