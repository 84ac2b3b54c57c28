"""Digits as people send them: MNIST digits rendered as photos and scans on paper.

In: a (28, 28) uint8 MNIST digit (light ink on black, as in the data set) and a numpy
Generator that every random choice comes from. Out: the bytes of a PNG or JPEG file, the
digit written in dark ink on light paper and spoilt in one named way (a *kind*), or in
all of them at once (``photo``). The same digit, kind and Generator state give the same
bytes.

The building blocks are named functions on float images, (H, W) grey or (H, W, 3)
colour, 0 black and 1 white: ``sheet``, ``write``, ``ruled_lines``, ``grid_lines``,
``lighting``; then, on the 8-bit image, ``rotate``, ``blur``, ``sensor_noise`` and the
encoders. ``KINDS`` maps each kind's name to its recipe. Pure numpy and Pillow: the
tests and the robustness stages use it, the service does not.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from pipeline.dataset import grey_levels, unit_pixels

Recipe = Callable[[np.ndarray, np.random.Generator], bytes]

MNIST_SIDE = 28
SCAN = (240, 240)  # (height, width) of a scan or a cropped snapshot
PHOTO = (480, 640)  # a phone photo, downscaled as apps send them
BLUE_INK = np.array([0.15, 0.2, 0.45])  # colours: what is left of white light
BLACK_INK = np.array([0.12, 0.12, 0.14])
LINE_BLUE = np.array([0.55, 0.7, 0.9])
MARGIN_RED = np.array([0.9, 0.45, 0.5])
WARM_PAPER = np.array([1.0, 0.97, 0.9])


# ----- drawing on paper (floats, 1 = white) --------------------------------------------------


def sheet(size: tuple[int, int], tone: float, tint: np.ndarray | None = None) -> np.ndarray:
    """Blank paper of brightness ``tone``: (H, W), or (H, W, 3) with a colour ``tint``."""
    if tint is None:
        return np.full(size, tone, np.float32)
    return np.tile((tone * tint).astype(np.float32), (*size, 1))


def _darken(page: np.ndarray, alpha: np.ndarray, darkness: float, colour) -> None:
    """Multiply ``page`` by ink of coverage ``alpha`` ((H, W), or a row or column that
    broadcasts to it) in place: what paper under ink of that colour reflects."""
    if page.ndim == 2:
        page *= 1 - darkness * alpha
    else:
        page *= 1 - darkness * alpha[..., None] * (1 - np.asarray(colour, np.float32))


def write(
    page: np.ndarray,
    digit: np.ndarray,
    *,
    frame: int,
    centre: tuple[float, float],
    darkness: float,
    colour=BLACK_INK,
) -> None:
    """Write the digit in place: its 28x28 frame scaled to ``frame`` pixels square and
    centred at ``centre`` (row, column), ink of ``darkness`` (1 = black) and ``colour``."""
    alpha = unit_pixels(
        np.asarray(Image.fromarray(digit).resize((frame, frame), Image.Resampling.BICUBIC))
    )
    top, left = round(centre[0] - frame / 2), round(centre[1] - frame / 2)
    rows = slice(max(top, 0), min(top + frame, page.shape[0]))
    cols = slice(max(left, 0), min(left + frame, page.shape[1]))
    inside = alpha[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    _darken(page[rows, cols], inside, darkness, colour)


def _line_profile(length: int, spacing: float, phase: float, thickness: float) -> np.ndarray:
    """(length,) coverage of parallel lines every ``spacing`` pixels, anti-aliased."""
    position = np.arange(length, dtype=np.float32)
    distance = np.abs((position - phase + spacing / 2) % spacing - spacing / 2)
    return np.clip(thickness / 2 + 0.5 - distance, 0, 1)


def ruled_lines(
    page: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: float,
    darkness: float,
    colour=LINE_BLUE,
    margin: bool = False,
) -> None:
    """Horizontal ruled lines across the page (and a vertical margin line), in place."""
    height, width = page.shape[:2]
    thickness = float(rng.uniform(1.0, 2.5))
    profile = _line_profile(height, spacing, rng.uniform(0, spacing), thickness)
    _darken(page, profile[:, None], darkness, colour)
    if margin:
        column = _line_profile(width, 10 * width, rng.uniform(0.05, 0.15) * width, thickness)
        _darken(page, column[None, :], darkness, MARGIN_RED)


def grid_lines(
    page: np.ndarray, rng: np.random.Generator, *, spacing: float, darkness: float, colour=LINE_BLUE
) -> None:
    """Squared paper: lines both ways every ``spacing`` pixels, in place."""
    height, width = page.shape[:2]
    thickness = float(rng.uniform(0.8, 2.0))
    rows = _line_profile(height, spacing, rng.uniform(0, spacing), thickness)
    cols = _line_profile(width, spacing, rng.uniform(0, spacing), thickness)
    coverage = np.maximum(rows[:, None], cols[None, :])
    _darken(page, coverage, darkness, colour)


def lighting(page: np.ndarray, rng: np.random.Generator, *, strength: float) -> None:
    """Uneven light, in place: a linear falloff in a random direction that dims the far
    side by ``strength``, times a vignette around a random point."""
    height, width = page.shape[:2]
    rows = np.arange(height, dtype=np.float32)[:, None]  # (H, 1) and (1, W): broadcast
    cols = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    along = np.float32(np.cos(angle) / width) * cols + np.float32(np.sin(angle) / height) * rows
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)  # 0..1 across the page
    centre = rng.uniform(0.2, 0.8, size=2) * (height, width)
    radius = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / np.float32(height**2 + width**2)
    vignette = np.float32(rng.uniform(0.2, 0.6) * strength)
    light = (1 - np.float32(strength) * along) * (1 - vignette * radius)
    page *= light if page.ndim == 2 else light[..., None]


# ----- the camera (8-bit images) -------------------------------------------------------------


def to_image(page: np.ndarray) -> Image.Image:
    """Floats 0-1 -> an 8-bit Pillow image, L or RGB."""
    return Image.fromarray(grey_levels(page))


def rotate(image: Image.Image, degrees: float, size: tuple[int, int]) -> Image.Image:
    """Turn the page by ``degrees`` (counter-clockwise) and keep the middle ``size``
    (height, width): a page drawn larger than the frame fills it to the corners."""
    turned = image.rotate(degrees, resample=Image.Resampling.BILINEAR)
    left, top = (turned.width - size[1]) // 2, (turned.height - size[0]) // 2
    return turned.crop((left, top, left + size[1], top + size[0]))


def blur(image: Image.Image, sigma: float) -> Image.Image:
    """Out of focus or shaken: Gaussian blur of ``sigma`` pixels."""
    return image.filter(ImageFilter.GaussianBlur(sigma))


def sensor_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Gaussian noise of ``sigma`` grey levels on every pixel (and channel)."""
    pixels = np.asarray(image, np.float32)
    noisy = pixels + np.float32(sigma) * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # quick: the files are throwaway
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ----- recipes: one kind of corruption each, and all of them ----------------------------------


def _scan(digit: np.ndarray, rng: np.random.Generator, size=SCAN, margin: int = 0) -> np.ndarray:
    """A clean scan: dark ink on light paper, the digit's frame 0.55-0.75 of the height,
    roughly centred; ``margin`` pixels of extra paper on each side (for rotation)."""
    page = sheet((size[0] + 2 * margin, size[1] + 2 * margin), float(rng.uniform(0.88, 0.98)))
    frame = round(rng.uniform(0.55, 0.75) * size[0])
    jitter = rng.uniform(-0.05, 0.05, size=2) * size
    centre = (page.shape[0] / 2 + jitter[0], page.shape[1] / 2 + jitter[1])
    write(page, digit, frame=frame, centre=centre, darkness=float(rng.uniform(0.7, 0.9)))
    return page


def clean(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The reference: a clean scan, PNG."""
    return png(to_image(_scan(digit, rng)))


def gradient(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Uneven light: the far side of the page dimmed by 30-60 %, and a vignette."""
    page = _scan(digit, rng)
    lighting(page, rng, strength=float(rng.uniform(0.3, 0.6)))
    return png(to_image(page))


def ruled(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Lined notebook paper: lines 0.5-0.9 of the digit's frame apart, crossing it."""
    frame = rng.uniform(0.55, 0.75) * SCAN[0]
    page = sheet(SCAN, float(rng.uniform(0.88, 0.98)))
    ruled_lines(
        page,
        rng,
        spacing=float(rng.uniform(0.5, 0.9) * frame),
        darkness=float(rng.uniform(0.2, 0.6)),
        margin=bool(rng.random() < 0.3),
    )
    centre = np.array(SCAN) / 2 + rng.uniform(-0.05, 0.05, size=2) * SCAN
    write(page, digit, frame=round(frame), centre=tuple(centre), darkness=rng.uniform(0.7, 0.9))
    return png(to_image(page))


def squared(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Squared (grid) paper: squares 0.2-0.4 of the digit's frame."""
    frame = rng.uniform(0.55, 0.75) * SCAN[0]
    page = sheet(SCAN, float(rng.uniform(0.88, 0.98)))
    grid_lines(
        page,
        rng,
        spacing=float(rng.uniform(0.2, 0.4) * frame),
        darkness=float(rng.uniform(0.15, 0.5)),
    )
    centre = np.array(SCAN) / 2 + rng.uniform(-0.05, 0.05, size=2) * SCAN
    write(page, digit, frame=round(frame), centre=tuple(centre), darkness=rng.uniform(0.7, 0.9))
    return png(to_image(page))


def noise(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A dim sensor: Gaussian noise of 8-20 grey levels."""
    return png(sensor_noise(to_image(_scan(digit, rng)), rng, float(rng.uniform(8, 20))))


def blurred(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Out of focus: Gaussian blur of 1.5-3.5 pixels (the digit is about 120 across)."""
    return png(blur(to_image(_scan(digit, rng)), float(rng.uniform(1.5, 3.5))))


def rotation(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The page turned 8-20 degrees either way."""
    page = to_image(_scan(digit, rng, margin=SCAN[0] // 6))  # room to turn 20 degrees
    degrees = float(rng.uniform(8, 20) * rng.choice([-1, 1]))
    return png(rotate(page, degrees, SCAN))


def scale(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The digit small in a large frame: its frame 0.15-0.25 of a photo's height."""
    page = sheet(PHOTO, float(rng.uniform(0.88, 0.98)))
    frame = round(rng.uniform(0.15, 0.25) * PHOTO[0])
    centre = rng.uniform(0.3, 0.7, size=2) * PHOTO
    write(page, digit, frame=frame, centre=tuple(centre), darkness=float(rng.uniform(0.7, 0.9)))
    return png(to_image(page))


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Far from the middle: the digit's frame, 0.4-0.5 of the height, near an edge."""
    page = sheet(SCAN, float(rng.uniform(0.88, 0.98)))
    frame = round(rng.uniform(0.4, 0.5) * SCAN[0])
    half = frame / 2
    centre = [rng.uniform(half, side - half) for side in SCAN]
    edge = int(rng.integers(2))  # pushed against the top/bottom or the left/right edge
    centre[edge] = half if rng.random() < 0.5 else SCAN[edge] - half
    write(page, digit, frame=frame, centre=tuple(centre), darkness=float(rng.uniform(0.7, 0.9)))
    return png(to_image(page))


def compressed(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Heavy JPEG compression: quality 8-25."""
    return jpeg(to_image(_scan(digit, rng)), int(rng.integers(8, 26)))


def photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo of a digit on lined notebook paper: colour JPEG of 640x480, blue
    lines (a red margin sometimes), uneven light, the page turned a little, slightly out
    of focus, sensor noise, the digit small (its frame 0.25-0.4 of the height) and
    anywhere in the middle of the frame."""
    margin = PHOTO[0] // 12  # room to turn 6 degrees
    size = (PHOTO[0] + 2 * margin, PHOTO[1] + 2 * margin)
    page = sheet(size, float(rng.uniform(0.8, 0.95)), tint=WARM_PAPER)
    frame = rng.uniform(0.25, 0.4) * PHOTO[0]
    ruled_lines(
        page,
        rng,
        spacing=float(rng.uniform(0.5, 0.9) * frame),
        darkness=float(rng.uniform(0.3, 0.7)),
        colour=LINE_BLUE,
        margin=bool(rng.random() < 0.3),
    )
    centre = np.array(size) / 2 + rng.uniform(-0.25, 0.25, size=2) * PHOTO
    ink = BLUE_INK if rng.random() < 0.5 else BLACK_INK
    write(page, digit, frame=round(frame), centre=tuple(centre), darkness=1.0, colour=ink)
    lighting(page, rng, strength=float(rng.uniform(0.2, 0.5)))
    image = rotate(to_image(page), float(rng.uniform(-6, 6)), PHOTO)
    image = blur(image, float(rng.uniform(0.6, 1.5)))
    image = sensor_noise(image, rng, float(rng.uniform(3, 8)))
    return jpeg(image, int(rng.integers(50, 86)))


KINDS: dict[str, Recipe] = {
    "clean": clean,
    "gradient": gradient,
    "ruled": ruled,
    "squared": squared,
    "noise": noise,
    "blur": blurred,
    "rotation": rotation,
    "scale": scale,
    "off_centre": off_centre,
    "jpeg": compressed,
    "photo": photo,
}


def kind_rng(seed: int, kind: str) -> np.random.Generator:
    """The Generator of one kind: seeded by ``seed`` and the kind's name, so adding or
    removing a kind leaves the others' images as they were."""
    return np.random.default_rng([seed, zlib.crc32(kind.encode())])


def render(kind: str, digits: np.ndarray, seed: int) -> list[bytes]:
    """(N, 28, 28) uint8 digits -> N encoded images of ``kind``, in order."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    rng = kind_rng(seed, kind)
    return [KINDS[kind](digit, rng) for digit in digits]
