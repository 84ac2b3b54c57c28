"""Real MNIST digits rendered as images a person might send: bigger, inverted, in
colour, off-centre, PNG or JPEG. In: a (28, 28) uint8 digit. Out: encoded image bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def render(
    digit: np.ndarray,
    *,
    size: int = 200,
    dark_on_light: bool = True,
    colour: bool = False,
    offset: tuple[int, int] = (0, 0),
    image_format: str = "PNG",
) -> bytes:
    """An MNIST digit as a person might photograph or draw it: the 28x28 digit scaled up
    to fill about half of a size x size canvas, shifted by `offset` (x, y) pixels,
    optionally dark ink on light paper and in colour, encoded as PNG or JPEG."""
    ink = Image.fromarray(digit).resize((size // 2, size // 2), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(ink, ((size - ink.width) // 2 + offset[0], (size - ink.height) // 2 + offset[1]))
    grey = np.asarray(canvas).astype(np.float32) / 255  # ink strength 0..1
    if colour:  # blue-ish ink on cream paper (or pale yellow ink on navy)
        paper, pen = np.array([250, 240, 215.0]), np.array([20, 40, 160.0])
        if not dark_on_light:
            paper, pen = pen, paper
        pixels = paper * (1 - grey[..., None]) + pen * grey[..., None]
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    else:
        image = Image.fromarray(((1 - grey if dark_on_light else grey) * 255).astype(np.uint8), "L")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def image_variants(digit: np.ndarray) -> dict[str, bytes]:
    """The same digit rendered several ways a user might send it."""
    return {
        "png_dark_on_light": render(digit),
        "png_light_on_dark": render(digit, dark_on_light=False),
        "jpeg_colour": render(digit, colour=True, image_format="JPEG"),
        "png_colour_off_centre": render(digit, colour=True, offset=(45, -40)),
        "jpeg_off_centre_small": render(digit, size=120, offset=(-25, 20), image_format="JPEG"),
    }
