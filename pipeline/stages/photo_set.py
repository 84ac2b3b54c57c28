"""photo_set: official test digits rendered as people send them, and what the service's
preprocessing makes of them. Rendered once for all candidates; the robustness stages
score each candidate on it.

In: ``test.npz`` from split; params ``robustness`` (per_kind, seed, kinds). Out, in
``--out``: ``digits.npz`` holding ``images`` (K, N, 28, 28) uint8, what
serving.preprocess made of each rendered image (zeros where it refused one, as the
service would with a 400), ``refused`` (K, N) bool, ``originals`` (N, 28, 28) uint8 and
``labels`` (N,) of the N test digits, ``index`` (N,) their positions in the test split,
and ``kinds`` (K,) the kinds' names; in ``--pictures``, ``examples.png``: a few images of
each kind beside what the model is shown. The same N digits, chosen with ``seed``, appear
under every kind, so kinds compare like with like. Nothing trains or selects on them.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from pipeline import atomic, cli, dataset, photos
from pipeline.params import ParamsError, RobustnessParams, load_section
from serving import preprocess

EXAMPLES = 4  # images of each kind in examples.png
CELL = (96, 128)  # (height, width) a photo is shrunk into in examples.png
SEEN = 84  # pixels the 28x28 digit is drawn at beside it (3x)


def preprocessed(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded images -> ((N, 28, 28) uint8 what the service's preprocessing makes of
    each, zeros where it refuses one; (N,) bool, refused)."""
    seen = np.zeros((len(images), 28, 28), np.uint8)
    refused = np.zeros(len(images), bool)
    for i, data in enumerate(images):
        try:
            seen[i] = preprocess.digit_from_image(data)
        except preprocess.BadInput:
            refused[i] = True
    return seen, refused


def example_row(images: list[bytes], seen: np.ndarray) -> np.ndarray:
    """One row of examples.png: each image shrunk into CELL, then what the model sees."""
    tiles = []
    for data, digit in zip(images, seen, strict=True):
        picture = Image.open(io.BytesIO(data)).convert("L")
        picture.thumbnail((CELL[1], CELL[0]))
        cell = np.full(CELL, 255, np.uint8)
        top, left = (CELL[0] - picture.height) // 2, (CELL[1] - picture.width) // 2
        cell[top : top + picture.height, left : left + picture.width] = np.asarray(picture)
        digit_cell = np.full((CELL[0], SEEN), 255, np.uint8)
        big = np.asarray(Image.fromarray(digit).resize((SEEN, SEEN), Image.Resampling.NEAREST))
        digit_top = (CELL[0] - SEEN) // 2
        digit_cell[digit_top : digit_top + SEEN] = big
        gap = np.full((CELL[0], 6), 255, np.uint8)
        tiles += [cell, gap, digit_cell, np.full((CELL[0], 24), 255, np.uint8)]
    return np.concatenate(tiles, axis=1)


def render_kind(kind: str, digits: np.ndarray, seed: int):
    """(seen (N, 28, 28) uint8, refused (N,) bool, its row of examples) of one kind."""
    images = photos.render(kind, digits, seed)
    seen, refused = preprocessed(images)
    return seen, refused, example_row(images[:EXAMPLES], seen[:EXAMPLES])


def save_examples(rows: dict[str, np.ndarray], path: Path) -> None:
    """The rows of examples, one per kind, labelled, as a PNG."""
    gap = np.full((8, next(iter(rows.values())).shape[1]), 255, np.uint8)
    mosaic = np.concatenate([part for row in rows.values() for part in (row, gap)], axis=0)
    fig, ax = plt.subplots(figsize=(mosaic.shape[1] / 100, mosaic.shape[0] / 100 + 0.5))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([(CELL[0] + 8) * k + CELL[0] / 2 for k in range(len(rows))], list(rows))
    ax.set_xticks([])
    ax.set_title("test digits as people send them, and what the model is shown", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def main(args) -> None:
    started = time.perf_counter()
    params = load_section(args.params, "robustness", RobustnessParams)
    unknown = [kind for kind in params.kinds if kind not in photos.KINDS]
    if unknown:
        raise ParamsError(
            f"{args.params}: robustness.kinds: unknown {unknown}; known: {', '.join(photos.KINDS)}"
        )
    test = atomic.read_npz(args.test)
    if params.per_kind > len(test["labels"]):
        raise ParamsError(
            f"{args.params}: robustness.per_kind: {params.per_kind} is more than the "
            f"{len(test['labels'])} digits of the test split"
        )
    index = dataset.choose(len(test["labels"]), params.per_kind, params.seed)
    digits = test["images"][index]  # (N, 28, 28) uint8
    # Each kind has its own seeded generator, so the kinds render apart, one process a
    # core, to the same bytes as one after the other.
    # The photo kind (every effect at once, at a phone's size) costs about as much as the
    # other kinds together: it starts first, so that it renders beside them, not after.
    workers = min(len(params.kinds), os.cpu_count() or 1)
    order = sorted(params.kinds, key=lambda kind: kind != "photo")
    if workers > 1:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            futures = {kind: pool.submit(render_kind, kind, digits, params.seed) for kind in order}
            done = [futures[kind].result() for kind in params.kinds]
    else:
        done = [render_kind(kind, digits, params.seed) for kind in params.kinds]
    seen = np.stack([kind_seen for kind_seen, _, _ in done])  # (K, N, 28, 28)
    refused = np.stack([kind_refused for _, kind_refused, _ in done])  # (K, N)
    rows = {kind: row for kind, (_, _, row) in zip(params.kinds, done, strict=True)}
    atomic.write_npz(
        args.out / "digits.npz",
        images=seen,
        refused=refused,
        originals=digits,
        labels=test["labels"][index],
        index=index,
        kinds=np.array(params.kinds),
    )
    save_examples(rows, args.pictures / "examples.png")
    print(
        f"photo_set: {len(index)} test digits x {len(params.kinds)} kinds rendered and "
        f"preprocessed ({int(refused.sum())} refused) in {time.perf_counter() - started:.1f} s"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("photo_set", __doc__)
    p.add_argument("--test", required=True, type=Path, help="test.npz from split")
    p.add_argument("--out", required=True, type=Path, help="folder for digits.npz")
    p.add_argument("--pictures", required=True, type=Path, help="folder for examples.png")
    cli.run("photo_set", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
