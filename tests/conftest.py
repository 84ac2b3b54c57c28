"""Shared fixtures: the project root, the offline MNIST mirror, small real data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support import mnist as mnist_files

ROOT = Path(__file__).resolve().parent.parent

# The serving fixtures (stand-in model, `bentoml serve`), registered here once so that the
# serving and browser tests share one server instead of building two.
pytest_plugins = ["tests.serving.fixtures"]

# Tests reach nothing but loopback: no telemetry from the tools.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


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


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- a real copy of the project, for end-to-end and browser tests -------------------

PROJECT_FILES = [
    "pipeline",
    "serving",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]
ENABLED = ["mlp128", "cnn_fast"]


def small_profile(params: dict) -> dict:
    """2,000 training, 1,000 validation and 1,000 test images; two short candidates."""
    params["split"].update(val_size=1000, train_limit=2000, test_limit=1000)
    params["train"]["enabled"] = ENABLED
    for name in ENABLED:
        params["train"]["candidates"][name].update(epochs=2, train_size=None)
    return params


class Project:
    """A copy of the repository in its own git repo, with commands run inside it."""

    def __init__(self, path: Path, env: dict):
        self.path, self.env = path, env
        self.repro_result = None

    def run(self, *args: str, check: bool = True, env: dict | None = None):
        result = subprocess.run(
            args, cwd=self.path, env=env or self.env, capture_output=True, text=True, timeout=1200
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    @staticmethod
    def stages_run(result) -> list[str]:
        return [
            line.split("'")[1]
            for line in result.stdout.splitlines()
            if line.startswith("Running stage")
        ]

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def new_project(path: Path, mirror: Path) -> Project:
    for name in PROJECT_FILES:
        src, dst = ROOT / name, path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MNIST_MIRROR": str(mirror),
        "BENTOML_HOME": str(path / ".bentoml-home"),
    }
    # Set by other test modules' fixtures; a user's shell has neither.
    for name in ("MLFLOW_TRACKING_URI", "MNIST_MODEL_TAG", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    project = Project(path, env)
    project.write_params(small_profile(project.params()))
    project.run("git", "init", "-q")
    project.run("git", "add", "-A")
    project.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return project


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory, mirror) -> Project:
    return new_project(tmp_path_factory.mktemp("project"), mirror)


@pytest.fixture(scope="session")
def pipeline_store(pipeline_project) -> Path:
    """The project folder after a full `dvc repro`: mlflow.db, mlartifacts/, a Bento."""
    pipeline_project.repro_result = pipeline_project.run("dvc", "repro")
    return pipeline_project.path
