"""Shared fixtures: the project root, the offline MNIST mirror, small real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness import mnist as mnist_files
from harness.project import ENABLED, Project, new_project  # noqa: F401  (shared)

ROOT = Path(__file__).resolve().parent.parent

# The serving fixtures (stand-in model, `bentoml serve`), registered here once so that the
# serving and browser tests share one server instead of building two.
pytest_plugins = ["tests.serving.fixtures"]

# Tests reach nothing but loopback: no telemetry from the tools.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def mirror() -> Path:
    try:
        return mnist_files.mirror()
    except FileNotFoundError as error:
        pytest.fail(f"the tests need the offline MNIST mirror: {error}")


@pytest.fixture(scope="session")
def raw_bytes(mirror) -> dict[str, bytes]:
    """The four decompressed idx files, read once per session."""
    return mnist_files.raw_bytes(mirror)


@pytest.fixture(scope="session")
def mnist(raw_bytes):
    """(train_images, train_labels, test_images, test_labels) as uint8 arrays."""
    from pipeline.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx

    def images(n):
        return parse_idx(raw_bytes[n], expected_magic=IMAGES_MAGIC)

    def labels(n):
        return parse_idx(raw_bytes[n], expected_magic=LABELS_MAGIC)

    return (
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


@pytest.fixture(scope="session", autouse=True)
def served_log_dir(tmp_path_factory) -> Iterator[Path]:
    """Where every service the tests start records what it served, never in the repository."""
    folder = tmp_path_factory.mktemp("served_log")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_SERVED_LOG_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def feedback_dir(tmp_path_factory) -> Iterator[Path]:
    """Where every service the tests start stores corrections, never in the repository."""
    folder = tmp_path_factory.mktemp("feedback")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_FEEDBACK_DIR", str(folder))
        yield folder


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory, mirror) -> Project:
    return new_project(tmp_path_factory.mktemp("project"), mirror)


@pytest.fixture(scope="session")
def pipeline_store(pipeline_project) -> Path:
    """The project folder after a full `dvc repro`: mlflow.db, mlartifacts/, a Bento."""
    pipeline_project.repro_result = pipeline_project.run("dvc", "repro")
    return pipeline_project.path
