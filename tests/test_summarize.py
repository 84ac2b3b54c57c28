"""summarize: the time to 99 % (the end of the first epoch at 99 % validation accuracy),
the DVC metrics (a small scores file a candidate) and the tables stacked for DVC plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.errors import StageError
from pipeline.stages.summarize import cli_main, scores, seconds_to

ROOT = Path(__file__).resolve().parent.parent


def history(tmp_path: Path, accuracies: list[float]) -> Path:
    path = tmp_path / "history.csv"
    rows = [f"{k},{a}" for k, a in enumerate(accuracies, start=1)]
    path.write_text("epoch,val_accuracy\n" + "\n".join(rows) + "\n")
    return path


def test_the_first_epoch_at_the_target_gives_its_end(tmp_path: Path) -> None:
    path = history(tmp_path, [0.97, 0.9899, 0.9900, 0.995])
    run = {"epoch_seconds": [3.0, 6.1, 9.2, 12.4]}
    assert seconds_to(0.99, path, run) == 9.2


def test_never_reaching_the_target_or_no_epoch_times_gives_none(tmp_path: Path) -> None:
    assert seconds_to(0.99, history(tmp_path, [0.95, 0.98]), {"epoch_seconds": [1, 2]}) is None
    assert seconds_to(0.99, history(tmp_path, [0.995]), {}) is None


def write_candidate(root: Path, name: str, val: float, pairs: list[tuple[int, int]]) -> None:
    """The files train, evaluate and robustness leave for one candidate."""
    models, reports, photos = (
        root / "models" / name,
        root / "reports" / name,
        root / "photos" / name,
    )
    for folder in (models, reports, photos):
        folder.mkdir(parents=True)
    (models / "metrics.json").write_text(
        json.dumps({"val_accuracy": val, "parameters": 10, "multiply_adds": 20, "epochs": 2})
    )
    (models / "run.json").write_text(
        json.dumps(
            {"run_id": name, "train_seconds": 1.5, "images_per_s": 9.0, "epoch_seconds": [1, 2]}
        )
    )
    (models / "history.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_correct\n"
        f"1,0.9,0.8,0.7,{val - 0.1},1\n2,0.5,0.9,0.4,{val},2\n"
    )
    (reports / "metrics.json").write_text(
        json.dumps(
            {
                "test_accuracy": val - 0.01,
                "ece": 0.01,
                "ece_uncalibrated": 0.04,
                "feedback_holdout_accuracy": None,
                "feedback_holdout_digits": 0,
            }
        )
    )
    rows = "".join(f"{actual},{predicted}\n" for actual, predicted in pairs)
    (reports / "confusion.csv").write_text("actual,predicted\n" + rows)
    (photos / "metrics.json").write_text(json.dumps({"mean_accuracy": val - 0.2}))
    (photos / "robustness.csv").write_text(
        "kind,accuracy,correct,refused,n\nclean,0.9000,9,0,10\nblur,0.5000,5,0,10\n"
    )


def test_scores_are_a_narrow_metrics_file_a_candidate_and_tables_stack_them_best_first(
    tmp_path: Path,
) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["enabled"] = ["mlp128", "logreg"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_candidate(tmp_path, "logreg", 0.9, [(3, 3), (3, 5), (3, 5), (7, 7)])
    write_candidate(tmp_path, "mlp128", 0.95, [(1, 1), (2, 8)])
    out, cards = tmp_path / "summary", tmp_path / "scores"
    folders = {"models": "models", "reports": "reports", "robustness": "photos"}
    args = [arg for key, name in folders.items() for arg in (f"--{key}", str(tmp_path / name))]
    cli_main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            *args,
            "--out",
            str(out),
            "--scores",
            str(cards),
        ]
    )

    assert sorted(p.name for p in cards.iterdir()) == ["logreg.json", "mlp128.json"]
    assert json.loads((cards / "mlp128.json").read_text()) == {
        "multiply_adds": 20,
        "photo_accuracy": pytest.approx(0.75),
        "test_accuracy": pytest.approx(0.94),
        "val_accuracy": 0.95,
    }
    assert set(json.loads((out / "summary.json").read_text())) == {"mlp128", "logreg"}

    def table(name: str) -> list[list[str]]:
        return [line.split(",") for line in (out / name).read_text().splitlines()]

    history = table("history.csv")
    header = ["candidate", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    assert history[0] == header
    assert [row[:2] for row in history[1:]] == [
        ["mlp128", "1"],
        ["mlp128", "2"],
        ["logreg", "1"],
        ["logreg", "2"],
    ]
    assert table("confusion.csv")[1:] == [
        ["mlp128", "1", "1", "1"],
        ["mlp128", "2", "8", "1"],
        ["logreg", "3", "3", "1"],
        ["logreg", "3", "5", "2"],
        ["logreg", "7", "7", "1"],
    ]
    assert table("robustness.csv")[1:3] == [
        ["mlp128", "clean", "0.9000"],
        ["mlp128", "blur", "0.5000"],
    ]


def test_a_candidate_without_a_robustness_report_stops_the_stage_with_its_name(
    tmp_path: Path,
) -> None:
    with pytest.raises(StageError, match="candidate mlp128 has no robustness report"):
        scores({"candidate": "mlp128", "val_accuracy": 0.9}, tmp_path)
