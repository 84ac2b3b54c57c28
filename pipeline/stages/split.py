"""split: official train/test split plus a stratified, seeded validation set.

In: the four idx files from fetch; ``split`` params. Out: ``train.npz``, ``val.npz``,
``test.npz`` in ``--out``, each with ``images`` (N, 28, 28) uint8 and ``labels`` (N,)
uint8. The validation set is carved from the 60,000 official training images and never
overlaps the official 10,000 test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import atomic, cli
from pipeline.dataset import Split, stratified_take
from pipeline.errors import StageError
from pipeline.idx import read_images, read_labels
from pipeline.params import SplitParams, load_section


def load_raw(raw: Path, prefix: str) -> Split:
    images = read_images(raw / f"{prefix}-images-idx3-ubyte")
    labels = read_labels(raw / f"{prefix}-labels-idx1-ubyte")
    if len(images) != len(labels):
        raise StageError(f"{raw}/{prefix}: {len(images)} images but {len(labels)} labels")
    return images, labels


def split(train: Split, test: Split, params: SplitParams) -> dict[str, Split]:
    images, labels = train
    if params.val_size >= len(labels):
        raise StageError(
            f"split.val_size: {params.val_size} leaves no training images of {len(labels)}"
        )
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    fit_idx, val_idx = train_test_split(
        index, test_size=params.val_size, stratify=labels, random_state=params.seed
    )
    fit_idx.sort()
    val_idx.sort()
    fit = (images[fit_idx], labels[fit_idx])
    if params.train_limit is not None:
        fit = stratified_take(*fit, params.train_limit, params.seed)
    if params.test_limit is not None:
        test = stratified_take(*test, params.test_limit, params.seed)
    return {"train": fit, "val": (images[val_idx], labels[val_idx]), "test": test}


def main(args) -> None:
    params = load_section(args.params, "split", SplitParams)
    parts = split(load_raw(args.raw, "train"), load_raw(args.raw, "t10k"), params)
    for name, (images, labels) in parts.items():
        atomic.write_npz(args.out / f"{name}.npz", images=images, labels=labels)
        per_class = np.bincount(labels, minlength=10).tolist()
        print(f"split: {name}: {len(labels)} images, per class {per_class}")


def cli_main(argv=None) -> None:
    p = cli.parser("split", __doc__)
    p.add_argument("--raw", required=True, type=Path, help="folder of the fetched idx files")
    p.add_argument("--out", required=True, type=Path, help="folder for train/val/test .npz")
    cli.run("split", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
