"""Depth 3: a real `bentoml serve` process on 127.0.0.1 and real HTTP requests: correct
answers, concurrency (adaptive batching), metrics, and a corpus of malformed requests
that must each get a JSON 4xx, never a 5xx, while the server keeps working (raw bodies
and multipart/form-data uploads alike)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.serving.fixtures import direct_onnx
from tests.serving.images import image_variants

pytestmark = pytest.mark.slow

ZEROS = [0] * 784


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


# --- malformed requests ---------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def sketch() -> Image.Image:
    """A hand-drawn-looking '1' on white paper."""
    image = Image.new("RGB", (120, 120), "white")
    ImageDraw.Draw(image).line([(60, 15), (55, 105)], fill="black", width=9)
    return image


def zero_png(width: int, height: int, rows: int) -> bytes:
    """A grey PNG claiming width x height with `rows` rows of zeros: kilobytes, a bomb."""
    compressor = zlib.compressobj(9)
    data = (
        b"".join(compressor.compress(b"\x00" * (width + 1)) for _ in range(rows))
        + compressor.flush()
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def form_of(*parts: tuple[str, bytes, str | None, str]) -> bytes:
    """A multipart/form-data body (boundary ``b``) of (name, data, filename, Content-Type)
    parts: a file when it has a filename, else a text field."""
    body = b""
    for name, data, filename, media_type in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b\r\nContent-Disposition: {disposition}\r\n".encode()
        body += f"Content-Type: {media_type}\r\n".encode() if media_type else b""
        body += b"\r\n" + data + b"\r\n"
    return body + b"--b--\r\n"


def json_body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


JSON = "application/json"
PNG = "image/png"
FORM = "multipart/form-data; boundary=b"
SKETCH_PNG = png(sketch())
SKETCH_JPEG = jpeg(sketch())
CORRUPT_PNG = SKETCH_PNG[:60] + bytes(b ^ 0x5A for b in SKETCH_PNG[60:120]) + SKETCH_PNG[120:]
ROW_783 = "[" + ",".join(["0"] * 783)

# (path, body, content type, what the error must mention); each must be a 4xx with JSON.
MALFORMED: list[tuple[str, bytes, str, str]] = [
    # predict: bodies that are not the expected JSON object
    ("/predict", b"", JSON, "exactly one of"),
    ("/predict", b"{}", JSON, "exactly one of"),
    ("/predict", b'{"dtype": "uint8"}', JSON, "exactly one of"),
    ("/predict", b"{bad", JSON, "Invalid JSON"),
    ("/predict", b"\xff\xfe\x00", JSON, "Invalid JSON"),
    ("/predict", b"null", JSON, "should be an object"),
    ("/predict", b"[]", JSON, "should be an object"),
    ("/predict", b'"digits"', JSON, "should be an object"),
    ("/predict", b"[" * 100_000, JSON, "recursion limit"),
    ("/predict", json_body({"images": [ZEROS], "images_b64": "AAAA"}), JSON, "exactly one of"),
    # predict: wrong types and shapes
    ("/predict", json_body({"images": "abc"}), JSON, "valid array"),
    ("/predict", json_body({"images": 5}), JSON, "valid array"),
    ("/predict", json_body({"images": {"a": 1}}), JSON, "valid array"),
    ("/predict", json_body({"images": []}), JSON, "empty"),
    ("/predict", json_body({"images": [[]]}), JSON, "empty"),
    ("/predict", json_body({"images": [[1, 2, 3]]}), JSON, "shape [1, 3]"),
    ("/predict", json_body({"images": [[0] * 783]}), JSON, "shape [1, 783]"),
    ("/predict", json_body({"images": [[0] * 785]}), JSON, "shape [1, 785]"),
    ("/predict", json_body({"images": ZEROS}), JSON, "wrap a single digit"),
    ("/predict", json_body({"images": [[0] * 28] * 28}), JSON, "wrap a single digit"),
    ("/predict", json_body({"images": [[[0] * 28] * 27]}), JSON, "shape [1, 27, 28]"),
    ("/predict", json_body({"images": [[[[0] * 28] * 28]]}), JSON, "shape [1, 1, 28, 28]"),
    ("/predict", json_body({"images": [ZEROS, [0] * 700]}), JSON, "rectangular"),
    ("/predict", json_body({"images": [["a"] * 784]}), JSON, "text"),
    ("/predict", json_body({"images": [[1, "a"] * 392]}), JSON, "text"),
    ("/predict", json_body({"images": [[True] * 784]}), JSON, "true/false"),
    ("/predict", json_body({"images": [[None] * 784]}), JSON, "null"),
    ("/predict", json_body({"images": [[{}] * 784]}), JSON, "only numbers"),
    ("/predict", f'{{"images": [{ROW_783},{10**30}]]}}'.encode(), JSON, "too large"),
    # predict: values out of range for the stated dtype
    ("/predict", json_body({"images": [[256] * 784]}), JSON, "0..255"),
    ("/predict", json_body({"images": [[-1] * 784]}), JSON, "0..255"),
    ("/predict", json_body({"images": [[0.5] * 784]}), JSON, "fractional"),
    ("/predict", json_body({"images": [[2.0] * 784], "dtype": "float32"}), JSON, "0..1"),
    ("/predict", json_body({"images": [[-0.1] * 784], "dtype": "float32"}), JSON, "0..1"),
    ("/predict", f'{{"images": [{ROW_783},NaN]], "dtype": "float32"}}'.encode(), JSON, "NaN"),
    ("/predict", f'{{"images": [{ROW_783},Infinity]]}}'.encode(), JSON, "infinity"),
    (
        "/predict",
        f'{{"images": [{ROW_783},1e999]], "dtype": "float32"}}'.encode(),
        JSON,
        "infinity",
    ),
    ("/predict", json_body({"images": [ZEROS], "dtype": "float64"}), JSON, "'uint8' or 'float32'"),
    # predict: base64
    ("/predict", json_body({"images_b64": "!!!not base64"}), JSON, "not valid base64"),
    ("/predict", json_body({"images_b64": ""}), JSON, "0 bytes"),
    ("/predict", json_body({"images_b64": b64(bytes(100))}), JSON, "100 bytes"),
    ("/predict", json_body({"images_b64": b64(bytes(784)), "dtype": "float32"}), JSON, "float32"),
    ("/predict", json_body({"images_b64": 123}), JSON, "valid string"),
    (
        "/predict",
        json_body({"images_b64": b64(np.full(784, np.nan, "<f4").tobytes()), "dtype": "float32"}),
        JSON,
        "NaN",
    ),
    ("/predict", json_body({"images_b64": b64(bytes(784 * 10_001))}), JSON, "limit is 10000"),
    # predict: size and content type
    ("/predict", b"[" + b"0," * (17 * 2**20) + b"0]", JSON, "limit is 33554432"),
    ("/predict", b"images=1", "application/x-www-form-urlencoded", "send application/json"),
    ("/predict", b"x", "application/vnd.bentoml+pickle", "send application/json"),
    ("/predict", b"--b\r\n\r\n--b--", "multipart/form-data; boundary=b", "send application/json"),
    ("/predict", json_body({"images": [ZEROS]}), "text/plain", "send application/json"),
    # predict_image: not images, broken images, bombs, blanks
    ("/predict_image", b"", PNG, "not a PNG or JPEG"),
    ("/predict_image", b"hello", PNG, "not a PNG or JPEG"),
    ("/predict_image", json_body({"image": b64(SKETCH_PNG)}), JSON, "send image/*"),
    ("/predict_image", b"GIF89a" + bytes(64), "image/gif", "not a PNG or JPEG"),
    ("/predict_image", b"BM" + bytes(64), "image/bmp", "not a PNG or JPEG"),
    ("/predict_image", SKETCH_PNG[: len(SKETCH_PNG) // 2], PNG, "truncated or corrupt PNG"),
    ("/predict_image", CORRUPT_PNG, PNG, "truncated or corrupt PNG"),
    (
        "/predict_image",
        SKETCH_JPEG[: len(SKETCH_JPEG) // 2],
        "image/jpeg",
        "truncated or corrupt JPEG",
    ),
    ("/predict_image", zero_png(6000, 6000, rows=6000), PNG, "6000x6000 too large"),
    ("/predict_image", zero_png(100_000, 100_000, rows=1), PNG, "too large"),
    ("/predict_image", b"\x89PNG\r\n\x1a\n" + bytes(6 * 2**20), PNG, "limit is 5242880"),
    ("/predict_image", bytes(40 * 2**20), PNG, "limit is 33554432"),
    ("/predict_image", png(Image.new("RGB", (200, 200), "white")), PNG, "blank"),
    ("/predict_image", png(Image.new("L", (1, 1), 0)), PNG, "blank"),
    # predict_image: forms that are not one image file
    ("/predict_image", SKETCH_PNG, "multipart/form-data; boundary=x", "cannot be read"),
    ("/predict_image", SKETCH_PNG, "multipart/form-data", "needs a boundary"),
    ("/predict_image", b"--b\r\n", FORM, "ends before its closing boundary"),
    ("/predict_image", form_of(), FORM, "no file part"),
    ("/predict_image", form_of(("image", SKETCH_PNG, None, "")), FORM, "text field ('image')"),
    (
        "/predict_image",
        form_of(("a", SKETCH_PNG, "a.png", PNG), ("b", SKETCH_PNG, "b.png", PNG)),
        FORM,
        "2 file parts",
    ),
    ("/predict_image", form_of(("f", b"hi", "notes.txt", "text/plain")), FORM, "not accepted"),
    ("/predict_image", form_of(("f", b"hi", "notes.txt", "")), FORM, "not a PNG or JPEG"),
    (
        "/predict_image",
        form_of(("image", SKETCH_PNG[: len(SKETCH_PNG) // 2], "d.png", PNG)),
        FORM,
        "truncated or corrupt PNG",
    ),
    (
        "/predict_image",
        form_of(("image", b"\x89PNG\r\n\x1a\n" + bytes(6 * 2**20), "d.png", PNG)),
        FORM,
        "limit is 5242880",
    ),
    ("/predict_image", form_of(("image", bytes(40 * 2**20), "d.png", PNG)), FORM, "33554432"),
    ("/predict_image", SKETCH_PNG, "application/vnd.bentoml+pickle", "send image/*"),
    # model_info
    ("/model_info", b"{bad", JSON, "Invalid JSON"),
    ("/model_info", b"x", "application/vnd.bentoml+pickle", "send application/json"),
]


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
        assert upload.status_code == 200 and upload.json() == raw.json()
