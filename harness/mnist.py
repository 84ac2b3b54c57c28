"""The offline MNIST mirror, found in one place for the tests and the benchmarks.

In: the environment variable MNIST_MIRROR, else ../shared/mnist beside the repository.
Out: the folder of the four .gz files, and their arrays.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx

REPO = Path(__file__).resolve().parents[1]
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def mirror() -> Path:
    """The mirror folder; FileNotFoundError, saying what to set, if it has no MNIST."""
    folder = Path(os.environ.get("MNIST_MIRROR") or REPO.parent / "shared" / "mnist")
    if not (folder / f"{FILES[0]}.gz").is_file():
        raise FileNotFoundError(
            f"no offline MNIST mirror at {folder}: set MNIST_MIRROR to a folder with the "
            "four .gz files"
        )
    return folder


def raw_bytes(folder: Path) -> dict[str, bytes]:
    """The four decompressed idx files."""
    return {name: gzip.decompress((folder / f"{name}.gz").read_bytes()) for name in FILES}


def load_mnist(
    split: Literal["train", "t10k"], limit: int | None = None, folder: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) uint8 labels, the first ``limit`` of a split."""
    folder = folder or mirror()
    images_gz = folder / f"{split}-images-idx3-ubyte.gz"
    labels_gz = folder / f"{split}-labels-idx1-ubyte.gz"
    images = parse_idx(
        gzip.decompress(images_gz.read_bytes()), expected_magic=IMAGES_MAGIC, source=str(images_gz)
    )
    labels = parse_idx(
        gzip.decompress(labels_gz.read_bytes()), expected_magic=LABELS_MAGIC, source=str(labels_gz)
    )
    return images[:limit], labels[:limit]
