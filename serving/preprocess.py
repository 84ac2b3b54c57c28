"""Turn what clients send into what the model takes. Pure functions on numpy arrays, with
Pillow to decode and OpenCV (headless) to find the digit; no I/O.

In: digits as arrays (nested lists or numpy, (N, 28, 28) or (N, 784), uint8 0-255 or
float 0-1), as base64 of raw bytes, or as PNG/JPEG bytes of a digit as a person would
send it: a drawing, a scan, a phone photo of paper. Out: (N, 1, 28, 28) float32 in
[0, 1], MNIST polarity (light ink on black), or the (28, 28) uint8 digit found in an
image. Anything unusable raises BadInput with a message a client can act on.

An image goes through: decode (upright, grey); shrink to WORK_SIDE; divide out the
paper's brightness (uneven light, shadows) and flip to light ink on black if need be;
tell ink from paper by a threshold computed from the image itself; take out ruled or
grid lines (turning the page straight first if they are skewed); keep the digit's
connected ink, not specks; then the MNIST recipe: crop to the ink, scale into 20x20
keeping the aspect ratio, and place it in 28x28 so the centre of mass is in the middle.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image, ImageOps

from serving.contract import IMAGE_SIDE, PIXEL_LEVELS

PixelDtype = Literal["uint8", "float32"]

MAX_IMAGES = 10_000  # digits per predict request
MAX_IMAGE_BYTES = 5 * 2**20  # one uploaded PNG/JPEG
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height, checked from the header before decoding
IMAGE_FORMATS = ("PNG", "JPEG")

DIGIT_BOX = 20  # MNIST scales the ink into 20x20, then pads to 28x28
NOISE_FLOOR = 0.1  # ink fainter than this fraction of the digit's ink is background

# Finding the digit. Lengths are fractions of the working image's long side.
WORK_SIDE = 320  # pixels: the long side of the image the digit is looked for in
MIN_SHADED_SIDE = 64  # pixels: smaller images (a crop) are taken to have a flat background
ENVELOPE_CELLS = 32  # the paper's brightness is estimated on a grid this many cells across
MIN_INK_CONTRAST = 0.15  # the strongest ink must darken the paper by this fraction
INK_THRESHOLD_FLOOR = 0.3  # ink is at least this fraction of the strongest ink
FAINT_MARK = 0.5  # a mark (where lines are looked for) is at least this fraction of ink
LINE_SPAN = 0.75  # a ruled or grid line runs across at least this fraction of the image
LINE_GAP = 0.04  # gaps up to this long in a faint line are joined before measuring it
LINE_WIDTH = 0.02  # and a line is at most this wide; wider, it is a stroke
MAX_SKEW_DEGREES = 10  # lines are looked for within this angle of horizontal and vertical
STROKE_GAP = 0.015  # gaps up to this wide in a stroke (where a line was) are bridged
NEAR_DIGIT = 0.3  # pieces of ink within this fraction of the digit's size around it...
PIECE_OF_DIGIT = 0.1  # ...holding at least this fraction of its ink are part of it

cv2.setNumThreads(1)  # one core per service worker; the images are small anyway

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
        if low < 0 or high > PIXEL_LEVELS:
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
        pixels = array.astype(np.float32) / np.float32(PIXEL_LEVELS)
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
    """PNG/JPEG bytes -> (H, W) uint8 grey, upright (the EXIF orientation of phone photos
    applied). Transparency is flattened onto white. A JPEG larger than the digit finder
    needs is decoded at 1/2, 1/4 or 1/8 scale, which is much quicker."""
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
            shrink = WORK_SIDE / max(image.size)  # draft keeps at least the size asked for
            image.draft("L", (math.ceil(image.width * shrink), math.ceil(image.height * shrink)))
        image = ImageOps.exif_transpose(image)  # phone photos: apply the rotation flag
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            background = Image.new("RGBA", image.size, "white")
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return np.asarray(image.convert("L"))  # (H, W) uint8, ITU-R 601 luma
    except Exception:  # truncated or corrupt data surfaces only when pixels are decoded
        raise BadInput(
            f"{field} is a truncated or corrupt {file_format} file", field=field
        ) from None


# ----- finding the digit on the page -------------------------------------------------------
# Each step works on the image scaled to WORK_SIDE at most, with floats 0-1. Sizes are
# fractions of the image's long side, so that a scan, a phone photo and the page's
# 280-pixel drawing pad are treated alike.


def working_size(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> the same image with its long side at most WORK_SIDE."""
    height, width = grey.shape
    shrink = WORK_SIDE / max(height, width)
    if shrink >= 1:
        return grey
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))  # OpenCV: (w, h)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def paper_brightness(pixels: np.ndarray) -> np.ndarray:
    """(H, W) float32, dark ink on light paper -> the paper's brightness at each pixel, as
    if the ink were not there: a morphological closing (a local maximum, then minimum)
    of the image shrunk to about ENVELOPE_CELLS cells across, which fills in strokes up to
    a tenth of the image wide, smoothed and scaled back up. Light falling off across the
    page, a shadow or a vignette stay in it; the ink does not. Small images (a drawing or
    a tight crop, where a stroke may be a fifth of the image) get a flat paper: the
    median of their border."""
    height, width = pixels.shape
    if max(height, width) < MIN_SHADED_SIDE:
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        return np.full_like(pixels, max(float(np.median(border)), 1.0))
    cell = max(height, width) / ENVELOPE_CELLS
    small = cv2.resize(
        pixels,
        (max(1, math.ceil(width / cell)), max(1, math.ceil(height / cell))),
        interpolation=cv2.INTER_AREA,
    )
    closed = cv2.morphologyEx(small, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    smooth = cv2.GaussianBlur(closed, (5, 5), 0)
    paper = cv2.resize(smooth, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.maximum(paper, 1.0)


def ink_strength(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8, either polarity -> (H, W) float32 ink in 0..1 (0 = bare paper), the
    lighting divided out. Dark ink on light paper or light ink on dark: whichever tail
    of the grey levels reaches further from the typical pixel is the ink."""
    pixels = grey.astype(np.float32)
    smooth = cv2.GaussianBlur(pixels, (3, 3), 0)  # one noisy pixel is not the darkest ink
    typical = float(np.median(working_sample(pixels)))
    if smooth.max() - typical > typical - smooth.min():  # light ink on dark: flip it
        pixels = 255 - pixels
    return np.clip(1 - pixels / paper_brightness(pixels), 0, 1)


def working_sample(pixels: np.ndarray) -> np.ndarray:
    """A few thousand pixels spread over the image: enough for a median, and quick."""
    step = max(1, round(math.sqrt(pixels.size / 4096)))
    return pixels[::step, ::step]


def ink_masks(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 ink -> two (H, W) uint8 0/1 masks: where the ink is, and where any
    mark is, faint ones too. Ink: above Otsu's threshold on this image's own smoothed ink
    (the level that best splits it in two), raised if need be above the noise of the bare
    paper and to INK_THRESHOLD_FLOOR of the strongest ink, so that faint ruled lines and
    specks mostly stay out. Marks: above FAINT_MARK of that threshold and still above the
    noise, so that a faint line shows whole, not as dashes, where lines are looked for."""
    smooth = cv2.GaussianBlur(ink, (3, 3), 0)
    peak = float(smooth.max())
    levels = np.round(smooth * (255 / peak)).astype(np.uint8)
    otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    sample = working_sample(smooth)
    paper = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - paper)))  # the paper's noise, robustly
    noise = paper + 6 * spread
    threshold = max(otsu / 255 * peak, noise, INK_THRESHOLD_FLOOR * peak)
    faint = max(FAINT_MARK * threshold, noise)
    return (smooth > threshold).astype(np.uint8), (smooth > faint).astype(np.uint8)


def line_skew(mask: np.ndarray) -> float:
    """Degrees by which the longest straight structures within MAX_SKEW_DEGREES of
    horizontal (ruled lines, a grid) are turned clockwise as the image is shown (running
    down to the right); 0 if there are none."""
    width = mask.shape[1]
    swing = math.radians(MAX_SKEW_DEGREES)
    found = cv2.HoughLines(
        mask,
        1,
        math.pi / 360,
        int(0.6 * LINE_SPAN * width),
        min_theta=math.pi / 2 - swing,
        max_theta=math.pi / 2 + swing,
    )
    if found is None:
        return 0.0
    thetas = found[:5, 0, 1]  # the strongest few: OpenCV returns them by votes
    return float(np.degrees(np.median(thetas) - math.pi / 2))  # theta: the normal's angle


def long_lines(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0/1 -> the pixels of the mask that belong to thin horizontal or
    vertical lines spanning at least LINE_SPAN of the image (dashes of a faint line joined
    up). A band wider than LINE_WIDTH is not a line but a stroke: a pen's "1" drawn from
    top to bottom of a small pad stays."""
    height, width = mask.shape
    long_side = max(height, width)
    gap = max(3, round(LINE_GAP * long_side))
    widest = max(3, round(LINE_WIDTH * long_side)) + 2  # + 2: the dilation below
    found = np.zeros_like(mask)
    for span, horizontal in ((width, True), (height, False)):
        length = round(LINE_SPAN * span)
        along = (1, gap) if horizontal else (gap, 1)  # (rows, columns) of a kernel
        across = (3, 1) if horizontal else (1, 3)
        loose = cv2.dilate(mask, np.ones(across, np.uint8))  # a line off by a pixel still counts
        joined = cv2.morphologyEx(loose, cv2.MORPH_CLOSE, np.ones(along, np.uint8))
        line = (1, length) if horizontal else (length, 1)
        band = cv2.morphologyEx(joined, cv2.MORPH_OPEN, np.ones(line, np.uint8))
        wide = (widest + 1, 1) if horizontal else (1, widest + 1)
        found |= band & ~cv2.morphologyEx(band, cv2.MORPH_OPEN, np.ones(wide, np.uint8))
    return found & mask


def rotated(image: np.ndarray, degrees: float, interpolation: int) -> np.ndarray:
    """``image`` turned by ``degrees`` counter-clockwise about its centre, same size."""
    height, width = image.shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=interpolation)


def without_lines(
    ink: np.ndarray, mask: np.ndarray, marks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Find ruled or grid lines among the marks (``ink_masks``' second mask) and take them
    out of the ink mask. If there are lines and they are skewed, the page is first turned
    so that they run straight (the digit written on it turns with it). Returns (ink,
    mask, lines), turned alike; ``lines`` is None when there are none. Images smaller
    than MIN_SHADED_SIDE have no lines."""
    if min(mask.shape) < MIN_SHADED_SIDE:
        return ink, mask, None
    skew = line_skew(marks)
    if abs(skew) >= 0.25:
        turned_marks = rotated(marks, skew, cv2.INTER_NEAREST)  # counter-clockwise: straight
        lines = long_lines(turned_marks)
        if lines.any():
            turned_mask = rotated(mask, skew, cv2.INTER_NEAREST)
            return rotated(ink, skew, cv2.INTER_LINEAR), turned_mask & ~lines, lines
    lines = long_lines(marks)
    if not lines.any():
        return ink, mask, None
    return ink, mask & ~lines, lines


def digit_ink(ink: np.ndarray, mask: np.ndarray, lines: np.ndarray | None) -> np.ndarray:
    """The digit's own ink, cut out around it, everything else zero: the largest
    connected piece of ink, the pieces near it that are more than specks (a stroke cut by
    a removed line, or written apart), and the faint edges of their strokes. All zero if
    there is no ink."""
    reach = max(1, round(STROKE_GAP * max(mask.shape)))
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    bridged = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)  # across a removed line
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bridged, connectivity=8)
    if count < 2:
        return np.zeros((1, 1), np.float32)
    area = stats[:, cv2.CC_STAT_AREA].copy()
    area[0] = 0  # the background
    main = int(area.argmax())
    left, top, width, height = stats[main, :4]
    grow = NEAR_DIGIT * max(width, height)
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]
    near = (
        (x1 >= left - grow)
        & (x0 <= left + width + grow)
        & (y1 >= top - grow)
        & (y0 <= top + height + grow)
    )
    keep = near & (area >= PIECE_OF_DIGIT * area[main])
    keep[0] = False
    region = (  # the kept pieces' bounding box, with room for their edges
        slice(max(int(y0[keep].min()) - reach, 0), int(y1[keep].max()) + reach),
        slice(max(int(x0[keep].min()) - reach, 0), int(x1[keep].max()) + reach),
    )
    pieces = keep[labels[region]].astype(np.uint8)  # (h, w) 0/1: the digit's connected ink
    support = cv2.dilate(pieces, kernel)  # and its strokes' faint edges, below the threshold
    if lines is None:
        return ink[region] * support
    on_line = cv2.dilate(lines[region], np.ones((3, 3), np.uint8))
    digit = ink[region] * ((support & ~on_line) | pieces)
    # Where a stroke crosses a line, the two inks add up: no darker than the stroke itself.
    elsewhere = digit[(on_line == 0) & (digit > 0)]
    if elsewhere.size:
        np.minimum(digit, np.percentile(elsewhere, 99), out=digit, where=on_line > 0)
    return digit


def mnist_frame(ink: np.ndarray, *, field: str = "image") -> np.ndarray:
    """(H, W) float ink of one digit, 0 elsewhere -> (28, 28) uint8 as MNIST frames it:
    the ink's bounding box scaled into 20x20 keeping its aspect ratio, then placed so
    that its centre of mass is the centre of the 28x28 image."""
    if not ink.any():
        raise BadInput(f"{field} looks blank: no ink stands out from the background", field=field)
    peak = float(np.percentile(ink[ink > 0], 99))
    ink = ink * (255 / peak)
    ink[ink < NOISE_FLOOR * 255] = 0  # paper texture, JPEG ringing
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w), the ink's bounding box
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow takes (w, h)
    box = np.asarray(
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(
            size, Image.Resampling.LANCZOS
        )
    )
    if 0 < box.max() < 255:  # thin strokes shrunk: their cores at full strength, as in MNIST
        box = np.round(box * (255 / box.max())).astype(np.uint8)

    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    weights = box.astype(np.float64)
    total = weights.sum() or 1.0
    centre_row = (weights.sum(axis=1) * np.arange(box.shape[0])).sum() / total
    centre_col = (weights.sum(axis=0) * np.arange(box.shape[1])).sum() / total
    middle = IMAGE_SIDE / 2  # MNIST put the centre of mass at pixel (14, 14), 0-based
    top = int(np.clip(round(middle - centre_row), 0, IMAGE_SIDE - box.shape[0]))
    left = int(np.clip(round(middle - centre_col), 0, IMAGE_SIDE - box.shape[1]))
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    return out


def mnist_digit(grey: np.ndarray, *, field: str = "image") -> np.ndarray:
    """(H, W) uint8 grey, any polarity -> (28, 28) uint8 light ink on black, MNIST-framed:
    the lighting divided out, ink told from paper, ruled or grid lines and specks
    removed, the digit's connected ink kept, then framed as MNIST frames its digits."""
    ink = ink_strength(working_size(grey))  # (h, w) float32 0..1
    if float(cv2.GaussianBlur(ink, (3, 3), 0).max()) < MIN_INK_CONTRAST:
        raise BadInput(f"{field} looks blank: no ink stands out from the background", field=field)
    ink, mask, lines = without_lines(ink, *ink_masks(ink))
    return mnist_frame(digit_ink(ink, mask, lines), field=field)


def digit_from_image(data: bytes, *, field: str = "image") -> np.ndarray:
    """PNG/JPEG bytes of a digit -> (28, 28) uint8 as MNIST would have it."""
    return mnist_digit(decode_image(data, field=field), field=field)
