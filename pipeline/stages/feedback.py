"""feedback: the corrections people sent, and any folder of labelled digits, as a data set.

In: ``--store``, the service's feedback store (``feedback-w*.jsonl``: serving/feedback.py;
a team copies its pods' store there); ``--served``, the served-input log
(serving/served_log.py), read only when a correction names an answer by its id instead of
sending the digit: such a correction whose answer is not (or no longer) in the log is
counted as ``unresolved`` and left out; ``--labelled``, a folder of a user's own labelled
images, ``<digit>/<any name>.png|.jpg|.jpeg``, each put through the service's own
preprocessing (serving/preprocess.py: found, centred and framed as MNIST); the
``feedback`` params (the hold-out's share, in percent).

Out, in ``--out``: ``train.npz`` and ``holdout.npz`` (``images`` (N, 28, 28) uint8,
``labels`` (N,) uint8), and ``summary.json`` (counts by source and by part, duplicates,
conflicts). Each digit goes by a hash of its pixels (sha256) into one part for good:
the same digit sent again lands in the same part, so a digit kept to test on is never
trained on, and nothing from here ever joins the MNIST test set. The same pixels sent
with two labels keep the last one. normalise adds ``train.npz`` to the training split;
evaluate scores every candidate on ``holdout.npz`` beside the test set (docs/feedback.md).
With nothing in either folder, both parts are empty and the stages after run as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import atomic, cli
from pipeline.errors import StageError
from pipeline.params import FeedbackParams, load_section
from serving import feedback, preprocess, served_log
from serving.contract import IMAGE_SIDE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def stored(folder: Path, served: Path) -> tuple[list[tuple[np.ndarray, int]], int]:
    """The service's corrections, oldest first: (pixels (28, 28) uint8, label); and how
    many named an answer that the served-input log at ``served`` does not hold."""
    if not folder.is_dir():
        return [], 0
    try:
        items = feedback.read(folder)
    except (ValueError, KeyError) as error:
        raise StageError(f"{folder}: not a feedback store: {error}") from None
    items.sort(key=lambda item: item["time"])
    by_answer = [item for item in items if item["pixels"] is None]
    if by_answer:
        digits = served_digits(served, {item["answer"] for item in by_answer})
        for item in by_answer:
            item["pixels"] = digits.get((item["answer"], item["index"]))
    found = [(item["pixels"], int(item["label"])) for item in items if item["pixels"] is not None]
    return found, len(items) - len(found)


def served_digits(folder: Path, answers: set[str]) -> dict[tuple[str, int], np.ndarray]:
    """(answer id, index) -> pixels (28, 28) uint8 of the served digits of ``answers``."""
    if not folder.is_dir():
        return {}
    try:
        frame = served_log.read(folder)
    except (ValueError, KeyError) as error:
        raise StageError(f"{folder}: not a served-input log: {error}") from None
    frame = frame[frame["answer"].isin(answers)]
    return {
        (answer, int(index)): pixels
        for answer, index, pixels in zip(
            frame["answer"], frame["index"], frame["pixels"], strict=True
        )
    }


def labelled(folder: Path) -> list[tuple[np.ndarray, int]]:
    """A user's ``<digit>/<image>`` files, through the service's preprocessing; a file
    that is not a readable image of a digit stops the stage, naming it."""
    if not folder.is_dir():
        return []
    items = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        digit = path.parent.name
        if path.parent.parent != folder or digit not in "0123456789" or len(digit) != 1:
            raise StageError(f"{path}: labelled images go in {folder}/<digit 0-9>/<name>")
        try:
            pixels = preprocess.digit_from_image(path.read_bytes())
        except preprocess.BadInput as error:
            raise StageError(f"{path}: {error}") from None
        items.append((pixels, int(digit)))
    return items


def in_holdout(pixels: np.ndarray, percent: float) -> bool:
    """Whether a digit belongs to the hold-out: the first 8 hex digits of its pixels'
    sha256, as a number, modulo 10,000, under ``percent`` of 10,000."""
    bucket = int(hashlib.sha256(pixels.tobytes()).hexdigest()[:8], 16) % 10_000
    return bucket < percent * 100


def arrays(items: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    images = np.zeros((len(items), IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    for row, (pixels, _) in enumerate(items):
        images[row] = pixels
    return {"images": images, "labels": np.array([lb for _, lb in items], dtype=np.uint8)}


def main(args) -> None:
    params = load_section(args.params, "feedback", FeedbackParams)
    from_store, unresolved = stored(args.store, args.served)
    sources = {"store": from_store, "labelled": labelled(args.labelled)}
    unique: dict[bytes, tuple[np.ndarray, int]] = {}
    conflicts = 0
    for items in sources.values():
        for pixels, label in items:
            key = pixels.tobytes()
            if key in unique and unique[key][1] != label:
                conflicts += 1
            unique[key] = (pixels, label)  # the last label sent wins
    parts: dict[str, list] = {"train": [], "holdout": []}
    for pixels, label in unique.values():
        parts["holdout" if in_holdout(pixels, params.holdout_percent) else "train"].append(
            (pixels, label)
        )
    for name, items in parts.items():
        atomic.write_npz(args.out / f"{name}.npz", **arrays(items))
    summary = {
        "from_store": len(sources["store"]),
        "from_labelled": len(sources["labelled"]),
        "unresolved": unresolved,
        "duplicates": sum(map(len, sources.values())) - len(unique),
        "conflicting_labels": conflicts,
        "train": len(parts["train"]),
        "holdout": len(parts["holdout"]),
        "holdout_percent": params.holdout_percent,
    }
    atomic.write_json(args.summary, summary)
    print(
        f"feedback: {len(unique)} digits ({summary['from_store']} corrections, "
        f"{summary['from_labelled']} labelled images, {summary['duplicates']} duplicates): "
        f"{summary['train']} to train on, {summary['holdout']} kept to test on"
    )
    if unresolved:
        print(
            f"feedback: {unresolved} corrections name an answer that {args.served} does not "
            "hold (rotated out, or from another server's log): left out"
        )


def cli_main(argv=None) -> None:
    p = cli.parser("feedback", __doc__)
    p.add_argument("--store", required=True, type=Path, help="the service's feedback store")
    p.add_argument(
        "--served", required=True, type=Path, help="the served-input log, for answer ids"
    )
    p.add_argument("--labelled", required=True, type=Path, help="folder of <digit>/<image>")
    p.add_argument("--out", required=True, type=Path, help="folder for train.npz, holdout.npz")
    p.add_argument("--summary", required=True, type=Path, help="summary.json: the counts")
    cli.run("feedback", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
