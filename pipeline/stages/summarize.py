"""summarize: one table of every enabled candidate, always current.

In: the ``train.enabled`` list; each candidate's ``metrics.json``, ``run.json`` and
``history.csv`` (for the time to 99 % validation accuracy) from train and
``metrics.json`` from evaluate. Out: ``summary.json`` (a DVC metrics file, keyed by
candidate) and ``summary.csv`` (a DVC plots file), sorted by validation accuracy, the
only metric promotion looks at.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline import atomic, cli
from pipeline.errors import StageError
from pipeline.params import TrainParams, load_section

COLUMNS = [
    "candidate",
    "val_accuracy",
    "test_accuracy",
    "parameters",
    "multiply_adds",
    "epochs",
    "train_seconds",
    "seconds_to_99",
    "images_per_s",
    "run_id",
]


TARGET = 0.99  # the validation accuracy "time to 99 %" waits for


def seconds_to(target: float, history: Path, run: dict) -> float | None:
    """Training seconds until the end of the first epoch at ``target`` validation accuracy
    or better; None if no epoch got there (or the run predates per-epoch times)."""
    with history.open(newline="") as f:
        accuracies = [float(r["val_accuracy"]) for r in csv.DictReader(f)]
    ends = run.get("epoch_seconds", [])
    for accuracy, end in zip(accuracies, ends, strict=False):
        if accuracy >= target:
            return end
    return None


def row(name: str, models: Path, reports: Path) -> dict:
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
        "parameters": trained["parameters"],
        "multiply_adds": trained["multiply_adds"],
        "epochs": trained["epochs"],
        "train_seconds": run["train_seconds"],
        "seconds_to_99": seconds_to(TARGET, models / name / "history.csv", run),
        "images_per_s": run["images_per_s"],
        "run_id": run["run_id"],
    }


def summarize(enabled: list[str], models: Path, reports: Path) -> list[dict]:
    rows = [row(name, models, reports) for name in enabled]
    return sorted(rows, key=lambda r: (-r["val_accuracy"], r["candidate"]))


def main(args) -> None:
    params = load_section(args.params, "train", TrainParams)
    rows = summarize(params.enabled, args.models, args.reports)
    atomic.write_json(args.out / "summary.json", {r["candidate"]: r for r in rows})
    atomic.write_csv(args.out / "summary.csv", COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
    for r in rows:
        print(
            f"summarize: {r['candidate']:<18} val {r['val_accuracy']:.4f} "
            f"test {r['test_accuracy']:.4f}"
        )


def cli_main(argv=None) -> None:
    p = cli.parser("summarize", __doc__)
    p.add_argument("--models", required=True, type=Path, help="folder of train outputs")
    p.add_argument("--reports", required=True, type=Path, help="folder of evaluate outputs")
    p.add_argument("--out", required=True, type=Path, help="folder for summary.json/.csv")
    cli.run("summarize", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
