"""A real `bentoml serve` with small limits, read through its log: every answer carries
a request id, a 4xx is one log line with that id and no traceback, a kept-alive
connection is closed after MNIST_REQUESTS_PER_CONNECTION answers, and requests beyond
MNIST_MAX_CONCURRENCY are refused with a JSON 429 while the server goes on answering."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.mnist import REPO
from harness.serve import Server, bentoml_serve

pytestmark = pytest.mark.slow

PER_CONNECTION = 3


@pytest.fixture(scope="module")
def limited(
    model_tag: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    env = {
        **os.environ,
        "MNIST_WORKERS": "1",
        "BENTOML_HOME": str(bentoml_home),
        "MNIST_MODEL_TAG": model_tag,
        "MNIST_MAX_CONCURRENCY": "2",
        "MNIST_REQUESTS_PER_CONNECTION": str(PER_CONNECTION),
    }
    log_path = tmp_path_factory.mktemp("limited") / "serve.log"
    with bentoml_serve(
        "serving.service:MNISTClassifier", env=env, cwd=REPO, log_path=log_path, timeout=90
    ) as served:
        yield served, log_path


def log_lines_with(log_path: Path, text: str, timeout: float = 5) -> list[str]:
    """The log's lines containing `text`, once there is one (the log is written async)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in log_path.read_text().splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_every_answer_names_its_request_and_keeps_a_plain_client_id(
    limited: tuple[Server, Path],
) -> None:
    server, _ = limited
    new = httpx.get(f"{server.url}/readyz")
    assert len(new.headers["x-request-id"]) == 16
    kept = httpx.get(f"{server.url}/readyz", headers={"X-Request-ID": "client-7.a_b"})
    assert kept.headers["x-request-id"] == "client-7.a_b"
    hostile = httpx.get(f"{server.url}/readyz", headers={"X-Request-ID": "a b%0d%0aSet-Cookie"})
    assert hostile.headers["x-request-id"] != "a b%0d%0aSet-Cookie"  # replaced, not echoed


def test_a_rejected_request_is_one_log_line_with_its_id_and_no_traceback(
    limited: tuple[Server, Path],
) -> None:
    server, log_path = limited
    response = httpx.post(
        f"{server.url}/predict",
        json={"images": [[1, 2, 3]]},
        headers={"X-Request-ID": "bad-shape-1"},
    )
    assert response.status_code == 400
    lines = log_lines_with(log_path, "bad-shape-1")
    assert len(lines) == 1, lines
    assert "/predict -> 400" in lines[0]
    assert "Traceback" not in log_path.read_text()


def test_a_kept_alive_connection_is_closed_after_its_share_of_answers(
    limited: tuple[Server, Path],
) -> None:
    server, _ = limited
    with httpx.Client() as client:
        answers = [client.get(f"{server.url}/readyz") for _ in range(PER_CONNECTION * 2)]
    closing = [r.headers.get("connection") == "close" for r in answers]
    assert closing == [False, False, True] * 2  # the client reconnects after each close
    assert all(r.status_code == 200 for r in answers)


def test_requests_beyond_max_concurrency_get_429_and_the_server_keeps_answering(
    limited: tuple[Server, Path],
) -> None:
    server, _ = limited
    digits = np.random.default_rng(0).integers(0, 256, (4000, 784)).tolist()

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=24)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post(f"{server.url}/predict", json={"images": digits}) for _ in range(24))
            )

    statuses = [r.status_code for r in asyncio.run(flood())]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
    after = httpx.post(f"{server.url}/predict", json={"images": digits[:1]}, timeout=30)
    assert after.status_code == 200
