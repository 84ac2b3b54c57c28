"""The MNIST arrays' scale and subsets, shared by split, normalise, train, evaluate and
the robustness sets.

In: images (N, ...) uint8 grey levels and labels (N,). Out: the images as floats in [0, 1]
(the pipeline's one definition of a pixel's scale; the service's is serving/contract.py)
and back, and stratified, seeded subsets in the original order (a subset is a set, not a
shuffle).
"""

from __future__ import annotations

import numpy as np

Split = tuple[np.ndarray, np.ndarray]  # (images (N, 28, 28) uint8, labels (N,) uint8)
LEVELS = 255  # an MNIST pixel's grey levels: 0 background .. 255 full ink


def unit_pixels(images: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """uint8 grey levels -> floats in [0, 1] of ``dtype``, same shape: where every model
    input starts (standardised after, if normalise says so)."""
    return images.astype(dtype) / dtype(LEVELS)


def grey_levels(pixels: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 grey levels (rounded, clipped), same shape."""
    return np.round(np.clip(pixels, 0, 1) * LEVELS).astype(np.uint8)


def stratified_take(images: np.ndarray, labels: np.ndarray, size: int, seed: int) -> Split:
    """A stratified random subset of ``size`` items (all of them if size >= N)."""
    if size >= len(labels):
        return images, labels
    from sklearn.model_selection import train_test_split  # slow to import: only when used

    index = np.arange(len(labels))
    taken, _ = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
    taken.sort()
    return images[taken], labels[taken]


def choose(count: int, wanted: int, seed: int) -> np.ndarray:
    """Sorted positions of ``wanted`` of ``count`` items, drawn with ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(count, wanted, replace=False))
