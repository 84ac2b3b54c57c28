"""Common corruptions of the 28x28 digit itself: noise, blur, geometry, intensity,
occlusion and outlines, at a stated severity; and the service's two ways in.

In: (N, 28, 28) uint8 digits in MNIST polarity (light ink on black), a corruption's
name, a seed and a severity in (0, 1]. Out: (N, 28, 28) uint8, the same digits spoilt
in that one way. ``corrupt`` is deterministic: the same digits, name, seed and severity
give the same bytes. Each corruption draws its random choices (where the noise falls,
which way a digit turns) from a Generator of its own, seeded by the seed and its name,
so adding a corruption leaves the others' output as it was; the severity only sets how
strong it is: one seed at two severities mostly makes the same choices, further (turns
the same digits the same way, puts the noise in the same places).

``FAMILIES`` groups the names; ``CORRUPTIONS`` maps each name to its function
``(digits, rng, severity) -> digits``. Robustness is reported at ``REPORT_SEVERITY``.
Training-time augmentation must not see what is reported on: if it uses these
functions at all, it draws from other seeds and severities (and better leaves some
families out altogether), or the report measures memory, not robustness.

``as_arrays`` and ``as_images`` put digits through what POST /predict and POST
/predict_image do to them (serving.preprocess), so a corruption can be scored along
both. ``python -m pipeline.corruptions --out corruptions.png`` draws every corruption
on a few test digits and what /predict_image's preprocessing makes of them.

Pure numpy, OpenCV and Pillow; no I/O outside the command.
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import os
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline import atomic
from pipeline.dataset import LEVELS, grey_levels, unit_pixels
from pipeline.errors import StageError
from pipeline.idx import IMAGES_MAGIC, parse_idx
from serving import preprocess

Corruption = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]

SIDE = 28
REPORT_SEVERITY = 0.6  # robustness is reported here; augmentation stays off it
INK = 0.1  # a pixel brighter than this fraction of full scale is ink (bounding boxes)

cv2.setNumThreads(1)  # small images: threads cost more than they save

# ----- float images: (N, 28, 28) float32, 0 black, 1 full ink -------------------------------


def _filtered(pixels: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
    """Each image convolved with its kernel (one kernel: all of them), black outside."""
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        kernel = kernels[i % len(kernels)]
        out[i] = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return out


def _gaussian(pixels: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    return _filtered(pixels, [np.outer(taps, taps)])


def _upsampler(cells: int) -> np.ndarray:
    """(28, cells) matrix: a cells x cells grid G becomes a smooth 28x28 image U G U^T
    (OpenCV's bicubic interpolation, separable, so it applies to the whole stack)."""
    eye = np.eye(cells, dtype=np.float32)
    return cv2.resize(eye, (cells, SIDE), interpolation=cv2.INTER_CUBIC)  # dsize is (w, h)


def _smooth_noise(rng: np.random.Generator, count: int, cells: int) -> np.ndarray:
    """(count, 28, 28) random fields varying over about 28 / cells pixels."""
    grid = rng.random((count, cells, cells), dtype=np.float32)
    up = _upsampler(cells)
    return up @ grid @ up.T


def _centres(pixels: np.ndarray) -> np.ndarray:
    """(N, 2) centres of mass as (x, y), the middle for a blank image."""
    mass = pixels.sum(axis=(1, 2))
    axis = np.arange(SIDE, dtype=np.float32)
    safe = np.where(mass > 0, mass, 1)
    x = (pixels.sum(axis=1) @ axis) / safe
    y = (pixels.sum(axis=2) @ axis) / safe
    middle = (SIDE - 1) / 2
    return np.stack([np.where(mass > 0, x, middle), np.where(mass > 0, y, middle)], axis=1)


def _affine(images: np.ndarray, matrices: np.ndarray, flags: int) -> np.ndarray:
    """Each image mapped by its own (2, 3) affine matrix (on (x, y), from the image to
    the result), black where nothing maps."""
    out = np.empty_like(images)
    for i, (image, matrix) in enumerate(zip(images, matrices.astype(np.float32), strict=True)):
        out[i] = cv2.warpAffine(image, matrix, (SIDE, SIDE), flags=flags, borderValue=0)
    return out


def _warped(pixels: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Each image mapped by its own 2x2 ``linear`` ((N, 2, 2), on (x, y)) about its centre
    of mass, so the digit stays where it was."""
    centres = _centres(pixels)  # (N, 2)
    shift = centres - np.einsum("nij,nj->ni", linear, centres)
    return _affine(pixels, np.concatenate([linear, shift[:, :, None]], axis=2), cv2.INTER_LINEAR)


def _signs(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=count)


# ----- noise --------------------------------------------------------------------------------


def gaussian(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Sensor noise: every pixel plus Gaussian noise of 0.4 x severity of full scale."""
    noise = rng.standard_normal(digits.shape, dtype=np.float32)
    return grey_levels(unit_pixels(digits) + np.float32(0.4 * severity) * noise)


def shot(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """A dim photo of the page: Poisson photon counts, 8 / severity^2 photons for white
    paper. Paper is bright and ink dark in the photo, so the noise is strongest on the
    background here (black = paper) and weakest on the ink."""
    photons = 8.0 / severity**2
    page = 1 - unit_pixels(digits)  # the page as photographed: dark ink on light paper
    counted = rng.poisson(page * photons).astype(np.float32) / np.float32(photons)
    return grey_levels(1 - counted)


def impulse(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Salt and pepper: 0.2 x severity of the pixels set to black or white, half each."""
    out = digits.copy()
    hit = rng.random(digits.shape) < 0.2 * severity
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)
    return out


# ----- blur ---------------------------------------------------------------------------------


def _segment_kernel(length: float, angle: float) -> np.ndarray:
    """An anti-aliased line of ``length`` pixels through the kernel's centre at
    ``angle`` radians, summing to 1."""
    radius = math.ceil(length / 2)
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float32)
    along = x * math.cos(angle) + y * math.sin(angle)
    across = -x * math.sin(angle) + y * math.cos(angle)
    beyond = np.maximum(np.abs(along) - length / 2, 0)  # past the segment's ends
    weight = np.clip(1 - np.hypot(across, beyond), 0, 1)
    return weight / weight.sum()


def motion(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """A shaken camera: each digit smeared along a line 8 x severity pixels long at a
    random angle."""
    angles = rng.uniform(0, math.pi, size=len(digits))
    kernels = [_segment_kernel(8 * severity, float(angle)) for angle in angles]
    return grey_levels(_filtered(unit_pixels(digits), kernels))


def defocus(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Out of focus: each pixel spread over a disc of radius 3 x severity pixels."""
    radius = 3 * severity
    reach = math.ceil(radius)
    y, x = np.mgrid[-reach : reach + 1, -reach : reach + 1].astype(np.float32)
    disc = np.clip(radius + 0.5 - np.hypot(x, y), 0, 1)  # anti-aliased rim
    return grey_levels(_filtered(unit_pixels(digits), [disc / disc.sum()]))


GLASS_ROUNDS = 2  # rounds of local shuffling before the blur


def glass(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Seen through frosted glass: GLASS_ROUNDS rounds in which every pixel takes the value
    of a neighbour at a random offset (normal, 1.2 x severity pixels along each axis,
    rounded, at most 2), then a Gaussian blur of 0.3 + 0.5 x severity pixels."""
    pixels = unit_pixels(digits)
    count = len(pixels)
    rows, cols = np.indices((SIDE, SIDE))
    which = np.arange(count)[:, None, None]
    for _ in range(GLASS_ROUNDS):
        offsets = rng.standard_normal((2, count, SIDE, SIDE), dtype=np.float32)
        step = np.clip(np.round(1.2 * severity * offsets), -2, 2).astype(int)
        pixels = pixels[
            which, np.clip(rows + step[0], 0, SIDE - 1), np.clip(cols + step[1], 0, SIDE - 1)
        ]
    return grey_levels(_gaussian(pixels, 0.3 + 0.5 * severity))


# ----- geometry (each digit turned about its centre of mass, so it stays in frame) ----------


def shear(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Slanted: sheared by 0.6 x severity (x moves by that times y, or y by x), the
    direction and sign at random."""
    count = len(digits)
    amount = np.float32(0.6 * severity) * _signs(rng, count)
    sideways = rng.random(count) < 0.5
    linear = np.tile(np.eye(2, dtype=np.float32), (count, 1, 1))
    linear[sideways, 0, 1] = amount[sideways]  # x' = x + k y
    linear[~sideways, 1, 0] = amount[~sideways]  # y' = y + k x
    return grey_levels(_warped(unit_pixels(digits), linear))


def scale(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Too small or too large: scaled by 1 - 0.5 x severity or 1 + 0.5 x severity, either
    at random (a full-size MNIST digit, 20 pixels, grows to fill the frame at 0.8)."""
    factors = 1 + np.float32(0.5 * severity) * _signs(rng, len(digits))
    linear = factors[:, None, None] * np.eye(2, dtype=np.float32)
    return grey_levels(_warped(unit_pixels(digits), linear))


def rotation(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Turned by 50 x severity degrees, clockwise or counter-clockwise at random."""
    radians = np.radians(50 * severity) * _signs(rng, len(digits))
    cos, sin = np.cos(radians), np.sin(radians)
    linear = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)  # (N, 2, 2)
    return grey_levels(_warped(unit_pixels(digits), linear))


OVERHANG = 2  # pixels of a translated digit's ink that may leave the frame


def translation(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Off centre: moved 8 x severity pixels in a random direction, in whole pixels, then
    pulled back along each axis so that at most OVERHANG pixels of ink leave the frame."""
    ink = digits > INK * LEVELS
    in_cols, in_rows = ink.any(axis=1), ink.any(axis=2)  # (N, 28) each
    angles = rng.uniform(0, 2 * math.pi, size=len(digits))
    moves = []
    for along, unit in ((in_cols, np.cos(angles)), (in_rows, np.sin(angles))):
        first = along.argmax(axis=1)  # the ink's first column (row)
        last = SIDE - 1 - along[:, ::-1].argmax(axis=1)
        move = np.round(8 * severity * unit)
        moves.append(np.clip(move, -first - OVERHANG, SIDE - 1 - last + OVERHANG))
    identity = np.tile(np.eye(2, dtype=np.float32), (len(digits), 1, 1))
    matrices = np.concatenate([identity, np.stack(moves, 1)[:, :, None]], axis=2)  # (N, 2, 3)
    return _affine(digits, matrices, cv2.INTER_NEAREST)  # whole pixels: nothing resampled


# ----- intensity ----------------------------------------------------------------------------


def brightness(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """A grey background: severity / 3 of full scale (0.2 at the report's severity) added
    to every pixel; full ink stays full."""
    return grey_levels(unit_pixels(digits) + np.float32(severity / 3))


def contrast(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Washed out: every pixel pulled toward mid grey, its distance from it kept at
    1 - 0.8 x severity."""
    return grey_levels(0.5 + (unit_pixels(digits) - 0.5) * np.float32(1 - 0.8 * severity))


def fog(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Grey clouds: smooth random fields (features of about 7 and 3.5 pixels), scaled to
    0..0.7 x severity of full scale in each image, added."""
    count = len(digits)
    clouds = _smooth_noise(rng, count, 4) + 0.5 * _smooth_noise(rng, count, 8)
    low = clouds.min(axis=(1, 2), keepdims=True)
    span = np.maximum(clouds.max(axis=(1, 2), keepdims=True) - low, 1e-6)
    return grey_levels(unit_pixels(digits) + np.float32(0.7 * severity) * (clouds - low) / span)


# ----- occlusion (marks as bright as ink: what a pen, a ruled line or a blot leaves) --------


def _draw(digits: np.ndarray, strokes: Callable[[np.ndarray, int], None]) -> np.ndarray:
    """Each digit with ``strokes(canvas, i)`` drawn over it (brightest of the two)."""
    marks = np.zeros_like(digits)
    for i in range(len(digits)):
        strokes(marks[i], i)
    return np.maximum(digits, marks)


SUBPIXEL = 4  # OpenCV's fixed-point bits for anti-aliased drawing at fractional positions


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * 2**SUBPIXEL).astype(np.int32)


def stripes(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Ruled paper: ceil(5 x severity) one-pixel horizontal lines across the whole image,
    evenly spaced from a random first row, at 0.5 + 0.5 x severity of full ink."""
    count = math.ceil(5 * severity)
    spacing = SIDE / count
    first = rng.uniform(0, spacing, size=(len(digits), 1))
    rows = np.floor(first + spacing * np.arange(count)).astype(int)  # (N, count)
    marked = np.zeros((len(digits), SIDE), bool)
    np.put_along_axis(marked, rows, True, axis=1)
    level = np.uint8(round(255 * (0.5 + 0.5 * severity)))
    return np.maximum(digits, np.where(marked[:, :, None], level, 0).astype(np.uint8))


def lines(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Stray pen strokes: ceil(4 x severity) straight lines one pixel wide and 12 + 16 x
    severity pixels long, through random points of the middle 20x20, at random angles."""
    count, length = math.ceil(4 * severity), 12 + 16 * severity
    centres = rng.uniform(4, SIDE - 4, size=(len(digits), count, 2))
    angles = rng.uniform(0, math.pi, size=(len(digits), count))
    half = length / 2 * np.stack([np.cos(angles), np.sin(angles)], -1)
    ends = _fixed(np.stack([centres - half, centres + half], 2))  # (N, count, 2 ends, (x, y))

    def strokes(canvas: np.ndarray, i: int) -> None:
        for start, end in ends[i]:
            cv2.line(canvas, start, end, 255, 1, cv2.LINE_AA, SUBPIXEL)

    return _draw(digits, strokes)


def zigzags(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Scribbles: ceil(3 x severity) zigzags of six teeth 3 pixels high, 14 + 8 x severity
    pixels long, one pixel wide, centred in the middle 20x20, at random angles."""
    count, length, teeth = math.ceil(3 * severity), 14 + 8 * severity, 6
    along = np.linspace(-length / 2, length / 2, teeth + 1)
    across = 1.5 * np.where(np.arange(teeth + 1) % 2, 1, -1)
    shape = np.stack([along, across], -1)  # (teeth + 1, 2): a horizontal zigzag
    angles = rng.uniform(0, math.pi, size=(len(digits), count))
    cos, sin = np.cos(angles)[..., None], np.sin(angles)[..., None]
    turned = np.stack(
        [cos * shape[:, 0] - sin * shape[:, 1], sin * shape[:, 0] + cos * shape[:, 1]], -1
    )  # (N, count, teeth + 1, 2)
    centres = rng.uniform(4, SIDE - 4, size=(len(digits), count, 1, 2))
    paths = _fixed(turned + centres)

    def strokes(canvas: np.ndarray, i: int) -> None:
        cv2.polylines(canvas, list(paths[i]), False, 255, 1, cv2.LINE_AA, SUBPIXEL)

    return _draw(digits, strokes)


def spatter(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Ink spatter: blots and specks covering 0.1 x severity of each image, where a
    smooth random field (features of about 3 pixels) is highest, with soft edges."""
    field = _smooth_noise(rng, len(digits), 10)
    level = np.quantile(field, 1 - 0.1 * severity, axis=(1, 2), keepdims=True)
    blots = np.clip((field - level) / np.float32(0.05), 0, 1)  # soft over ~0.05 of the field
    return np.maximum(digits, grey_levels(blots))


# ----- edges --------------------------------------------------------------------------------

OUTLINE_ZOOM = 3  # the outline is traced at 3x, so that strokes a few pixels wide stay hollow


def outline(digits: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Outlined strokes: the ink's internal morphological gradient (the ink minus its
    erosion by a 3x3 cross), traced at OUTLINE_ZOOM times the size where the ink is the
    bicubic enlargement above half brightness, then shrunk back and brightened by
    OUTLINE_ZOOM: a one-pixel line just inside each edge of a stroke. The filled stroke
    shows through at 1 - severity of its brightness."""
    big, zoom = SIDE * OUTLINE_ZOOM, OUTLINE_ZOOM
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    rims = np.empty((len(digits), big, big), np.float32)
    for i, digit in enumerate(digits):
        ink = (cv2.resize(digit, (big, big), interpolation=cv2.INTER_CUBIC) > 127).astype(np.uint8)
        rims[i] = ink - cv2.erode(ink, cross)  # (84, 84) 0/1, one pixel wide at 3x
    traced = rims.reshape(-1, SIDE, zoom, SIDE, zoom).sum(axis=(2, 4)) / zoom  # 3x3 blocks
    return grey_levels(np.maximum(traced, (1 - severity) * unit_pixels(digits)))


FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian", "shot", "impulse"),
    "blur": ("motion", "defocus", "glass"),
    "geometry": ("shear", "scale", "rotation", "translation"),
    "intensity": ("brightness", "contrast", "fog"),
    "occlusion": ("stripes", "lines", "zigzags", "spatter"),
    "edges": ("outline",),
}

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian": gaussian,
    "shot": shot,
    "impulse": impulse,
    "motion": motion,
    "defocus": defocus,
    "glass": glass,
    "shear": shear,
    "scale": scale,
    "rotation": rotation,
    "translation": translation,
    "brightness": brightness,
    "contrast": contrast,
    "fog": fog,
    "stripes": stripes,
    "lines": lines,
    "zigzags": zigzags,
    "spatter": spatter,
    "outline": outline,
}


def corruption_rng(name: str, seed: int) -> np.random.Generator:
    """The Generator of one corruption: seeded by ``seed`` and a stable hash of its name
    (CRC-32, not Python's salted hash()), apart from pipeline.photos' kinds of that name."""
    return np.random.default_rng([seed, zlib.crc32(f"corruptions/{name}".encode())])


def corrupt(name: str, digits: np.ndarray, seed: int, severity: float) -> np.ndarray:
    """(N, 28, 28) uint8 digits -> the same digits with corruption ``name`` at
    ``severity``; the same arguments give the same bytes."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if not 0 < severity <= 1:
        raise ValueError(f"severity must lie in (0, 1]; got {severity}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    digits = np.asarray(digits)
    if digits.dtype != np.uint8 or digits.ndim != 3 or digits.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"digits must be (N, 28, 28) uint8; got {digits.shape} {digits.dtype}")
    return CORRUPTIONS[name](digits, corruption_rng(name, int(seed)), float(severity))


# ----- the service's two ways in ------------------------------------------------------------


def as_arrays(digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1], as POST /predict reads an
    array sent with dtype uint8."""
    return preprocess.digits_from_array(digits, "uint8")


def as_png(digit: np.ndarray, side: int = SIDE) -> bytes:
    """(28, 28) uint8 MNIST polarity -> PNG bytes of the digit as people draw it: dark
    ink on white paper, ``side`` pixels square (bicubic when enlarged)."""
    image = Image.fromarray(255 - digit)
    if side != SIDE:
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # quick: the files are throwaway
    return buffer.getvalue()


def as_images(digits: np.ndarray, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 -> ((N, 28, 28) uint8 what POST /predict_image's preprocessing
    makes of each digit sent as a PNG (``as_png``), zeros where it refuses one; (N,) bool,
    refused: the service would answer those with a 400)."""
    seen = np.zeros((len(digits), SIDE, SIDE), np.uint8)
    refused = np.zeros(len(digits), bool)
    for i, digit in enumerate(digits):
        try:
            seen[i] = preprocess.digit_from_image(as_png(digit, side))
        except preprocess.BadInput:
            refused[i] = True
    return seen, refused


# ----- the command: a picture of every corruption -------------------------------------------

ZOOM = 3  # screen pixels per digit pixel in the picture
GAP = 6  # pixels between digits


def _strip(digits: np.ndarray, refused: np.ndarray | None = None) -> np.ndarray:
    """(K, 28, 28) -> one row of enlarged digits on a white strip; a refused one is grey
    with a dark cross."""
    cell = SIDE * ZOOM
    tiles = []
    for i, digit in enumerate(digits):
        tile = np.kron(digit, np.ones((ZOOM, ZOOM), np.uint8))
        if refused is not None and refused[i]:
            tile = np.full((cell, cell), 128, np.uint8)
            diagonal = np.arange(cell)
            tile[diagonal, diagonal] = tile[diagonal, cell - 1 - diagonal] = 40
        tiles += [tile, np.full((cell, GAP), 255, np.uint8)]
    return np.concatenate(tiles, axis=1)


def picture(digits: np.ndarray, severity: float, seed: int) -> bytes:
    """PNG: a panel per family; a row per corruption: the clean digits, corrupted, and
    what /predict_image's preprocessing makes of the corrupted ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = _strip(digits)
    spacer = np.full((clean.shape[0], 4 * GAP), 255, np.uint8)
    heights = [len(names) for names in FAMILIES.values()]
    width = 3 * clean.shape[1] + 2 * spacer.shape[1]
    fig, axes = plt.subplots(
        len(FAMILIES),
        1,
        figsize=(
            width / 100 + 1.2,
            sum(heights) * (clean.shape[0] + GAP) / 100 + 0.5 * len(heights),
        ),
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (family, names) in zip(axes, FAMILIES.items(), strict=True):
        rows = []
        for name in names:
            spoilt = corrupt(name, digits, seed, severity)
            seen, refused = as_images(spoilt)
            row = np.concatenate([clean, spacer, _strip(spoilt), spacer, _strip(seen, refused)], 1)
            rows += [row, np.full((GAP, row.shape[1]), 255, np.uint8)]
        ax.imshow(np.concatenate(rows), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        step = clean.shape[0] + GAP
        ax.set_yticks([step * k + clean.shape[0] / 2 for k in range(len(names))], list(names))
        ax.set_xticks(
            [clean.shape[1] * (k + 0.5) + spacer.shape[1] * k for k in range(3)],
            ["clean", f"corrupted (severity {severity:g})", "as /predict_image sees it"],
        )
        ax.xaxis.tick_top()
        ax.set_title(family, loc="left", fontsize=10, fontweight="bold")
        ax.tick_params(length=0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def load_digits(source: Path, count: int) -> np.ndarray:
    """The first ``count`` digits of an .npz (its ``images``, or its only array), an idx
    file (gzipped or not), or the test images of an MNIST mirror folder."""
    if source.is_dir():
        source = source / "t10k-images-idx3-ubyte.gz"
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as data:
            key = "images" if "images" in data.files else data.files[0]
            images = data[key]
    else:
        raw = source.read_bytes()
        raw = gzip.decompress(raw) if source.suffix == ".gz" else raw
        images = parse_idx(raw, expected_magic=IMAGES_MAGIC, source=str(source))
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise ValueError(
            f"{source}: images are {images.shape} {images.dtype}, not (N, 28, 28) uint8"
        )
    return images[:count]


def main(argv: list[str] | None = None) -> None:
    default_source = Path(
        os.environ.get("MNIST_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "mnist"
    )
    p = argparse.ArgumentParser(
        prog="python -m pipeline.corruptions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--severity", type=float, default=REPORT_SEVERITY, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--count", type=int, default=4, help="digits per row (default: %(default)s)")
    p.add_argument(
        "--digits",
        type=Path,
        default=default_source,
        help="an .npz, an idx file or an MNIST mirror folder "
        "(default: $MNIST_MIRROR or %(default)s)",
    )
    args = p.parse_args(argv)
    try:
        if not 1 <= args.count <= 20:
            raise ValueError(f"--count must lie in 1..20; got {args.count}")
        data = picture(load_digits(args.digits, args.count), args.severity, args.seed)
    except (ValueError, FileNotFoundError, StageError) as error:
        print(f"corruptions: error: {error}", file=sys.stderr)
        sys.exit(1)
    atomic.write_bytes(args.out, data)
    print(f"corruptions: wrote {args.out}")


if __name__ == "__main__":
    main()
