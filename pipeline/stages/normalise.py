"""normalise: uint8 pixels to float32, optionally standardised with train statistics.

In: ``train.npz`` and ``val.npz`` from split; ``--feedback``, the feedback stage's
``train.npz`` (digits people corrected, by hash kept apart from its hold-out; often
empty), added to the training split; ``normalise`` params. Out: the same two files
in ``--out`` with ``images`` (N, 1, 28, 28) float32 and ``labels`` (N,) int64, plus
``stats.json`` ({"mean", "std", "standardise"}), computed on the training split only
and reused by evaluate, package and serving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import atomic, cli, dataset
from pipeline.params import NormaliseParams, load_section

PARTS = ("train", "val")  # evaluate reads raw test pixels, as the service does


def statistics(train_images: np.ndarray, standardise: bool) -> dict:
    """Mean and std of the training pixels after /255 (identity stats when off)."""
    if not standardise:
        return {"mean": 0.0, "std": 1.0, "standardise": False}
    scaled = dataset.unit_pixels(train_images, np.float64)
    return {"mean": float(scaled.mean()), "std": float(scaled.std()), "standardise": True}


def apply(images: np.ndarray, stats: dict) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in the model's input space."""
    x = dataset.unit_pixels(images)[:, None]
    if stats["standardise"]:
        x = (x - np.float32(stats["mean"])) / np.float32(stats["std"])
    return x


def main(args) -> None:
    params = load_section(args.params, "normalise", NormaliseParams)
    parts = {name: atomic.read_npz(args.split / f"{name}.npz") for name in PARTS}
    corrected = atomic.read_npz(args.feedback)
    if len(corrected["labels"]):
        parts["train"] = {
            key: np.concatenate([parts["train"][key], corrected[key]])
            for key in ("images", "labels")
        }
        print(f"normalise: {len(corrected['labels'])} corrected digits join the training split")
    stats = statistics(parts["train"]["images"], params.standardise)
    for name, part in parts.items():
        atomic.write_npz(
            args.out / f"{name}.npz",
            images=apply(part["images"], stats),
            labels=part["labels"].astype(np.int64),
        )
    atomic.write_json(args.out / "stats.json", stats)
    if stats["standardise"]:
        print(
            f"normalise: pixels / 255, standardised with the training split's mean "
            f"{stats['mean']:.4f} and std {stats['std']:.4f}"
        )
    else:
        print("normalise: pixels / 255 (normalise.standardise is off)")


def cli_main(argv=None) -> None:
    p = cli.parser("normalise", __doc__)
    p.add_argument("--split", required=True, type=Path, help="folder of train/val/test .npz")
    p.add_argument("--feedback", required=True, type=Path, help="train.npz from feedback")
    p.add_argument("--out", required=True, type=Path, help="folder for normalised arrays")
    cli.run("normalise", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
