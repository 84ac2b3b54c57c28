"""Depth 2: HTTP through the service's ASGI app (`MNISTClassifier.to_asgi()` in
Starlette's TestClient, which runs the lifespan that loads the model)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from serving.contract import MODEL_NAME
from tests.serving.fixtures import without_answer_id
from tests.serving.images import render


def test_health_endpoints_answer(client: Any) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_predict_json_and_base64(client: Any, test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    digits, labels = test_digits[0][:100], test_digits[1][:100]
    as_list = client.post("/predict", json={"images": digits.tolist()})
    as_b64 = client.post(
        "/predict", json={"images_b64": base64.b64encode(digits.tobytes()).decode()}
    )
    assert as_list.status_code == as_b64.status_code == 200
    assert without_answer_id(as_list) == without_answer_id(as_b64)
    assert np.mean(np.array(as_list.json()["labels"]) == labels) > 0.85


def test_predict_image_returns_the_image_the_model_saw(
    client: Any, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digit, label = test_digits[0][0], int(test_digits[1][0])
    response = client.post(
        "/predict_image", content=render(digit), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["label"] == label
    assert np.array(body["preprocessed"]).shape == (28, 28)


def test_model_info(client: Any, model_tag: str) -> None:
    response = client.post("/model_info", json={})
    assert response.status_code == 200
    info = response.json()
    assert info["bentoml_tag"] == model_tag and info["registry_model"] == MODEL_NAME
    assert set(info) >= {"registry_version", "alias", "metrics", "git_commit"}


def test_bad_requests_get_a_json_4xx(client: Any) -> None:
    cases = [
        ("/predict", b'{"images": [[1, 2]]}', "application/json", 400, "expected [N, 28, 28]"),
        ("/predict", b"{bad", "application/json", 400, "Invalid JSON"),
        (
            "/predict",
            b"images=1",
            "application/x-www-form-urlencoded",
            415,
            "send application/json",
        ),
        ("/predict_image", b"GIF89a", "image/gif", 400, "not a PNG or JPEG"),
        ("/predict_image", b"\x00" * (33 * 2**20), "image/png", 413, "limit is 33554432"),
    ]
    for path, body, content_type, status, message in cases:
        response = client.post(path, content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, (path, content_type, response.text)
        assert message in response.text and isinstance(response.json(), dict)


def test_chunked_uploads_are_counted_against_the_limit(client: Any) -> None:
    def chunks(total: int) -> Any:  # a body without Content-Length, sent in 1 MiB pieces
        for _ in range(total // 2**20):
            yield b"\x00" * 2**20

    too_big = client.post(
        "/predict_image", content=chunks(40 * 2**20), headers={"Content-Type": "image/png"}
    )
    assert too_big.status_code == 413 and "limit is 33554432" in too_big.json()["error"]
    small = client.post(
        "/predict_image", content=chunks(2**20), headers={"Content-Type": "image/png"}
    )
    assert small.status_code == 400 and "not a PNG or JPEG" in small.text


def test_openapi_schema_states_the_input_encodings(client: Any) -> None:
    spec = client.get("/docs.json").json()
    schema = str(spec["components"])
    for stated in ("images_b64", "uint8", "float32", "N digits"):
        assert stated in schema
    assert "image/*" in str(spec["paths"]["/predict_image"])
