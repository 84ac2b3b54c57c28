"""GPU figures: cnn_fast and cnn_compact trained on CUDA with the pipeline's own code.

    python -m bench.gpu [--out docs/gpu.md]

For each: seconds of training, images/s, validation accuracy, test accuracy after every
epoch, and the seconds until test accuracy first reached 99 % (the headline: 99 % on one
GPU). The data comes from the MNIST mirror, split and normalised as the pipeline does.
Without a CUDA GPU it says so, writes nothing and exits 0: no figure is made up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.report import ROOT, Report
from pipeline import distributed, inference, models, training
from pipeline.params import FetchParams, SplitParams, TrainParams, load_section
from pipeline.stages import fetch, normalise, split

PARAMS = ROOT / "params.yaml"
SECTION = "One GPU"


def data_on_disk(folder: Path):
    fetch.fetch_all(load_section(PARAMS, "fetch", FetchParams), folder)
    parts = split.split(
        split.load_raw(folder, "train"),
        split.load_raw(folder, "t10k"),
        load_section(PARAMS, "split", SplitParams),
    )
    stats = normalise.statistics(parts["train"][0], standardise=False)

    def tensors(name):
        images, labels = parts[name]
        return torch.from_numpy(normalise.apply(images, stats)), torch.from_numpy(
            labels.astype("int64")
        )

    return training.Data(*tensors("train"), *tensors("val")), parts["test"]


def bench_candidate(report: Report, name: str, data: training.Data, test, device) -> None:
    candidate = load_section(PARAMS, "train", TrainParams).candidates[name]
    context = distributed.Context(device, dtype=distributed.autocast_dtype("auto", device))
    pixels = inference.to_pixels(test[0])
    labels = torch.from_numpy(test[1].astype("int64"))
    torch.manual_seed(0)
    net = models.build(candidate)
    tested: list[float] = []
    testing = 0.0  # seconds spent on the test set, left out of the training time
    reached = None  # training seconds when test accuracy first reached 99 %
    started = time.perf_counter()

    def after_epoch(_row: dict) -> None:
        nonlocal testing, reached
        torch.cuda.synchronize()
        paused = time.perf_counter()
        predictor = inference.make_predictor(candidate, net, {"mean": 0.0, "std": 1.0})
        probs = inference.in_batches(predictor, pixels, 2048, device)
        tested.append(float((probs.argmax(1) == labels).float().mean()))
        if reached is None and tested[-1] >= 0.99:
            reached = paused - started - testing
        testing += time.perf_counter() - paused

    history = training.train_torch(
        net, candidate, data, seed=0, on_epoch=after_epoch, context=context
    )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started - testing
    images = len(data.y_train) * candidate.epochs
    precision = str(context.dtype).removeprefix("torch.") if context.dtype else "fp32"
    gpu = torch.cuda.get_device_name(device)
    report.row(
        SECTION, f"{name}: {candidate.epochs} epochs on {gpu}, {precision}", f"{seconds:.1f} s"
    )
    report.row(SECTION, f"{name}: training images/s", f"{images / seconds:,.0f}")
    report.row(SECTION, f"{name}: validation accuracy", f"{history.epochs[-1]['val_accuracy']:.4f}")
    report.row(SECTION, f"{name}: test accuracy", f"{tested[-1]:.4f}")
    report.row(
        SECTION,
        f"{name}: seconds of training to 99 % test accuracy",
        f"{reached:.1f} s" if reached is not None else "not reached",
    )


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu.md")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"bench.gpu: torch {torch.__version__} sees no CUDA GPU here: nothing measured")
        sys.exit(0)
    device = torch.device("cuda", 0)
    report = Report("GPU training")
    report.calibrate()
    with tempfile.TemporaryDirectory() as tmp:
        data, test = data_on_disk(Path(tmp))
    for name in ("cnn_fast", "cnn_compact"):
        bench_candidate(report, name, data, test, device)
    report.write(args.out)


if __name__ == "__main__":
    main()
