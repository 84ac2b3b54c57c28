"""evaluate: the one and only reading of the test split, for one candidate.

In: ``--candidate NAME``; its ``weights.safetensors`` and ``calibration.json`` (the
temperature fitted on validation) from train; ``test.npz`` from split (raw uint8 pixels,
fed through the same calibrated ``Predictor`` the service uses); ``stats.json``; the
feedback hold-out (``holdout.npz``, digits people corrected and the feedback stage kept to
test on). Out, in ``--out``: ``metrics.json`` (accuracy, loss, per-class
precision/recall/F1, the expected calibration error with and without the temperature,
and the accuracy on the feedback hold-out, null while it is empty), ``confusion.csv``
(one row per test digit, for ``dvc plots``' confusion template), ``classes.csv``,
``predictions.npz`` (labels and probabilities, the reference for serving) and PNGs of the
test digits. The record stage adds them to the candidate's MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import atomic, calibration, cli, distributed, inference, models, plots, runtime
from pipeline.params import EvaluateParams, TrainParams, load_section


def confusion(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row the true digit, column the predicted one."""
    return np.bincount(labels.astype(np.int64) * 10 + pred, minlength=100).reshape(10, 10)


def score(probs: np.ndarray, labels: np.ndarray) -> dict:
    pred = probs.argmax(1)
    counts = confusion(labels, pred)
    hits, support, predicted = np.diag(counts), counts.sum(1), counts.sum(0)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:  # 0 where den is 0
        return np.divide(num, den, out=np.zeros(10), where=den > 0)

    precision, recall = ratio(hits, predicted), ratio(hits, support)
    f1 = ratio(2 * hits, support + predicted)  # 2 tp / (2 tp + fp + fn)
    loss = F.nll_loss(
        torch.log(torch.from_numpy(probs).clamp_min(1e-12)),
        torch.from_numpy(labels.astype(np.int64)),
    ).item()
    return {
        "test_accuracy": float((pred == labels).mean()),
        "test_loss": loss,
        "test_errors": int((pred != labels).sum()),
        "n_test": len(labels),
        "per_class": {
            str(d): {
                "precision": float(precision[d]),
                "recall": float(recall[d]),
                "f1": float(f1[d]),
                "support": int(support[d]),
            }
            for d in range(10)
        },
    }


def principal_components(features: np.ndarray, k: int = 2) -> np.ndarray:
    """(N, F) -> (N, k): the features projected on their first k principal axes, each
    axis's sign fixed (its largest loading positive) so the same features give the same
    picture."""
    centred = features - features.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)  # (F', F), rows by variance
    top = axes[:k]
    signs = np.sign(top[np.arange(k), np.abs(top).argmax(1)])  # (k,)
    return centred @ (top * signs[:, None]).T


def penultimate(predictor: inference.Predictor, pixels: torch.Tensor) -> np.ndarray:
    """Features before the last layer (of an ensemble's first member), (N, F), for the
    2-D embedding."""
    body = models.members(predictor.net)[0][:-1]
    with torch.inference_mode():
        return body((pixels - predictor.mean) / predictor.std).flatten(1).numpy()


def write_pictures(
    name: str, out: Path, predictor, pixels, images, labels, pred, grid_size: int, seed: int
) -> None:
    mistakes = np.flatnonzero(pred != labels)[:grid_size]
    plots.save_digit_grid(
        images[mistakes],
        labels[mistakes],
        pred[mistakes],
        out / "mistakes.png",
        f"{name}: misclassified test digits, pred (true)",
    )
    sample = np.random.default_rng(seed).choice(
        len(labels), min(grid_size, len(labels)), replace=False
    )
    plots.save_digit_grid(
        images[sample],
        labels[sample],
        pred[sample],
        out / "samples.png",
        f"{name}: random test digits, predicted (true if wrong)",
    )
    plots.save_confusion(confusion(labels, pred), out / "confusion.png", name)
    subset = sample if len(sample) >= 500 else np.arange(min(2000, len(labels)))
    points = principal_components(penultimate(predictor, pixels[subset]))
    plots.save_embedding(points, labels[subset], out / "embedding.png", name)
    layers = [
        m.weight.detach().numpy()
        for m in models.members(predictor.net)[0]
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    plots.save_weight_tiles(layers, out / "weights.png", name)


def holdout_metrics(predictor, holdout: dict, batch_size: int) -> dict:
    """Accuracy on the feedback hold-out (digits people corrected, kept to test on; the
    feedback stage), beside the test set's; None while it is empty."""
    labels = holdout["labels"]
    if not len(labels):
        return {"feedback_holdout_digits": 0, "feedback_holdout_accuracy": None}
    accuracy = inference.accuracy(predictor, holdout["images"], labels, batch_size)
    return {"feedback_holdout_digits": len(labels), "feedback_holdout_accuracy": accuracy}


def main(args) -> None:
    train_params = load_section(args.params, "train", TrainParams)
    params = load_section(args.params, "evaluate", EvaluateParams)
    candidate = train_params.candidate(args.candidate)
    runtime.set_threads(train_params.threads, candidate)
    device = distributed.resolve_device(train_params.device)  # the train stage's rule
    distributed.exact_float32(device)
    stats = atomic.read_json(args.stats)
    temperature = atomic.read_json(args.model / "calibration.json")["temperature"]
    predictor = inference.load_predictor(
        candidate, args.model / "weights.safetensors", stats, True, temperature
    )
    test = atomic.read_npz(args.test)
    images, labels = test["images"], test["labels"]

    pixels = inference.to_pixels(images)  # (N, 1, 28, 28)
    started = time.perf_counter()
    probs = inference.in_batches(predictor.to(device), pixels, params.batch_size, device).numpy()
    seconds = time.perf_counter() - started
    # The same network at temperature 1: how far off its probabilities were uncalibrated.
    plain = inference.Predictor(predictor.net, stats["mean"], stats["std"], len(predictor.shifts))
    plain_probs = inference.in_batches(plain, pixels, params.batch_size, device).numpy()
    predictor = predictor.cpu()  # the pictures' features on the CPU
    pred = probs.argmax(1)
    metrics = (
        score(probs, labels)
        | {
            "temperature": temperature,
            "ece": calibration.expected_calibration_error(probs, labels),
            "ece_uncalibrated": calibration.expected_calibration_error(plain_probs, labels),
        }
        | holdout_metrics(predictor, atomic.read_npz(args.holdout), params.batch_size)
    )
    out: Path = args.out

    atomic.write_json(out / "metrics.json", metrics)
    atomic.write_csv(out / "confusion.csv", ["actual", "predicted"], zip(labels, pred, strict=True))
    atomic.write_csv(
        out / "classes.csv",
        ["digit", "precision", "recall", "f1", "support"],
        [
            [d, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
            for d, m in metrics["per_class"].items()
        ],
    )
    atomic.write_npz(
        out / "predictions.npz",
        labels=pred.astype(np.uint8),
        probabilities=probs.astype(np.float32),
    )
    write_pictures(
        args.candidate,
        out,
        predictor,
        pixels,
        images,
        labels,
        pred,
        params.grid_size,
        train_params.seed,
    )

    print(
        f"evaluate: {args.candidate}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"loss {metrics['test_loss']:.4f} ({len(labels)} images in {seconds:.2f} s)"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("evaluate", __doc__)
    p.add_argument("--candidate", required=True, help="a key of train.candidates")
    p.add_argument("--model", required=True, type=Path, help="the candidate's train output folder")
    p.add_argument("--test", required=True, type=Path, help="test.npz from split")
    p.add_argument("--stats", required=True, type=Path, help="stats.json from normalise")
    p.add_argument(
        "--holdout", required=True, type=Path, help="holdout.npz from feedback (may be empty)"
    )
    p.add_argument("--out", required=True, type=Path, help="folder for this candidate's reports")
    cli.run("evaluate", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
