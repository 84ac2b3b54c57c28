"""summarize's time to 99 %: the end of the first epoch at 99 % validation accuracy."""

from __future__ import annotations

from pathlib import Path

from pipeline.stages.summarize import seconds_to


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
