"""Turn what clients send into what the model takes. Pure numpy + Pillow, no I/O.

In: digits as arrays (nested lists or numpy, (N, 28, 28) or (N, 784), uint8 0-255 or
float 0-1), as base64 of raw bytes, or as PNG/JPEG bytes of a digit as a person would
send it. Out: (N, 1, 28, 28) float32 in [0, 1], MNIST polarity (light ink on black).
Anything unusable raises BadInput with a message a client can act on.

The image path follows the MNIST recipe: grey, invert if the background is light,
crop to the ink, scale into 20x20 keeping the aspect ratio, then place it in 28x28 so
the centre of mass sits at the centre.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from serving.contract import IMAGE_SIDE

PixelDtype = Literal["uint8", "float32"]

MAX_IMAGES = 10_000  # digits per predict request
MAX_IMAGE_BYTES = 5 * 2**20  # one uploaded PNG/JPEG
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height, checked from the header before decoding
IMAGE_FORMATS = ("PNG", "JPEG")

DIGIT_BOX = 20  # MNIST scales the ink into 20x20, then pads to 28x28
MIN_INK_CONTRAST = 40  # grey levels between background and the darkest/lightest ink
NOISE_FLOOR = 0.1  # ink fainter than this fraction of the strongest ink is background

PIXELS = IMAGE_SIDE * IMAGE_SIDE


class BadInput(ValueError):
    """Input the service cannot use. `field` names the request field at fault."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def digits_from_array(images: Any, dtype: PixelDtype, *, field: str = "images") -> np.ndarray:
    """(N, 28, 28) or (N, 784) numbers -> (N, 1, 28, 28) float32 in [0, 1]."""
    try:
        array = np.asarray(images)
    except (ValueError, TypeError):
        raise BadInput(
            f"{field} must be a rectangular array: every digit a list of 784 numbers "
            "or of 28 rows of 28 numbers",
            field=field,
        ) from None
    return _to_model_input(array, dtype, field)


def digits_from_base64(data: str, dtype: PixelDtype, *, field: str = "images_b64") -> np.ndarray:
    """Base64 of raw row-major pixels (uint8, or little-endian float32) -> model input."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(
            f"{field} is not valid base64 (standard alphabet, padded)", field=field
        ) from None
    itemsize = 1 if dtype == "uint8" else 4
    per_digit = PIXELS * itemsize
    if not raw or len(raw) % per_digit:
        raise BadInput(
            f"{field} decodes to {len(raw)} bytes, which is not a whole number of digits "
            f"({PIXELS} pixels x {itemsize} byte{'s' if itemsize > 1 else ''} of {dtype} each)",
            field=field,
        )
    array = np.frombuffer(raw, dtype=np.uint8 if dtype == "uint8" else "<f4")
    return _to_model_input(array.reshape(-1, PIXELS), dtype, field)


def _to_model_input(array: np.ndarray, dtype: PixelDtype, field: str) -> np.ndarray:
    if array.dtype.kind not in "uif":
        found = {"b": "true/false", "U": "text", "S": "bytes"}.get(
            array.dtype.kind, "null, text, objects or integers too large"
        )
        raise BadInput(f"{field} must contain only numbers; found {found}", field=field)
    if array.ndim == 0 or array.size == 0:
        raise BadInput(f"{field} is empty; send at least one digit", field=field)
    if array.shape[1:] not in ((PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)):
        hint = (
            " (wrap a single digit in a list: [digit])"
            if array.shape in ((PIXELS,), (IMAGE_SIDE, IMAGE_SIDE))
            else ""
        )
        raise BadInput(
            f"{field} has shape {list(array.shape)}; expected [N, 28, 28] or [N, 784]{hint}",
            field=field,
        )
    if len(array) > MAX_IMAGES:
        raise BadInput(
            f"{field} holds {len(array)} digits; the limit is {MAX_IMAGES} per request", field=field
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadInput(f"{field} contains NaN or infinity", field=field)
    low, high = array.min(), array.max()
    if dtype == "uint8":
        if low < 0 or high > 255:
            raise BadInput(
                f"{field} values must lie in 0..255 for dtype uint8; found {low}..{high}",
                field=field,
            )
        if array.dtype.kind == "f" and not (array == np.round(array)).all():
            raise BadInput(
                f"{field} has fractional values but dtype is uint8 (whole numbers 0..255); "
                "send dtype float32 for values in 0..1",
                field=field,
            )
        pixels = array.astype(np.float32) / np.float32(255)
    else:
        if low < 0 or high > 1:
            raise BadInput(
                f"{field} values must lie in 0..1 for dtype float32; found {low}..{high} "
                "(send dtype uint8 for values in 0..255)",
                field=field,
            )
        pixels = array.astype(np.float32)
    return pixels.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)  # (N, 1, 28, 28)


def decode_image(data: bytes, *, field: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> (H, W) uint8 grey. Transparency is flattened onto white."""
    if not data:
        raise BadInput(f"{field} is empty; send the bytes of a PNG or JPEG file", field=field)
    if len(data) > MAX_IMAGE_BYTES:
        raise BadInput(f"{field} is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}", field=field)
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        image = None  # reported below with the size we read from the header
    except Exception:  # Pillow raises many types for bytes it cannot parse
        raise BadInput(f"{field} is not a PNG or JPEG image", field=field) from None
    if image is None or image.width * image.height > MAX_IMAGE_PIXELS:
        size = f"{image.width}x{image.height} " if image is not None else ""
        raise BadInput(
            f"{field} is {size}too large; the limit is {MAX_IMAGE_PIXELS} pixels (4096x4096)",
            field=field,
        )
    file_format = image.format
    try:
        if file_format == "JPEG":
            image.draft("L", (4 * IMAGE_SIDE, 4 * IMAGE_SIDE))  # big JPEGs decode at 1/2..1/8 scale
        image = ImageOps.exif_transpose(image)  # phone photos: apply the rotation flag
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            background = Image.new("RGBA", image.size, "white")
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return np.asarray(image.convert("L"))  # (H, W) uint8, ITU-R 601 luma
    except Exception:  # truncated or corrupt data surfaces only when pixels are decoded
        raise BadInput(
            f"{field} is a truncated or corrupt {file_format} file", field=field
        ) from None


def mnist_digit(grey: np.ndarray, *, field: str = "image") -> np.ndarray:
    """(H, W) uint8 grey, any polarity -> (28, 28) uint8 light ink on black, MNIST-framed."""
    pixels = grey.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    if background > 127:  # dark ink on light paper: flip to MNIST's light-on-dark
        pixels, background = 255 - pixels, 255 - background
    ink = np.maximum(pixels - background, 0)
    peak = float(ink.max())
    if peak < MIN_INK_CONTRAST:
        raise BadInput(f"{field} looks blank: no ink stands out from the background", field=field)
    ink[ink < NOISE_FLOOR * peak] = 0  # paper texture, JPEG ringing
    ink *= 255 / peak

    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w), the ink's bounding box
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow takes (w, h)
    box = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS))

    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    weights = box.astype(np.float64)
    total = weights.sum() or 1.0
    centre_row = (weights.sum(axis=1) * np.arange(box.shape[0])).sum() / total
    centre_col = (weights.sum(axis=0) * np.arange(box.shape[1])).sum() / total
    middle = (IMAGE_SIDE - 1) / 2  # 13.5: the centre of a 28-pixel grid
    top = int(np.clip(round(middle - centre_row), 0, IMAGE_SIDE - box.shape[0]))
    left = int(np.clip(round(middle - centre_col), 0, IMAGE_SIDE - box.shape[1]))
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    return out


def digit_from_image(data: bytes, *, field: str = "image") -> np.ndarray:
    """PNG/JPEG bytes of a digit -> (28, 28) uint8 as MNIST would have it."""
    return mnist_digit(decode_image(data, field=field), field=field)
