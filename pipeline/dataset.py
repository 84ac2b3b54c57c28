"""Subsets of the MNIST arrays, shared by split, train and the robustness sets.

In: images (N, ...) and labels (N,). Out: a stratified, seeded subset, in the original
order (a subset is a set, not a shuffle).
"""

from __future__ import annotations

import numpy as np

Split = tuple[np.ndarray, np.ndarray]  # (images (N, 28, 28) uint8, labels (N,) uint8)


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
