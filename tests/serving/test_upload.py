"""Depth 2: /predict_image as clients send files, through the service's ASGI app (the guard
included): the raw body and a multipart/form-data form (curl -F, an HTML form, requests'
files=), the same answer either way, a JSON 4xx for every bad form, EXIF orientation,
and an OpenAPI schema that lists exactly what the service accepts."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline import photos
from serving import guard, preprocess
from tests.serving.fixtures import without_answer_id
from tests.serving.images import render

BOUNDARY = "digit-boundary"


def part(
    name: str, data: bytes, *, filename: str | None = "digit.png", media_type: str = ""
) -> bytes:
    """One part of a multipart/form-data body: a file if it has a filename, else a field."""
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    headers = f"Content-Disposition: {disposition}\r\n"
    if media_type:
        headers += f"Content-Type: {media_type}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"


def form(*parts: bytes, close: bool = True) -> tuple[bytes, dict[str, str]]:
    """A form of ``parts`` (and its closing boundary) with its Content-Type header."""
    body = b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def post_form(client: Any, *parts: bytes, close: bool = True) -> Any:
    body, headers = form(*parts, close=close)
    return client.post("/predict_image", content=body, headers=headers)


@pytest.fixture(scope="module")
def digit_png(test_digits: tuple[np.ndarray, np.ndarray]) -> bytes:
    return render(test_digits[0][0])


@pytest.fixture(scope="module")
def photo_jpeg(test_digits: tuple[np.ndarray, np.ndarray]) -> bytes:
    """A 640x480 phone photo of a digit on lined paper (pipeline/photos.py)."""
    return photos.photo(test_digits[0][1], np.random.default_rng(0))


def test_a_form_upload_gets_the_same_answer_as_the_raw_body(
    client: Any, digit_png: bytes, photo_jpeg: bytes
) -> None:
    for data, media_type in ((digit_png, "image/png"), (photo_jpeg, "image/jpeg")):
        raw = client.post("/predict_image", content=data, headers={"Content-Type": media_type})
        assert raw.status_code == 200, raw.text
        for field in ("image", "file", "photo", "upload[]"):  # documented names, and others
            by_client = client.post("/predict_image", files={field: ("x", data, media_type)})
            assert by_client.status_code == 200, (field, by_client.text)
            assert without_answer_id(by_client) == without_answer_id(raw)
        for part_type in ("", "application/octet-stream"):  # no type, or a generic one
            by_hand = post_form(client, part("image", data, media_type=part_type))
            assert without_answer_id(by_hand) == without_answer_id(raw)


def test_a_form_upload_is_read_whole_when_sent_in_chunks(client: Any, photo_jpeg: bytes) -> None:
    body, headers = form(part("image", photo_jpeg, media_type="image/jpeg"))
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))  # no Content-Length
    chunked = client.post("/predict_image", content=chunks, headers=headers)
    raw = client.post("/predict_image", content=photo_jpeg, headers={"Content-Type": "image/jpeg"})
    assert chunked.status_code == 200
    assert without_answer_id(chunked) == without_answer_id(raw)


def oversized_png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(preprocess.MAX_IMAGE_BYTES)


@pytest.mark.parametrize(
    ("parts", "close", "status", "mention"),
    [
        ((), True, 400, "no file part"),
        ((part("image", b"hello", filename=None),), True, 400, "text field ('image')"),
        ((part("note", b"hi", filename=None), part("image", b"x")), True, 400, "text field"),
        ((part("a", b"x"), part("b", b"y")), True, 400, "2 file parts ('a', 'b')"),
        ((part("image", b"not an image", media_type="text/plain"),), True, 415, "text/plain"),
        ((part("image", b"not an image"),), True, 400, "not a PNG or JPEG"),
        ((part("image", b"GIF89a" + bytes(64), media_type="image/gif"),), True, 400, "not a PNG"),
        ((part("image", b"", filename=""),), True, 400, "file part ('image') is empty"),
        ((part("image", oversized_png(), media_type="image/png"),), True, 400, "limit is 5242880"),
        ((part("image", b"\x89PNG"),), False, 400, "ends before its closing boundary"),
    ],
)
def test_bad_form_uploads_get_a_json_4xx_saying_what_is_wrong(
    client: Any, parts: tuple[bytes, ...], close: bool, status: int, mention: str
) -> None:
    response = post_form(client, *parts, close=close)
    assert response.status_code == status, response.text
    assert isinstance(response.json(), dict) and mention in response.text


def test_malformed_forms_and_oversized_bodies_get_a_json_4xx(client: Any) -> None:
    cases = [
        (b"--x\r\n", "multipart/form-data", 400, "needs a boundary"),
        (b"no boundary here", f"multipart/form-data; boundary={BOUNDARY}", 400, "cannot be read"),
        (bytes(33 * 2**20), f"multipart/form-data; boundary={BOUNDARY}", 413, "33554432"),
    ]
    for body, content_type, status, mention in cases:
        response = client.post(
            "/predict_image", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == status and mention in response.json()["error"]


def test_form_parsing_on_its_own() -> None:
    body, headers = form(part("photo", b"\x89PNG...", filename="p.png", media_type="Image/PNG"))
    found = guard.form_file(body, headers["Content-Type"])
    assert (found.field, found.filename, found.media_type, found.data) == (
        "photo",
        "p.png",
        "image/png",
        b"\x89PNG...",
    )
    with pytest.raises(guard.FormError, match="2 file parts"):
        body, headers = form(part("a", b"1"), part("a", b"2"))
        guard.form_file(body, headers["Content-Type"])


def test_exif_orientation_is_honoured_in_either_form(client: Any, photo_jpeg: bytes) -> None:
    upright = Image.open(io.BytesIO(photo_jpeg))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: how a phone held upright saves it
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", exif=exif.tobytes())
    tagged = buffer.getvalue()
    expected = client.post(
        "/predict_image", content=photo_jpeg, headers={"Content-Type": "image/jpeg"}
    )
    for response in (
        client.post("/predict_image", content=tagged, headers={"Content-Type": "image/jpeg"}),
        client.post("/predict_image", files={"image": ("phone.jpg", tagged, "image/jpeg")}),
    ):
        assert response.status_code == 200
        assert response.json()["label"] == expected.json()["label"]
        seen = np.array(response.json()["preprocessed"], float)
        reference = np.array(expected.json()["preprocessed"], float)
        assert np.corrcoef(seen.ravel(), reference.ravel())[0, 1] > 0.95


# --- the schema says what the service takes ---------------------------------------------


def test_openapi_schema_shows_the_raw_body_and_the_form(client: Any) -> None:
    body = client.get("/docs.json").json()["paths"]["/predict_image"]["post"]["requestBody"]
    content = body["content"]
    assert set(content) == {"image/*", "application/octet-stream", "multipart/form-data"}
    assert content["image/*"]["schema"]["format"] == "binary"
    upload = content["multipart/form-data"]["schema"]
    assert upload["type"] == "object" and set(upload["properties"]) == {"image", "file"}
    assert upload["minProperties"] == upload["maxProperties"] == 1  # exactly one file
    assert upload["additionalProperties"]["format"] == "binary"  # under any other name too
    assert "any other name" in upload["description"]


def valid_body(path: str, media_type: str, image: bytes) -> tuple[bytes, str]:
    """A body that each API should accept under ``media_type``, and the header to send."""
    if path == "/predict_image":
        if media_type == "multipart/form-data":
            body, headers = form(part("image", image, media_type="image/png"))
            return body, headers["Content-Type"]
        return image, "image/png" if media_type == "image/*" else media_type
    if path == "/predict":
        return b'{"images": [[' + b",".join([b"0"] * 784) + b"]]}", media_type
    if path == "/feedback":
        row = b"[" + b",".join([b"0"] * 28) + b"]"
        return b'{"label": 1, "digit": [' + b",".join([row] * 28) + b"]}", media_type
    return b"{}", media_type


OTHER_MEDIA_TYPES = [
    "text/plain",
    "application/json",
    "application/xml",
    "application/x-www-form-urlencoded",
    "application/vnd.bentoml+pickle",
    "multipart/form-data",
    "image/png",
    "application/octet-stream",
]


def test_the_service_accepts_and_rejects_exactly_what_its_schema_says(
    client: Any, digit_png: bytes
) -> None:
    paths = client.get("/docs.json").json()["paths"]
    apis = {
        path: item["post"] for path, item in paths.items() if "requestBody" in item.get("post", {})
    }
    assert set(apis) == {"/predict", "/predict_image", "/model_info", "/feedback"}
    for path, api in apis.items():
        listed = set(api["requestBody"]["content"])
        for media_type in listed:
            body, content_type = valid_body(path, media_type, digit_png)
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            assert response.status_code == 200, (path, media_type, response.text)
        for media_type in OTHER_MEDIA_TYPES:
            if media_type in listed or (media_type.startswith("image/") and "image/*" in listed):
                continue
            response = client.post(path, content=b"x", headers={"Content-Type": media_type})
            assert response.status_code == 415, (path, media_type, response.text)
            assert "is not accepted here" in response.json()["error"]
