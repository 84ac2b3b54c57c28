"""summarize: one table of every enabled candidate, always current.

In: the ``train.enabled`` list; each candidate's ``metrics.json`` and ``run.json`` from
train and ``metrics.json`` from evaluate. Out: ``summary.json`` (a DVC metrics file,
keyed by candidate) and ``summary.csv`` (a DVC plots file), sorted by validation
accuracy, the only metric promotion looks at.
"""

from __future__ import annotations

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
    "images_per_s",
    "run_id",
]


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
