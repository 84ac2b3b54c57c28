"""A corpus of malformed requests to the service: each must get a JSON 4xx that mentions
what is wrong, never a 5xx. Shared by the server tests and the reliability suite.

``MALFORMED``: (path, body, content type, what the error must mention).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

ZEROS = [0] * 784


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
