"""pipeline/corruptions.py on real test digits: every corruption is deterministic, keeps
the shape, changes the digits by a sane amount that grows with the severity and leaves
them recognisable; brightness and outline do what they say; the two ways into the
service give what the model takes; the command draws its picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import corruptions, photos
from pipeline.corruptions import CORRUPTIONS, FAMILIES, REPORT_SEVERITY, corrupt

# These draw nothing at random: the seed cannot change them.
SEEDLESS = {"defocus", "brightness", "contrast", "outline"}


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return mnist[2][:64]  # (64, 28, 28) uint8, the first test digits


def change(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute change per pixel, as a fraction of full scale."""
    return float(np.abs(after.astype(np.float64) - before).mean() / 255)


def correlations(corrupted: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """(N, N) correlation of each corrupted digit with each clean one."""

    def unit(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float64)
        flat -= flat.mean(axis=1, keepdims=True)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    return unit(corrupted) @ unit(clean).T


def test_the_registry_lists_every_corruption_once() -> None:
    names = [name for family in FAMILIES.values() for name in family]
    assert len(names) == len(set(names)) == len(CORRUPTIONS)
    assert set(names) == set(CORRUPTIONS)
    assert set(FAMILIES) == {"noise", "blur", "geometry", "intensity", "occlusion", "edges"}
    assert 0 < REPORT_SEVERITY < 1


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_the_same_seed_gives_the_same_bytes(name, digits) -> None:
    before = digits.copy()
    first = corrupt(name, digits, seed=3, severity=REPORT_SEVERITY)
    assert first.shape == digits.shape and first.dtype == np.uint8
    assert np.array_equal(first, corrupt(name, digits, seed=3, severity=REPORT_SEVERITY))
    other = corrupt(name, digits, seed=4, severity=REPORT_SEVERITY)
    assert np.array_equal(first, other) == (name in SEEDLESS)
    assert np.array_equal(digits, before)  # the input is left as it was


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_the_change_is_sane_at_the_report_severity_and_grows_with_it(name, digits) -> None:
    mild, reported, full = (corrupt(name, digits, 0, severity) for severity in (0.3, 0.6, 1.0))
    amounts = [change(digits, corrupted) for corrupted in (mild, reported, full)]
    assert 0.02 < amounts[1] < 0.35, amounts
    assert amounts[0] < amounts[1] < amounts[2], amounts


@pytest.mark.parametrize(
    "name", [name for family, names in FAMILIES.items() if family != "geometry" for name in names]
)
def test_the_digit_stays_recognisable_at_the_report_severity(name, digits) -> None:
    # Each corrupted digit still looks more like its own clean self than like the other
    # digits, pixel for pixel. (Geometry moves the ink, so pixels do not line up: below.)
    similar = correlations(corrupt(name, digits, 0, REPORT_SEVERITY), digits)
    own = np.diag(similar)
    others = (similar.sum(axis=1) - own) / (len(digits) - 1)
    assert (own > others).mean() >= 0.95


@pytest.mark.parametrize("name", FAMILIES["geometry"])
def test_geometry_keeps_the_digit_in_frame(name, digits) -> None:
    moved = corrupt(name, digits, 0, REPORT_SEVERITY)
    ink = digits.astype(np.float64).sum(axis=(1, 2))
    kept = moved.astype(np.float64).sum(axis=(1, 2)) / ink
    assert kept.min() > 0.4 and kept.max() < 2.0, (kept.min(), kept.max())  # scale: 0.7² to 1.3²
    if name in ("shear", "rotation", "translation"):  # neither grown nor shrunk
        assert np.median(kept) > 0.9


def test_brightness_lifts_the_background_and_leaves_the_ink(digits) -> None:
    bright = corrupt("brightness", digits, 0, REPORT_SEVERITY)
    assert (bright[digits == 255] == 255).all()
    assert (bright[digits == 0] == round(255 * REPORT_SEVERITY / 3)).all()  # +0.2 of full scale
    assert (bright >= digits).all()


def test_contrast_pulls_toward_mid_grey(digits) -> None:
    dull = corrupt("contrast", digits, 0, REPORT_SEVERITY).astype(int)
    assert dull.min() > 0 and dull.max() < 255
    assert (np.abs(dull - 127.5) <= np.abs(digits.astype(int) - 127.5)).all()


def test_outline_keeps_fewer_ink_pixels_than_the_digit_and_only_near_it(digits) -> None:
    outlined = corrupt("outline", digits, 0, 1.0)
    lit, drawn = digits > 0, outlined > 0
    assert (drawn.sum(axis=(1, 2)) < lit.sum(axis=(1, 2))).all()  # every digit: fewer pixels
    ink, edge = digits > 127, outlined > 127
    assert edge.sum() < 0.85 * ink.sum()  # and much less full ink (a "1" may keep as much)
    assert (edge & ink).sum() > 0.5 * edge.sum()  # most of the outline lies on the stroke...
    near = np.pad(digits > 0, ((0, 0), (1, 1), (1, 1)))
    grown = np.zeros_like(digits, bool)
    for dy in range(3):
        for dx in range(3):
            grown |= near[:, dy : dy + 28, dx : dx + 28]
    assert not (edge & ~grown).any()  # ...and none of it beyond a pixel from the digit


def test_noise_reaches_the_background_and_occlusion_marks_it(digits) -> None:
    background = digits == 0
    for name in ("gaussian", "shot", "impulse", "fog", "stripes", "lines", "spatter"):
        corrupted = corrupt(name, digits, 0, REPORT_SEVERITY)
        assert (corrupted[background] > 0).mean() > 0.02, name


def test_a_corruptions_generator_is_its_own() -> None:
    draw = corruptions.corruption_rng("rotation", 0).random()
    assert draw == corruptions.corruption_rng("rotation", 0).random()
    assert draw != corruptions.corruption_rng("shear", 0).random()
    assert draw != photos.kind_rng(0, "rotation").random()  # the photo kind of that name


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("blurry", 0, 0.6), "unknown corruption"),
        (("gaussian", 0, 0.0), "severity"),
        (("gaussian", 0, 1.5), "severity"),
        (("gaussian", -1, 0.6), "seed"),
    ],
)
def test_bad_arguments_are_named(arguments, message, digits) -> None:
    name, seed, severity = arguments
    with pytest.raises(ValueError, match=message):
        corrupt(name, digits, seed, severity)
    with pytest.raises(ValueError, match="28, 28"):
        corrupt("gaussian", digits.reshape(-1, 784), 0, 0.6)


# --- the service's two ways in --------------------------------------------------------


def test_as_arrays_gives_what_predict_takes(digits) -> None:
    pixels = corruptions.as_arrays(corrupt("fog", digits, 0, REPORT_SEVERITY))
    assert pixels.shape == (len(digits), 1, 28, 28) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert np.allclose(corruptions.as_arrays(digits)[:, 0], digits / 255)


def test_as_images_sends_dark_ink_on_white_and_gets_the_digit_back(digits) -> None:
    image = Image.open(io.BytesIO(corruptions.as_png(digits[0])))
    assert image.format == "PNG" and image.size == (28, 28)
    assert np.array_equal(np.asarray(image), 255 - digits[0])
    with_blank = np.concatenate([digits[:8], np.zeros((1, 28, 28), np.uint8)])
    seen, refused = corruptions.as_images(with_blank)
    assert seen.shape == (9, 28, 28) and seen.dtype == np.uint8
    assert refused.shape == (9,) and refused.dtype == bool
    assert refused.tolist() == [False] * 8 + [True]  # a blank page: the service's 400
    assert not seen[8].any()
    # Clean MNIST digits are already framed as the preprocessing frames them.
    assert np.diag(correlations(seen[:8], digits[:8])).min() > 0.8


# --- the command ----------------------------------------------------------------------


def test_the_command_draws_every_family(tmp_path, digits) -> None:
    source = tmp_path / "few.npz"
    np.savez(source, images=digits[:2])
    out = tmp_path / "corruptions.png"
    corruptions.main(["--out", str(out), "--digits", str(source), "--count", "2"])
    picture = Image.open(out)
    assert picture.format == "PNG"
    assert picture.height > picture.width  # a panel per family, stacked


def test_the_command_names_a_missing_source(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        corruptions.main(["--out", str(tmp_path / "x.png"), "--digits", str(tmp_path / "no.npz")])
    assert stop.value.code == 1
    assert "corruptions: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
