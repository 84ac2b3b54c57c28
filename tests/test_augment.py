"""Training-time corruptions (pipeline/augment.py) and the per-image contrast stretch
(pipeline/models.py) that lets a network read a spoilt digit as the same digit."""

from __future__ import annotations

import pytest
import torch

from pipeline import augment, models


@pytest.fixture(scope="module")
def pixels(test_digits) -> torch.Tensor:
    images, _ = test_digits
    return torch.from_numpy(images[:64].copy()).float().unsqueeze(1) / 255  # (64, 1, 28, 28)


@pytest.mark.parametrize("spoil", augment.SPOILS, ids=lambda f: f.__name__)
def test_each_spoil_changes_the_digits_and_stays_seeded(spoil, pixels: torch.Tensor) -> None:
    first = spoil(pixels, torch.Generator().manual_seed(1)).clamp(0, 1)
    again = spoil(pixels, torch.Generator().manual_seed(1)).clamp(0, 1)
    assert first.shape == pixels.shape and torch.equal(first, again)
    change = (first - pixels).abs().mean().item()
    assert 0.005 < change < 0.5, change


def test_spoil_touches_about_its_share_and_leaves_the_rest(pixels: torch.Tensor) -> None:
    out = augment.spoil(pixels, 0.5, torch.Generator().manual_seed(0))
    changed = (out != pixels).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75 and out.min() >= 0 and out.max() <= 1
    assert torch.equal(augment.spoil(pixels, 0.0, torch.Generator().manual_seed(0)), pixels)


def test_per_image_contrast_undoes_grey_offsets_and_low_contrast(pixels: torch.Tensor) -> None:
    stretch = models.PerImageContrast()
    reference = stretch(pixels)
    offset = (pixels + 0.2).clamp(max=1)  # a flat grey background, ink unchanged
    faded = 0.5 + (pixels - 0.5) * 0.4  # pulled toward mid grey
    standardised = (pixels - 0.13) / 0.31  # the same images, as training feeds them
    for same in (faded, standardised):
        assert torch.allclose(stretch(same), reference, atol=1e-4)
    # The offset clips the brightest ink at 1: equal up to that, in pixel units.
    assert (stretch(offset) - reference).abs().mean() * stretch.STD < 0.02
