"""Writes the example images that the README's commands send to the service.

In: MNIST's test images and labels as the fetch stage stores them in data/raw/ (after
`make run`, or `dvc repro fetch`). Out, beside this script:
- digit-7.png: MNIST test image 0, a 7, as it is in the data set: 28x28 grey, light ink
  on black;
- photo-of-a-2.jpg: MNIST test image 1, a 2, written in ink on lined notebook paper and
  photographed by pipeline/photos.py's ``photo`` recipe (a 640x480 colour JPEG: uneven
  light, the page turned a little, slightly out of focus, sensor noise).
The same data and SEED give the same bytes. Run from the repository root:
`python examples/make_examples.py`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import photos
from pipeline.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx

HERE = Path(__file__).resolve().parent
RAW = HERE.parent / "data" / "raw"  # the fetch stage's output (dvc.yaml's raw_dir)
SEED = 0  # the photo's paper, light, angle and noise
DIGIT_PNG = ("digit-7.png", 0, 7)  # (file, index in the test set, its label)
PHOTO_JPEG = ("photo-of-a-2.jpg", 1, 2)


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """(10000, 28, 28) uint8 images and (10000,) uint8 labels of MNIST's test set."""
    images = parse_idx((RAW / "t10k-images-idx3-ubyte").read_bytes(), expected_magic=IMAGES_MAGIC)
    labels = parse_idx((RAW / "t10k-labels-idx1-ubyte").read_bytes(), expected_magic=LABELS_MAGIC)
    return images, labels


def png(digit: np.ndarray) -> bytes:
    """A (28, 28) uint8 digit as a grey PNG, pixel for pixel."""
    buffer = io.BytesIO()
    Image.fromarray(digit, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    images, labels = test_set()
    for (name, index, label), encode in (
        (DIGIT_PNG, png),
        (PHOTO_JPEG, lambda digit: photos.photo(digit, np.random.default_rng(SEED))),
    ):
        if labels[index] != label:
            raise SystemExit(f"MNIST test image {index} is a {labels[index]}, not a {label}")
        (HERE / name).write_bytes(encode(images[index]))
        print(f"wrote {HERE / name}: MNIST test image {index}, a {label}")


if __name__ == "__main__":
    main()
