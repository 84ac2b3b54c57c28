"""serving/preprocess.py on its own: arrays, base64 and images in, model input or
BadInput out. No model, no server."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving import preprocess
from serving.preprocess import (
    BadInput,
    decode_image,
    digit_from_image,
    digits_from_array,
    digits_from_base64,
)
from tests.serving.images import render


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """A grey PNG of zeros claiming width x height; with `rows`, only that many rows of
    pixel data follow. A few kB that would decode to width x height bytes: a bomb."""
    row = b"\x00" * (width + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    count = height if rows is None else rows
    data = b"".join(compressor.compress(row) for _ in range(count)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def digits(test_digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return test_digits[0][:20]  # (20, 28, 28) uint8


# --- arrays and base64 -------------------------------------------------------------


def test_uint8_float_and_base64_encodings_give_identical_model_input(digits: np.ndarray) -> None:
    reference = digits_from_array(digits.tolist(), "uint8")
    assert reference.shape == (20, 1, 28, 28) and reference.dtype == np.float32
    assert reference.min() == 0 and reference.max() == 1
    as_float = (digits / 255).tolist()  # what a float client sends: float64 pixels/255
    same = [
        digits_from_array(digits.reshape(20, 784).tolist(), "uint8"),
        digits_from_array(as_float, "float32"),
        digits_from_array(digits.astype(float).tolist(), "uint8"),  # 3.0 is a fine uint8
        digits_from_base64(base64.b64encode(digits.tobytes()).decode(), "uint8"),
        digits_from_base64(
            base64.b64encode((digits / 255).astype("<f4").tobytes()).decode(), "float32"
        ),
    ]
    for other in same:
        np.testing.assert_array_equal(other, reference)


@pytest.mark.parametrize(
    ("images", "dtype", "message"),
    [
        ([], "uint8", "empty"),
        ([[1, 2, 3]], "uint8", "shape [1, 3]"),
        ([0] * 784, "uint8", "wrap a single digit"),
        ([[0] * 28] * 28, "uint8", "wrap a single digit"),
        ([[0] * 784, [0] * 783], "uint8", "rectangular"),
        ([["a"] * 784], "uint8", "text"),
        ([[True] * 784], "uint8", "true/false"),
        ([[None] * 784], "uint8", "null"),
        ([[10**30] * 784], "uint8", "too large"),
        ([[256] * 784], "uint8", "0..255"),
        ([[-1] * 784], "uint8", "0..255"),
        ([[0.5] * 784], "uint8", "fractional"),
        ([[1.5] * 784], "float32", "0..1"),
        ([[float("nan")] * 784], "float32", "NaN"),
        ([[float("inf")] * 784], "uint8", "NaN or infinity"),
    ],
)
def test_bad_arrays_are_refused_with_a_reason(images: object, dtype: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)) as caught:
        digits_from_array(images, dtype)  # type: ignore[arg-type]
    assert caught.value.field == "images"


def test_too_many_digits_are_refused() -> None:
    with pytest.raises(BadInput, match="limit is 10000"):
        digits_from_array(np.zeros((preprocess.MAX_IMAGES + 1, 784), np.uint8), "uint8")


@pytest.mark.parametrize(
    ("data", "dtype", "message"),
    [
        ("not base64!", "uint8", "not valid base64"),
        ("", "uint8", "0 bytes"),
        (base64.b64encode(bytes(783)).decode(), "uint8", "783 bytes"),
        (base64.b64encode(bytes(784)).decode(), "float32", "4 bytes of float32"),
        (base64.b64encode(np.full(784, np.nan, "<f4").tobytes()).decode(), "float32", "NaN"),
        (base64.b64encode(np.full(784, 2, "<f4").tobytes()).decode(), "float32", "0..1"),
    ],
)
def test_bad_base64_is_refused_with_a_reason(data: str, dtype: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)) as caught:
        digits_from_base64(data, dtype)  # type: ignore[arg-type]
    assert caught.value.field == "images_b64"


# --- decoding images ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16"])
def test_every_common_png_mode_decodes_to_grey(mode: str) -> None:
    image = Image.new("RGB", (40, 30), "white").convert(mode)
    grey = decode_image(png_bytes(image))
    assert grey.shape == (30, 40) and grey.dtype == np.uint8


def test_transparent_background_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # transparent black: a web canvas
    image.paste((0, 0, 0, 255), (20, 10, 30, 40))  # an opaque black stroke
    grey = decode_image(png_bytes(image))
    assert grey[0, 0] == 255 and grey[25, 25] == 0


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png(6000, 6000)  # 36 megapixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(BadInput, match="6000x6000 too large"):
        decode_image(bomb)
    with pytest.raises(BadInput, match="too large"):
        decode_image(png(100_000, 100_000, rows=1))  # would be 10 GB of pixels


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, world", "not a PNG or JPEG"),
        (b"GIF89a" + bytes(100), "not a PNG or JPEG"),
        (bytes(preprocess.MAX_IMAGE_BYTES + 1), "limit is 5242880"),
    ],
)
def test_non_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        decode_image(data)


def test_truncated_png_and_jpeg_are_refused(digits: np.ndarray) -> None:
    for image_format in ("PNG", "JPEG"):
        data = render(digits[0], image_format=image_format)
        with pytest.raises(BadInput, match=f"truncated or corrupt {image_format}"):
            decode_image(data[: len(data) // 2])


# --- the MNIST framing --------------------------------------------------------------


def blurred(image: np.ndarray) -> np.ndarray:
    """3x3 box sums: compares shapes while forgiving the half-pixel shifts of resampling."""
    padded = np.pad(image.astype(float), 1)
    return sum(padded[i : i + 28, j : j + 28] for i in range(3) for j in range(3))


def test_a_rendered_digit_comes_back_close_to_the_mnist_original(digits: np.ndarray) -> None:
    correlations = []
    for digit in digits:
        recovered = digit_from_image(
            render(digit, colour=True, offset=(40, -30), image_format="JPEG")
        )
        correlations.append(np.corrcoef(blurred(recovered).ravel(), blurred(digit).ravel())[0, 1])
    # MNIST's own framing differs a little digit by digit; a wrong polarity, crop or
    # centring would give correlations near zero.
    assert np.median(correlations) > 0.85 and min(correlations) > 0.6


def test_polarity_and_position_do_not_change_the_result(digits: np.ndarray) -> None:
    reference = digit_from_image(render(digits[3]))
    inverted = digit_from_image(render(digits[3], dark_on_light=False))
    assert np.abs(inverted.astype(int) - reference).max() <= 2  # render rounds 255 - x and x apart
    shifted = digit_from_image(render(digits[3], offset=(50, 50)))
    assert np.abs(shifted.astype(int) - reference).max() <= 2


def test_output_is_framed_like_mnist(digits: np.ndarray) -> None:
    out = digit_from_image(render(digits[5], size=300, offset=(-80, 60)))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows, cols = np.nonzero(out)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20  # fits 20x20 box
    weights = out.astype(float) / out.sum()
    centre = ((weights.sum(1) * np.arange(28)).sum(), (weights.sum(0) * np.arange(28)).sum())
    assert np.allclose(centre, 13.5, atol=0.6)


def test_a_blank_image_is_refused() -> None:
    for colour in ("white", "black", (120, 130, 140)):
        with pytest.raises(BadInput, match="blank"):
            digit_from_image(png_bytes(Image.new("RGB", (64, 64), colour)))
