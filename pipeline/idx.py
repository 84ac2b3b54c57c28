"""Parse the idx format of the MNIST files.

In: the bytes of one decompressed idx file. Out: a numpy uint8 array, (N, 28, 28)
for images or (N,) for labels. Anything malformed raises IdxError with a message
that says what is wrong, never a silent short array.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from pipeline.errors import StageError

# The third byte of the magic number is the element type (0x08 = uint8), the fourth
# the number of dimensions. MNIST uses only these two.
IMAGES_MAGIC = 0x00000803  # uint8, 3 dims: (N, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8, 1 dim: (N,)


class IdxError(StageError):
    """An idx file is truncated, oversized or has the wrong magic number."""


def parse_idx(data: bytes, *, expected_magic: int, source: str = "idx data") -> np.ndarray:
    """Return the array stored in ``data``; raise IdxError if it is not a valid idx file."""
    if len(data) < 4:
        raise IdxError(f"{source}: {len(data)} bytes is too short for an idx header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise IdxError(
            f"{source}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(f"{source}: truncated header ({len(data)} of {header_len} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = header_len + int(np.prod(shape))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"{source}: {kind}: {len(data)} bytes, expected {expected} for shape {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def read_images(path: Path) -> np.ndarray:
    """(N, 28, 28) uint8 images from a decompressed idx3 file."""
    images = parse_idx(path.read_bytes(), expected_magic=IMAGES_MAGIC, source=str(path))
    if images.shape[1:] != (28, 28):
        raise IdxError(f"{path}: images are {images.shape[1:]}, expected (28, 28)")
    return images


def read_labels(path: Path) -> np.ndarray:
    """(N,) uint8 labels 0-9 from a decompressed idx1 file."""
    labels = parse_idx(path.read_bytes(), expected_magic=LABELS_MAGIC, source=str(path))
    if labels.size and labels.max() > 9:
        raise IdxError(f"{path}: label {int(labels.max())} is not a digit 0-9")
    return labels
