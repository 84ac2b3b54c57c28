"""Fixtures for the serving and browser tests (registered once, in tests/conftest.py, so
both folders share one instance of each): a stand-in model in a temporary BentoML store, the
service at three depths (the class itself, TestClient over its ASGI app, a real
`bentoml serve` process on 127.0.0.1), and real MNIST test digits.

The model is harness/fixture_model.py's tiny MLP (seconds to train), stored as the
pipeline's package stage would store the real one (see serving/contract.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.mnist import REPO, load_mnist
from harness.serve import bentoml_serve


def direct_onnx(model_path: Path, digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 10) probabilities straight from ONNX Runtime, as the
    reference the service's answers must equal."""
    from serving.contract import INPUT_NAME, MODEL_FILE, OUTPUT_NAME
    from serving.runner import make_session

    session = make_session(model_path / MODEL_FILE)
    pixels = (digits.astype(np.float32) / np.float32(255))[:, None]  # (N, 1, 28, 28)
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


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
    from harness.fixture_model import build

    model_ref = build(train_count=10_000)
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

    if model_tag != serving.service.MODEL_TAG:
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


@pytest.fixture(scope="session")
def server(
    model_tag: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Depth 3: `bentoml serve` in a subprocess on 127.0.0.1; yields its base URL.

    It has a BentoML home of its own that shares the session's model store: every
    `bentoml serve` empties its home's Prometheus folder as it starts, so a second server
    on the session's home would wipe this one's /metrics, which tests read."""
    home = tmp_path_factory.mktemp("server-home")
    (home / "models").symlink_to(bentoml_home / "models", target_is_directory=True)
    env = {
        **os.environ,
        "MNIST_WORKERS": "1",
        "BENTOML_HOME": str(home),
        "MNIST_MODEL_TAG": model_tag,
    }
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with bentoml_serve(
        "serving.service:MNISTClassifier", env=env, cwd=REPO, log_path=log_path, timeout=90
    ) as served:
        yield served.url


@pytest.fixture(scope="session")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 300 MNIST test images (300, 28, 28) uint8 and labels (300,)."""
    return load_mnist("t10k", 300)


def without_answer_id(response) -> dict:
    """An answer's JSON without its ``answer_id``, which tells each answer apart."""
    return {key: value for key, value in response.json().items() if key != "answer_id"}
