"""Shared fixtures: the project root, the offline MNIST mirror, small real data."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests reach nothing but loopback: no telemetry from the tools.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def mirror_folder() -> Path:
    folder = Path(os.environ.get("MNIST_MIRROR") or ROOT.parent / "shared" / "mnist")
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"the tests need the offline MNIST mirror; none at {folder} "
                    "(set MNIST_MIRROR to a folder with the four .gz files)")
    return folder


@pytest.fixture(scope="session")
def mirror() -> Path:
    return mirror_folder()


@pytest.fixture(scope="session")
def raw_bytes(mirror) -> dict[str, bytes]:
    """The four decompressed idx files, read once per session."""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    return {n: gzip.decompress((mirror / f"{n}.gz").read_bytes()) for n in names}


@pytest.fixture(scope="session")
def mnist(raw_bytes):
    """(train_images, train_labels, test_images, test_labels) as uint8 arrays."""
    from pipeline.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx

    def images(n):
        return parse_idx(raw_bytes[n], expected_magic=IMAGES_MAGIC)

    def labels(n):
        return parse_idx(raw_bytes[n], expected_magic=LABELS_MAGIC)

    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
