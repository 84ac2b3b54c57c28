"""Fixtures for the serving and browser tests (registered once, in tests/conftest.py, so
both folders share one instance of each): a stand-in model in a temporary BentoML store, the
service at three depths (the class itself, TestClient over its ASGI app, a real
`bentoml serve` process on 127.0.0.1), and real MNIST test digits.

The model is serving.fixture_model's tiny MLP (about 5 s to train on 2 cores), stored as
the pipeline's package stage would store the real one (see serving/contract.py).
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.launch import bentoml_serve

REPO = Path(__file__).resolve().parents[2]
MIRROR = Path(os.environ.get("MNIST_MIRROR") or REPO.parent / "shared" / "mnist")


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """BENTOML_HOME for the session: a fresh temporary folder, unless another test in this
    process already set up BentoML's store (it reads BENTOML_HOME once); then that one."""
    home = tmp_path_factory.mktemp("bentoml_home")
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENTOML_HOME", str(home))
        patch.setenv("BENTOML_DO_NOT_TRACK", "true")
        # /metrics outside `bentoml serve` (TestClient) needs the multiprocess folder too.
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        from bentoml._internal.configuration.containers import BentoMLContainer

        actual = Path(BentoMLContainer.bentoml_home.get())
        patch.setenv("BENTOML_HOME", str(actual))  # what subprocesses must use too
        yield actual


@pytest.fixture(scope="session")
def model_tag(bentoml_home: Path) -> Iterator[str]:
    """Build the stand-in model in the store; MNIST_MODEL_TAG names it for the service."""
    from serving.fixture_model import build

    model_ref = build(MIRROR, train_count=10_000)
    assert bentoml_home in Path(model_ref.path).parents
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_MODEL_TAG", str(model_ref.tag))
        yield str(model_ref.tag)


@pytest.fixture(scope="session")
def model_path(model_tag: str) -> Path:
    import bentoml

    return Path(bentoml.models.get(model_tag).path)


@pytest.fixture(scope="session")
def service_class(model_tag: str) -> Any:
    """The service class (a bentoml Service) serving `model_tag`. The module reads
    MNIST_MODEL_TAG when imported, so re-import it if something imported it earlier."""
    import serving.service

    if serving.service.MODEL_TAG != model_tag:
        importlib.reload(serving.service)
    assert [str(model) for model in serving.service.MNISTClassifier.models] == [model_tag]
    return serving.service.MNISTClassifier


@pytest.fixture(scope="session")
def service(service_class: Any) -> Any:
    """Depth 1: an instance of the service class, called as plain Python."""
    return service_class()


@pytest.fixture(scope="session")
def client(service_class: Any) -> Iterator[Any]:
    """Depth 2: HTTP through the service's ASGI app, lifespan (model loading) included."""
    from starlette.testclient import TestClient

    with TestClient(service_class.to_asgi()) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(
    model_tag: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Depth 3: `bentoml serve` in a subprocess on 127.0.0.1; yields its base URL."""
    env = {
        **os.environ,
        "MNIST_WORKERS": "1",
        "BENTOML_HOME": str(bentoml_home),
        "MNIST_MODEL_TAG": model_tag,
    }
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with bentoml_serve("serving.service:MNISTClassifier", env=env, cwd=REPO,
                       log_path=log_path, timeout=90) as served:
        yield served.url


@pytest.fixture(scope="session")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 300 MNIST test images (300, 28, 28) uint8 and labels (300,)."""
    from serving.fixture_model import load_mnist

    return load_mnist(MIRROR, "t10k", 300)
