"""robustness: how well one candidate reads test digits as people send them.

In: ``--candidate NAME``; its ``weights.safetensors`` and ``run.json`` from train;
``stats.json`` from normalise; ``digits.npz`` from photo_set (the same test digits
rendered in each kind of corruption and put through the service's preprocessing). Out,
in ``--out``: ``metrics.json`` (accuracy per kind, on the same digits as plain arrays,
the mean over kinds, and the run id of the weights scored), ``robustness.csv`` (a row per
kind) and ``robustness.png``; the record stage adds them to the candidate's MLflow run.
An image the preprocessing refused counts as wrong, as the service would answer it with a
400.

From ``--corruptions`` (digits.npz from corruption_set): the error on the validation
and test digits spoilt in the common ways, per corruption, per family and their mean,
sent as arrays (``/predict``) and as PNG files (``/predict_image``), in
``corruptions.json`` (validation for promotion's floor, test for the report) and
``corruptions.csv`` (test, a row per corruption).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline import atomic, cli, inference, runtime
from pipeline.params import TrainParams, load_section

BATCH = 512  # digits per forward pass


def accuracy_per_kind(
    predictor: inference.Predictor, images: np.ndarray, refused: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """(K, N, 28, 28) uint8 images, (K, N) refused -> (K, N) bool, read right."""
    kinds, count = refused.shape
    pixels = inference.to_pixels(images.reshape(kinds * count, 28, 28))
    predicted = inference.in_batches(predictor, pixels, BATCH).argmax(1).numpy()
    return (predicted.reshape(kinds, count) == labels[None, :]) & ~refused


def corruption_report(predictor: inference.Predictor, corrupted: dict) -> dict:
    """Error rates on corruption_set's digits: for each split and serving path, per
    corruption, per family (the mean of its corruptions) and ``mean_error`` (the mean of
    the families, so that a family of four counts as much as a family of one)."""
    names, families = [str(n) for n in corrupted["names"]], [str(f) for f in corrupted["families"]]
    report: dict = {}
    for split in ("val", "test"):
        labels = corrupted[f"{split}_labels"]
        sent = {
            "arrays": (
                corrupted[f"{split}_arrays"],
                np.zeros(corrupted[f"{split}_refused"].shape, bool),
            ),
            "images": (corrupted[f"{split}_images"], corrupted[f"{split}_refused"]),
        }
        report[split] = {}
        for path, (images, refused) in sent.items():
            errors = 1 - accuracy_per_kind(predictor, images, refused, labels).mean(axis=1)
            per_family = {
                family: float(
                    np.mean([e for e, f in zip(errors, families, strict=True) if f == family])
                )
                for family in dict.fromkeys(families)
            }
            report[split][path] = {
                "mean_error": float(np.mean(list(per_family.values()))),
                "families": per_family,
                "corruptions": dict(zip(names, map(float, errors), strict=True)),
            }
    return report


def save_plot(accuracy: dict[str, float], reference: float, path: Path, title: str) -> None:
    """Horizontal bars: accuracy per kind, the plain-array accuracy as a dashed line."""
    kinds = list(accuracy)[::-1]  # the first kind on top
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(kinds) + 1.2))
    bars = ax.barh(kinds, [accuracy[kind] for kind in kinds], color="#4878a8")
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.axvline(reference, color="#b04030", linestyle="--", label="the same digits as arrays")
    ax.set(xlim=(0, 1.08), xlabel="test accuracy", title=f"{title}: digits as people send them")
    ax.legend(loc="lower left", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def main(args) -> None:
    started = time.perf_counter()
    train_params = load_section(args.params, "train", TrainParams)
    candidate = train_params.candidate(args.candidate)
    runtime.set_threads(train_params.threads, candidate)
    run = atomic.read_json(args.model / "run.json")
    predictor = inference.load_predictor(
        candidate, args.model / "weights.safetensors", atomic.read_json(args.stats)
    )
    photo_set = atomic.read_npz(args.photos)
    kinds, labels = [str(kind) for kind in photo_set["kinds"]], photo_set["labels"]
    right = accuracy_per_kind(predictor, photo_set["images"], photo_set["refused"], labels)
    reference = accuracy_per_kind(
        predictor, photo_set["originals"][None], np.zeros((1, len(labels)), bool), labels
    )
    accuracy = {kind: float(row.mean()) for kind, row in zip(kinds, right, strict=True)}
    metrics = {
        "run_id": run["run_id"],
        "n_per_kind": len(labels),
        "reference_accuracy": float(reference.mean()),
        "mean_accuracy": float(right.mean()),
        "accuracy": accuracy,
    }
    out: Path = args.out
    atomic.write_json(out / "metrics.json", metrics)
    atomic.write_csv(
        out / "robustness.csv",
        ["kind", "accuracy", "correct", "refused", "n"],
        [
            [kind, f"{accuracy[kind]:.4f}", int(row.sum()), int(gave_up.sum()), len(labels)]
            for kind, row, gave_up in zip(kinds, right, photo_set["refused"], strict=True)
        ],
    )
    save_plot(accuracy, metrics["reference_accuracy"], out / "robustness.png", args.candidate)
    spoilt = atomic.read_npz(args.corruptions)
    corrupted = corruption_report(predictor, spoilt)
    atomic.write_json(out / "corruptions.json", corrupted)
    test = corrupted["test"]
    atomic.write_csv(
        out / "corruptions.csv",
        ["family", "corruption", "error_arrays", "error_images"],
        [
            [
                family,
                name,
                f"{test['arrays']['corruptions'][name]:.4f}",
                f"{test['images']['corruptions'][name]:.4f}",
            ]
            for family, name in zip(
                map(str, spoilt["families"]),
                test["arrays"]["corruptions"],
                strict=True,
            )
        ],
    )

    worst = min(accuracy, key=accuracy.__getitem__)
    print(
        f"robustness: {args.candidate}: mean accuracy {metrics['mean_accuracy']:.4f} over "
        f"{len(kinds)} kinds (worst {worst} {accuracy[worst]:.4f}; as arrays "
        f"{metrics['reference_accuracy']:.4f}) in {time.perf_counter() - started:.1f} s"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("robustness", __doc__)
    p.add_argument("--candidate", required=True, help="a key of train.candidates")
    p.add_argument("--model", required=True, type=Path, help="the candidate's train output folder")
    p.add_argument("--stats", required=True, type=Path, help="stats.json from normalise")
    p.add_argument("--photos", required=True, type=Path, help="digits.npz from photo_set")
    p.add_argument("--corruptions", required=True, type=Path, help="digits.npz from corruption_set")
    p.add_argument("--out", required=True, type=Path, help="folder for this candidate's report")
    cli.run("robustness", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
