"""Training-time corruptions: the spoilt digits a network should learn to read.

In: a batch of pixels (B, 1, 28, 28) float32 in [0, 1] (MNIST polarity, light ink on
black), the share of images to spoil and a seeded torch Generator. Out: the batch with
that share of its images spoilt, each in one way drawn at random, at a strength drawn at
random: noise (Gaussian, salt and pepper), blur (Gaussian, motion, pixel jitter), a grey
offset, lower contrast, fog, strokes across the digit (straight lines, stripes, zigzags),
blots, and the digit drawn as its outline.

Everything is drawn from the generator on the CPU, so the same seed gives the same batch
on every device. These are this module's own renderings with their own random strengths:
the robustness report (pipeline/corruptions.py) renders its corruptions with other code,
other seeds and fixed severities, so it measures what a network learnt, not what it saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

SIDE = 28
Spoil = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(low: float, high: float, n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, 1, 1) strengths drawn in [low, high)."""
    return (low + (high - low) * torch.rand(n, generator=g)).view(n, 1, 1, 1)


def gaussian_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + _uniform(0.05, 0.4, len(x), g) * torch.randn(x.shape, generator=g)


def salt_and_pepper(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    hit = torch.rand(x.shape, generator=g) < _uniform(0.02, 0.2, len(x), g)
    salt = (torch.rand(x.shape, generator=g) < 0.5).float()
    return torch.where(hit, salt, x)


def _blur_with(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each image convolved with one (k, k) kernel summing to 1."""
    k = kernel.shape[-1]
    return F.conv2d(F.pad(x, [k // 2] * 4, mode="replicate"), kernel.view(1, 1, k, k))


def gaussian_blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    sigma = 0.5 + 1.3 * torch.rand(1, generator=g).item()
    r = torch.arange(-3, 4, dtype=torch.float32)
    line = torch.exp(-(r**2) / (2 * sigma**2))
    kernel = torch.outer(line, line)
    return _blur_with(x, kernel / kernel.sum())


def motion_blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    length = 2 + 5 * torch.rand(1, generator=g).item()  # px
    angle = math.pi * torch.rand(1, generator=g).item()
    r = torch.arange(-4, 5, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    along = xx * math.cos(angle) + yy * math.sin(angle)
    across = -xx * math.sin(angle) + yy * math.cos(angle)
    kernel = ((along.abs() <= length / 2) & (across.abs() <= 0.5)).float()
    return _blur_with(x, kernel / kernel.sum())


def pixel_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each pixel taken from a neighbour up to ~1.5 px away (frosted glass)."""
    n = len(x)
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, SIDE, SIDE], align_corners=False)
    offsets = torch.randn((n, SIDE, SIDE, 2), generator=g) * _uniform(0.3, 1.2, n, g).view(
        n, 1, 1, 1
    )
    grid = base + offsets * (2 / SIDE)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def grey_offset(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + _uniform(0.05, 0.5, len(x), g)


def low_contrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    level = _uniform(0.2, 0.8, len(x), g)
    return level + (x - level) * _uniform(0.15, 0.7, len(x), g)


def fog(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    cells = int(torch.randint(3, 8, (1,), generator=g))
    clouds = torch.rand((n, 1, cells, cells), generator=g)
    clouds = F.interpolate(clouds, size=(SIDE, SIDE), mode="bicubic", align_corners=False)
    return x + _uniform(0.1, 0.6, n, g) * clouds.clamp(0, 1)


def _strokes(points: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(n, L, V, 2) polylines of V vertices in pixels, (n, 1, 1) half-widths -> (n, 1, 28,
    28) in [0, 1]: 1 on the strokes, fading out over a pixel at their edges."""
    n = points.shape[0]
    r = torch.arange(SIDE, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    p = torch.stack([xx, yy], -1).view(1, 1, 1, SIDE * SIDE, 2)  # (1, 1, 1, P, 2)
    a, b = points[:, :, :-1, None, :], points[:, :, 1:, None, :]  # (n, L, V-1, 1, 2)
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    distance = (p - (a + t[..., None] * ab)).norm(dim=-1)  # (n, L, V-1, P)
    nearest = distance.flatten(1, 2).amin(1)  # (n, P)
    return (1 - (nearest - width.view(n, 1)).clamp(0, 1)).view(n, 1, SIDE, SIDE)


def _draw(x: torch.Tensor, strokes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    brightness = _uniform(0.4, 1.0, len(x), g)
    return torch.maximum(x, strokes * brightness)


def straight_lines(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, lines = len(x), int(torch.randint(1, 4, (1,), generator=g))
    ends = torch.rand((n, lines, 2, 2), generator=g) * SIDE
    return _draw(x, _strokes(ends, 0.3 + 0.7 * torch.rand((n, 1, 1), generator=g)), g)


def stripes(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A few thin lines from edge to edge, nearly level."""
    n, lines = len(x), int(torch.randint(1, 6, (1,), generator=g))
    heights = torch.rand((n, lines, 1), generator=g) * SIDE
    tilt = (torch.rand((n, lines, 1), generator=g) - 0.5) * 4  # px over the width
    left = torch.cat([torch.full_like(heights, -1.0), heights - tilt], -1)
    right = torch.cat([torch.full_like(heights, SIDE + 1.0), heights + tilt], -1)
    ends = torch.stack([left, right], 2)  # (n, lines, 2, 2)
    return _draw(x, _strokes(ends, 0.2 + 0.6 * torch.rand((n, 1, 1), generator=g)), g)


def zigzag(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, teeth = len(x), int(torch.randint(3, 9, (1,), generator=g))
    start, end = torch.rand((n, 2, 2), generator=g).unbind(1)
    steps = torch.linspace(0, 1, teeth + 1).view(1, -1, 1)
    path = (start * SIDE)[:, None] + steps * ((end - start) * SIDE)[:, None]  # (n, V, 2)
    direction = (end - start) / (end - start).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    normal = torch.stack([-direction[:, 1], direction[:, 0]], -1)[:, None]  # (n, 1, 2)
    sign = torch.tensor([(-1.0) ** i for i in range(teeth + 1)]).view(1, -1, 1)
    amplitude = 1 + 3 * torch.rand((n, 1, 1), generator=g)
    points = (path + sign * amplitude * normal)[:, None]  # (n, 1, V, 2)
    return _draw(x, _strokes(points, 0.3 + 0.5 * torch.rand((n, 1, 1), generator=g)), g)


def blots(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, count = len(x), int(torch.randint(2, 12, (1,), generator=g))
    r = torch.arange(SIDE, dtype=torch.float32) + 0.5
    centres = torch.rand((n, count, 2, 1, 1), generator=g) * SIDE
    radius = (0.5 + 2 * torch.rand((n, count, 1, 1), generator=g)) ** 2
    d2 = (r.view(1, 1, 1, SIDE) - centres[:, :, 0]) ** 2 + (
        r.view(1, 1, SIDE, 1) - centres[:, :, 1]
    ) ** 2
    spots = torch.exp(-d2 / (2 * radius)).amax(1, keepdim=True)  # (n, 1, 28, 28)
    return _draw(x, spots, g)


def outline(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The strokes' edges (dilation minus erosion), the filled stroke faintly behind."""
    edges = F.max_pool2d(x, 3, 1, 1) + F.max_pool2d(-x, 3, 1, 1)
    return edges + x * _uniform(0.0, 0.5, len(x), g)


SPOILS: tuple[Spoil, ...] = (
    gaussian_noise,
    salt_and_pepper,
    gaussian_blur,
    motion_blur,
    pixel_jitter,
    grey_offset,
    low_contrast,
    fog,
    straight_lines,
    stripes,
    zigzag,
    blots,
    outline,
)


def spoil(pixels: torch.Tensor, share: float, g: torch.Generator) -> torch.Tensor:
    """(B, 1, 28, 28) pixels in [0, 1] -> the same with about ``share`` of the images
    spoilt, each by one of SPOILS drawn at random; clipped to [0, 1]."""
    n = len(pixels)
    chosen = torch.rand(n, generator=g) < share
    kinds = torch.randint(len(SPOILS), (n,), generator=g)
    out = pixels.clone()
    for k, fn in enumerate(SPOILS):
        rows = (chosen & (kinds == k)).nonzero().flatten()
        if len(rows):
            out[rows] = fn(pixels[rows], g).clamp(0, 1)
    return out
