"""serving/preprocess.py on its own: arrays, base64 and images in, model input or
BadInput out. No model, no server. Photo-like images are drawn with pipeline/photos.py's
building blocks: a digit on lined, squared or speckled paper, under uneven light, turned."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import photos
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
    assert np.allclose(centre, 14, atol=0.5)  # where MNIST put its digits' centre of mass


def test_an_mnist_digit_sent_as_it_is_comes_back_as_it_was(digits: np.ndarray) -> None:
    """MNIST's own framing is (nearly) a fixed point: a 28x28 test digit sent as a PNG is
    framed into the same pixels, give or take resampling and, when its centre of mass sits
    halfway between two pixels, a one-pixel shift."""
    unshifted = 0
    for digit in digits:
        out = digit_from_image(png_bytes(Image.fromarray(digit))).astype(int)
        differences = {
            (dy, dx): np.abs(out - np.roll(digit.astype(int), (dy, dx), axis=(0, 1))).mean()
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        }
        best = min(differences, key=differences.__getitem__)
        assert differences[best] < 2  # grey levels, of 255
        unshifted += best == (0, 0)
    assert unshifted >= 0.9 * len(digits)


def test_a_blank_image_is_refused() -> None:
    for colour in ("white", "black", (120, 130, 140)):
        with pytest.raises(BadInput, match="blank"):
            digit_from_image(png_bytes(Image.new("RGB", (64, 64), colour)))


# --- EXIF orientation -----------------------------------------------------------------


def jpeg_bytes(image: Image.Image, orientation: int | None = None) -> bytes:
    """JPEG of ``image``, with an EXIF Orientation tag if given (as phones save photos:
    the sensor's pixels, plus the turn that shows them upright)."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


# EXIF orientation -> how the camera stored an upright picture
STORED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # shown turned 90 degrees clockwise
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_of_a_phone_photo_is_applied(digits: np.ndarray, orientation: int) -> None:
    upright = Image.open(io.BytesIO(photos.photo(digits[2], np.random.default_rng(1))))
    assert upright.size == (640, 480)
    stored = upright.transpose(STORED[orientation])
    seen = decode_image(jpeg_bytes(stored, orientation))
    reference = decode_image(jpeg_bytes(upright))
    assert seen.shape == reference.shape == (240, 320)  # drafted to half size, then turned
    assert np.abs(seen.astype(int) - reference).mean() < 3  # JPEG's own differences
    untagged = decode_image(jpeg_bytes(stored))
    assert untagged.shape != reference.shape or np.abs(untagged.astype(int) - reference).mean() > 10
    digit, turned = digit_from_image(jpeg_bytes(upright)), digit_from_image(jpeg_bytes(stored))
    tagged = digit_from_image(jpeg_bytes(stored, orientation))
    assert correlation(tagged, digit) > 0.95 > correlation(turned, digit)


# --- digits on paper, as photographed ----------------------------------------------------


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(blurred(a).ravel(), blurred(b).ravel())[0, 1])


def on_paper(
    digit: np.ndarray,
    *,
    lines: float = 0.0,
    grid: float = 0.0,
    light: float = 0.0,
    specks: int = 0,
    turn: float = 0.0,
    seed: int = 0,
) -> bytes:
    """A PNG of ``digit`` in dark ink on a 400x300 page, drawn as pipeline/photos.py
    draws: ruled lines of darkness ``lines`` (0 = none) 70 px apart, so one or two cross
    the digit (about 107 px tall); a grid of darkness ``grid``; light falling off by
    ``light``; ``specks`` dots away from the digit; the page turned ``turn`` degrees."""
    rng = np.random.default_rng(seed)
    size = (300, 400)
    margin = 40 if turn else 0
    page = photos.sheet((size[0] + 2 * margin, size[1] + 2 * margin), 0.93)
    if lines:
        photos.ruled_lines(page, rng, spacing=70, darkness=lines)
    if grid:
        photos.grid_lines(page, rng, spacing=40, darkness=grid)
    middle = (page.shape[0] / 2, page.shape[1] / 2)
    photos.write(page, digit, frame=150, centre=middle, darkness=0.85)
    for _ in range(specks):  # in the outer band of the page, not on the digit
        row, col = rng.integers(10, 60), rng.integers(10, page.shape[1] - 10)
        page[row - 2 : row + 2, col - 2 : col + 2] *= 0.3
    if light:
        photos.lighting(page, rng, strength=light)
    image = photos.to_image(page)
    if turn:
        image = photos.rotate(image, turn, size)
    return photos.png(image)


def test_a_digit_on_lined_paper_in_uneven_light_comes_back_as_the_digit(
    digits: np.ndarray,
) -> None:
    matches = [
        correlation(digit_from_image(on_paper(digit, lines=0.6, light=0.5, seed=i)), digit)
        for i, digit in enumerate(digits)
    ]
    # The same criterion as for a clean rendering: MNIST's framing differs a little
    # digit by digit; the lines or the shadow in the crop would give poor matches.
    assert np.median(matches) > 0.85 and min(matches) > 0.6


@pytest.mark.parametrize("paper", [{"lines": 0.6}, {"grid": 0.5}, {"lines": 0.45, "light": 0.5}])
def test_the_crop_holds_the_digits_ink_and_not_the_lines(
    digits: np.ndarray, paper: dict[str, float]
) -> None:
    for i, digit in enumerate(digits[:10]):
        plain = digit_from_image(on_paper(digit, seed=i)).astype(float)
        lined = digit_from_image(on_paper(digit, seed=i, **paper)).astype(float)
        footprint = cv2.dilate((plain > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert lined[~footprint].sum() < 0.05 * lined.sum(), f"digit {i}: ink off the digit"
        assert lined[footprint].sum() > 0.8 * plain.sum(), f"digit {i}: the digit's ink lost"


def test_without_line_removal_the_lines_would_be_in_the_crop(digits: np.ndarray) -> None:
    """The test above can fail: dark lines pass the ink threshold, and kept, they stretch
    the crop across the page."""
    ink = preprocess.ink_strength(decode_image(on_paper(digits[0], lines=0.6)))
    mask, marks = preprocess.ink_masks(ink)
    kept = preprocess.mnist_frame(preprocess.digit_ink(ink, mask, None))
    removed = preprocess.mnist_frame(
        preprocess.digit_ink(*preprocess.without_lines(ink, mask, marks))
    )
    plain = digit_from_image(on_paper(digits[0]))
    assert correlation(removed, plain) > 0.95 > 0.5 > correlation(kept, plain)


def test_skewed_ruled_lines_are_measured_and_the_page_turned_straight(digits: np.ndarray) -> None:
    mask = np.zeros((240, 320), np.uint8)
    for row in (40, 110, 180):
        cv2.line(mask, (0, row), (319, row + 17), 1, 2)  # down to the right: 3 degrees
    assert preprocess.line_skew(mask) == pytest.approx(3.0, abs=0.5)
    assert preprocess.line_skew(mask[:, ::-1].copy()) == pytest.approx(-3.0, abs=0.5)
    for i, digit in enumerate(digits[:10]):
        straight = digit_from_image(on_paper(digit, lines=0.6, seed=i))
        turned = digit_from_image(on_paper(digit, lines=0.6, turn=7, seed=i))
        assert correlation(turned, straight) > 0.9, f"digit {i}"


def test_specks_on_the_page_are_not_part_of_the_digit(digits: np.ndarray) -> None:
    for i, digit in enumerate(digits[:10]):
        plain = digit_from_image(on_paper(digit, seed=i))
        speckled = digit_from_image(on_paper(digit, specks=30, seed=i))
        assert correlation(speckled, plain) > 0.98, f"digit {i}"


@pytest.mark.parametrize("kind", list(photos.KINDS))
def test_every_kind_of_photo_gives_a_digit_framed_like_mnist(digits: np.ndarray, kind: str) -> None:
    for data in photos.render(kind, digits[:5], seed=0):
        out = digit_from_image(data)
        rows, cols = np.nonzero(out)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 20
        assert out.max() == 255
