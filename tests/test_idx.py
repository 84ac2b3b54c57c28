import struct

import numpy as np
import pytest

from pipeline.idx import IMAGES_MAGIC, LABELS_MAGIC, IdxError, parse_idx, read_images


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def test_round_trip_images_and_labels(rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    np.testing.assert_array_equal(
        parse_idx(idx_bytes(images, IMAGES_MAGIC), expected_magic=IMAGES_MAGIC), images
    )
    np.testing.assert_array_equal(
        parse_idx(idx_bytes(labels, LABELS_MAGIC), expected_magic=LABELS_MAGIC), labels
    )


def test_truncated_file_names_sizes(rng):
    data = idx_bytes(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), IMAGES_MAGIC)
    with pytest.raises(IdxError, match=r"x.idx: truncated: 2000 bytes, expected 2368"):
        parse_idx(data[:2000], expected_magic=IMAGES_MAGIC, source="x.idx")


def test_trailing_bytes_rejected():
    data = idx_bytes(np.zeros(4, np.uint8), LABELS_MAGIC) + b"\0"
    with pytest.raises(IdxError, match="trailing bytes"):
        parse_idx(data, expected_magic=LABELS_MAGIC)


def test_wrong_magic_number():
    data = idx_bytes(np.zeros(4, np.uint8), LABELS_MAGIC)
    with pytest.raises(IdxError, match="wrong magic number 0x00000801, expected 0x00000803"):
        parse_idx(data, expected_magic=IMAGES_MAGIC)


def test_header_too_short():
    with pytest.raises(IdxError, match="too short"):
        parse_idx(b"\0\0", expected_magic=LABELS_MAGIC)


def test_images_must_be_28x28(tmp_path):
    path = tmp_path / "imgs"
    path.write_bytes(idx_bytes(np.zeros((2, 27, 28), np.uint8), IMAGES_MAGIC))
    with pytest.raises(IdxError, match=r"\(27, 28\), expected \(28, 28\)"):
        read_images(path)


def test_real_mnist_shapes_and_label_counts(mnist):
    train_x, train_y, test_x, test_y = mnist
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert np.bincount(train_y).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert np.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
