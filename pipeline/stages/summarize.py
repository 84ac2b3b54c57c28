"""summarize: every enabled candidate side by side, always current.

In: the ``train.enabled`` list; each candidate's ``metrics.json``, ``run.json`` and
``history.csv`` from train, ``metrics.json`` and ``confusion.csv`` from evaluate, and
``metrics.json`` and ``robustness.csv`` from robustness. Out:

- in ``--scores``, ``<candidate>.json``: the DVC metrics, four numbers a candidate
  (validation, test and photo accuracy, multiply-adds an image), so that
  ``dvc metrics show`` prints a row per candidate;
- in ``--out``, ``summary.json`` (what promote reads, keyed by candidate) and
  ``summary.csv``: the same rows with sizes, timings and run ids, sorted by validation
  accuracy, the only metric promotion looks at;
- in ``--out`` too, ``history.csv``, ``confusion.csv`` and ``robustness.csv``: each
  candidate's curves per epoch, test confusion counts and accuracy per kind of photo,
  stacked in one table with a ``candidate`` column, so that one DVC plot compares them all.

Scores and stacked tables hold no timings or run ids: the same params give the same bytes.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from pipeline import atomic, cli
from pipeline.errors import StageError
from pipeline.params import EnabledParams, load_section

COLUMNS = [
    "candidate",
    "val_accuracy",
    "test_accuracy",
    "test_ece",
    "parameters",
    "multiply_adds",
    "epochs",
    "train_seconds",
    "seconds_to_99",
    "images_per_s",
    "run_id",
]
HISTORY = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]

TARGET = 0.99  # the validation accuracy "time to 99 %" waits for


def seconds_to(target: float, history: Path, run: dict) -> float | None:
    """Training seconds until the end of the first epoch at ``target`` validation accuracy
    or better; None if no epoch got there (or the run predates per-epoch times)."""
    with history.open(newline="") as f:
        accuracies = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    ends = run.get("epoch_seconds", [])
    for accuracy, end in zip(accuracies, ends, strict=False):
        if accuracy >= target:
            return end
    return None


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def candidate_row(name: str, models: Path, reports: Path) -> dict:
    try:
        trained = atomic.read_json(models / name / "metrics.json")
        run = atomic.read_json(models / name / "run.json")
        tested = atomic.read_json(reports / name / "metrics.json")
    except FileNotFoundError as error:
        raise StageError(f"candidate {name} has not been trained and evaluated: {error}") from None
    return {
        "candidate": name,
        "val_accuracy": trained["val_accuracy"],
        "test_accuracy": tested["test_accuracy"],
        "test_ece": tested["ece"],
        "test_ece_uncalibrated": tested["ece_uncalibrated"],
        # None while the feedback hold-out is empty; promote compares it with the champion's.
        "feedback_holdout_accuracy": tested["feedback_holdout_accuracy"],
        "feedback_holdout_digits": tested["feedback_holdout_digits"],
        "parameters": trained["parameters"],
        "multiply_adds": trained["multiply_adds"],
        "epochs": trained["epochs"],
        "train_seconds": run["train_seconds"],
        "seconds_to_99": seconds_to(TARGET, models / name / "history.csv", run),
        "images_per_s": run["images_per_s"],
        "run_id": run["run_id"],
    }


def summarize(enabled: list[str], models: Path, reports: Path) -> list[dict]:
    rows = [candidate_row(name, models, reports) for name in enabled]
    return sorted(rows, key=lambda row: (-row["val_accuracy"], row["candidate"]))


def scores(summary_row: dict, robustness: Path) -> dict:
    """The candidate's DVC metrics: its summary row's accuracies and size, and the mean
    accuracy over kinds of photo from the robustness stage."""
    name = summary_row["candidate"]
    try:
        photos = atomic.read_json(robustness / name / "metrics.json")
    except FileNotFoundError as error:
        raise StageError(f"candidate {name} has no robustness report: {error}") from None
    return {
        "val_accuracy": summary_row["val_accuracy"],
        "test_accuracy": summary_row["test_accuracy"],
        "photo_accuracy": photos["mean_accuracy"],
        "multiply_adds": summary_row["multiply_adds"],
    }


def history_rows(names: list[str], models: Path) -> list[list[str]]:
    """(candidate, *HISTORY) for every epoch of every candidate, as train wrote them."""
    return [
        [name, *(epoch[column] for column in HISTORY)]
        for name in names
        for epoch in read_rows(models / name / "history.csv")
    ]


def confusion_rows(names: list[str], reports: Path) -> list[list]:
    """(candidate, actual, predicted, count) for every pair that occurs: about 100 rows a
    candidate instead of a row per test digit."""
    rows = []
    for name in names:
        pairs = read_rows(reports / name / "confusion.csv")
        counts = Counter((int(p["actual"]), int(p["predicted"])) for p in pairs)
        rows += [
            [name, actual, predicted, counts[actual, predicted]]
            for actual, predicted in sorted(counts)
        ]
    return rows


def robustness_rows(names: list[str], robustness: Path) -> list[list[str]]:
    """(candidate, kind, accuracy) for every kind of photo of every candidate."""
    return [
        [name, kind["kind"], kind["accuracy"]]
        for name in names
        for kind in read_rows(robustness / name / "robustness.csv")
    ]


def main(args) -> None:
    params = load_section(args.params, "train", EnabledParams)
    rows = summarize(params.enabled, args.models, args.reports)
    names = [row["candidate"] for row in rows]  # best first: plots list them in this order
    cards = {name: scores(row, args.robustness) for name, row in zip(names, rows, strict=True)}
    out: Path = args.out
    for name, card in cards.items():
        atomic.write_json(args.scores / f"{name}.json", card)
    atomic.write_json(out / "summary.json", {row["candidate"]: row for row in rows})
    atomic.write_csv(
        out / "summary.csv", COLUMNS, ([row[column] for column in COLUMNS] for row in rows)
    )
    atomic.write_csv(out / "history.csv", ["candidate", *HISTORY], history_rows(names, args.models))
    atomic.write_csv(
        out / "confusion.csv",
        ["candidate", "actual", "predicted", "count"],
        confusion_rows(names, args.reports),
    )
    atomic.write_csv(
        out / "robustness.csv",
        ["candidate", "kind", "accuracy"],
        robustness_rows(names, args.robustness),
    )
    for row in rows:
        photos = cards[row["candidate"]]["photo_accuracy"]
        print(
            f"summarize: {row['candidate']:<18} val {row['val_accuracy']:.4f} "
            f"test {row['test_accuracy']:.4f} photos {photos:.4f}"
        )


def cli_main(argv=None) -> None:
    p = cli.parser("summarize", __doc__)
    p.add_argument("--models", required=True, type=Path, help="folder of train outputs")
    p.add_argument("--reports", required=True, type=Path, help="folder of evaluate outputs")
    p.add_argument("--robustness", required=True, type=Path, help="folder of robustness outputs")
    p.add_argument("--out", required=True, type=Path, help="folder for the summary's tables")
    p.add_argument("--scores", required=True, type=Path, help="folder for the DVC metrics")
    cli.run("summarize", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
