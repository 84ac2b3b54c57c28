"""Pictures as PNG files: curves, confusion heatmap, digit grids, weight tiles, embedding.

In: plain arrays and rows. Out: a PNG written atomically. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline import atomic


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def save_curves(rows: list[dict], path: Path, title: str) -> None:
    """Train vs validation loss and accuracy per epoch, side by side."""
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label="validation")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def save_iteration_loss(losses: list[float], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1)
    ax.set(xlabel="iteration", ylabel="training loss", title=f"{title}: loss per iteration")
    ax.grid(alpha=0.3)
    _save(fig, path)


def save_val_correct(rows: list[dict], path: Path, title: str, n_val: int) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["epoch"] for r in rows], [r["val_correct"] for r in rows], "o-")
    ax.set(
        xlabel="epoch",
        ylabel=f"validation correct (of {n_val})",
        title=f"{title}: validation correct per epoch",
    )
    ax.grid(alpha=0.3)
    _save(fig, path)


def save_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    """(10, 10) counts, rows = true label, columns = predicted."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > matrix.max() / 3 else "black",
        )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted",
        ylabel="true",
        title=f"{title}: confusion matrix (test)",
    )
    _save(fig, path)


def save_digit_grid(
    images: np.ndarray, true: np.ndarray, pred: np.ndarray, path: Path, title: str
) -> None:
    """Digits (N, 28, 28) labelled 'pred (true)'; mistakes in red.

    One mosaic image in one axes: one small axes per digit is many times slower to draw.
    """
    n = len(images)
    cols = int(np.ceil(np.sqrt(n))) if n else 1
    rows = max(1, int(np.ceil(n / cols)))
    cell_w, cell_h = 32, 42  # a 28x28 digit, a margin, and room for its label above
    mosaic = np.zeros((rows * cell_h, cols * cell_w), dtype=np.float32)
    fig, ax = plt.subplots(figsize=(cols * 1.1, rows * 1.25 + 0.4))
    for k, (image, t, p) in enumerate(zip(images, true, pred, strict=True)):
        top, left = (k // cols) * cell_h + 12, (k % cols) * cell_w + 2
        mosaic[top : top + 28, left : left + 28] = image
        wrong = t != p
        ax.text(
            left + 14,
            top - 2,
            f"{p}" + (f" ({t})" if wrong else ""),
            ha="center",
            va="bottom",
            fontsize=8,
            color="red" if wrong else "black",
        )
    ax.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    ax.axis("off")
    ax.set_title(title + ("" if n else " (none)"), fontsize=10)
    _save(fig, path)


def save_weight_tiles(weights: list[np.ndarray], path: Path, title: str) -> None:
    """First layer as tiles (W1 (units, 784) as 28x28; conv kernels as kxk); later
    layers as matrices (conv kernels flattened to (out, in*k*k))."""
    first = weights[0].reshape(weights[0].shape[0], -1)  # (units, pixels)
    side = round(np.sqrt(first.shape[1]))
    later = [w.reshape(w.shape[0], -1) for w in weights[1:]][-3:]  # at most the last three
    units = min(first.shape[0], 32)
    cols = min(8, units)
    tile_rows = int(np.ceil(units / cols))
    fig = plt.figure(figsize=(cols * 1.1 + 3 * len(later), tile_rows * 1.1 + 0.6))
    grid = fig.add_gridspec(tile_rows, cols + 3 * len(later))
    limit = np.abs(first).max()
    for k in range(units):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(first[k, : side * side].reshape(side, side), cmap="RdBu", vmin=-limit, vmax=limit)
        ax.axis("off")
    for i, matrix in enumerate(later):
        ax = fig.add_subplot(grid[:, cols + 3 * i : cols + 3 * i + 3])
        ax.imshow(matrix, cmap="RdBu", vmin=-np.abs(matrix).max(), vmax=np.abs(matrix).max())
        ax.set_title(f"W{i + 2} {matrix.shape}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}: W1 as {side}x{side} tiles, later layers as matrices", fontsize=10)
    _save(fig, path)


def save_embedding(points: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """(N, 2) points coloured by digit."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
    ax.legend(*scatter.legend_elements(), title="digit", fontsize=7, loc="best", markerscale=1)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{title}: PCA of the test digits' features")
    _save(fig, path)
