"""Depth 3: a real `bentoml serve` process on 127.0.0.1 and real HTTP requests: correct
answers, concurrency (adaptive batching), metrics, and a corpus of malformed requests
that must each get a JSON 4xx, never a 5xx, while the server keeps working (raw bodies
and multipart/form-data uploads alike)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.malformed import JSON, MALFORMED, PNG, SKETCH_PNG, ZEROS
from tests.serving.fixtures import direct_onnx, without_answer_id
from tests.serving.images import image_variants

pytestmark = pytest.mark.slow


def test_served_predictions_equal_onnx_runtime_exactly(
    server: str, model_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digits, labels = test_digits
    response = httpx.post(f"{server}/predict", json={"images": digits.tolist()}, timeout=30)
    assert response.status_code == 200
    body = response.json()
    probabilities = np.array(
        body["probabilities"], dtype=np.float32
    )  # JSON floats round-trip float32
    np.testing.assert_array_equal(probabilities, direct_onnx(model_path, digits))
    assert np.mean(np.array(body["labels"]) == labels) > 0.85


def test_concurrent_single_digit_callers_are_batched_and_answered_correctly(
    server: str, model_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digits = test_digits[0][:96]

    async def one(client: httpx.AsyncClient, digit: np.ndarray) -> list[float]:
        payload = {"images_b64": base64.b64encode(digit.tobytes()).decode()}
        response = await client.post(f"{server}/predict", json=payload)
        assert response.status_code == 200, response.text
        return response.json()["probabilities"][0]

    async def everyone() -> list[list[float]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(*(one(client, d) for d in digits))

    before = batch_counts(server)
    probabilities = np.array(asyncio.run(everyone()), dtype=np.float32)
    expected = direct_onnx(model_path, digits)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected.argmax(axis=1))
    # Batch composition may change float summation order in other models; stay tight anyway.
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    runs, rows = (after - prior for after, prior in zip(batch_counts(server), before, strict=True))
    assert rows == 96 and 1 <= runs <= 96  # every digit went through the model exactly once


def batch_counts(server: str) -> tuple[float, float]:
    """(model runs, digits run) so far, from the service's own Prometheus histogram."""
    text = httpx.get(f"{server}/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("mnist_model_batch_rows_count", "mnist_model_batch_rows_sum"):
            if line.startswith(name):
                values[name] = float(line.split()[-1])
    return values.get("mnist_model_batch_rows_count", 0.0), values.get(
        "mnist_model_batch_rows_sum", 0.0
    )


def test_predict_image_over_http_reads_real_digits(
    server: str, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digits, labels = test_digits
    results = []
    with httpx.Client(base_url=server, timeout=30) as client:
        for digit, label in zip(digits[20:40], labels[20:40], strict=True):
            for name, data in image_variants(digit).items():
                content_type = "image/jpeg" if name.startswith("jpeg") else "image/png"
                response = client.post(
                    "/predict_image", content=data, headers={"Content-Type": content_type}
                )
                assert response.status_code == 200, response.text
                results.append(response.json()["label"] == label)
    assert np.mean(results) > 0.8


def test_health_model_info_and_metrics(server: str, model_tag: str) -> None:
    assert httpx.get(f"{server}/livez").status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 200
    info = httpx.post(f"{server}/model_info", json={}).json()
    assert info["bentoml_tag"] == model_tag and "git_commit" in info
    httpx.post(f"{server}/predict", json={"images": [ZEROS]})
    metrics = httpx.get(f"{server}/metrics").text
    assert 'bentoml_service_request_total{endpoint="/predict",http_response_code="200"' in metrics
    assert "mnist_model_batch_rows_bucket" in metrics


def test_malformed_requests_get_a_json_4xx_saying_what_is_wrong(server: str) -> None:
    assert len(MALFORMED) >= 50
    failures = []
    with httpx.Client(base_url=server, timeout=60) as client:
        for index, (path, body, content_type, mention) in enumerate(MALFORMED):
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            try:
                error = response.json()
            except ValueError:
                error = None
            if not (
                400 <= response.status_code < 500
                and isinstance(error, dict)
                and mention in response.text
            ):
                failures.append(
                    f"#{index} {path} {content_type}: {response.status_code} {response.text[:200]}"
                )
        assert not failures, "\n".join(failures)
        chunked = client.post(
            "/predict", content=(b" " * 2**20 for _ in range(40)), headers={"Content-Type": JSON}
        )
        assert chunked.status_code == 413 and "limit is 33554432" in chunked.json()["error"]
        # The server is still healthy and answers a valid request.
        valid = client.post("/predict", json={"images": [ZEROS]})
        assert valid.status_code == 200 and len(valid.json()["labels"]) == 1
        raw = client.post("/predict_image", content=SKETCH_PNG, headers={"Content-Type": PNG})
        assert raw.status_code == 200
        upload = client.post("/predict_image", files={"image": ("sketch.png", SKETCH_PNG, PNG)})
        assert upload.status_code == 200
        assert without_answer_id(upload) == without_answer_id(raw)
