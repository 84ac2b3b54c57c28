"""Corrections flow back: 60 corrections stored in the service's own format land, by a hash
of their pixels, in the digits trained on or in the hold-out (never both, never the test
set); a second `dvc repro` with nothing new is a no-op; evaluate scores the candidates on
the hold-out beside the test set; bad labelled images stop the stage, naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.project import copy_project
from pipeline.stages.feedback import in_holdout
from serving.feedback import FeedbackStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(pipeline_project, pipeline_store, tmp_path_factory, mirror):
    return copy_project(pipeline_project, tmp_path_factory.mktemp("feedback") / "p", mirror)


def test_sixty_corrections_split_by_hash_and_a_second_repro_is_a_no_op(project, mnist) -> None:
    store = FeedbackStore(project.path / "feedback", max_bytes=2**20)
    digits, labels = mnist[0][-60:], mnist[1][-60:]  # MNIST training digits, not test ones
    for digit, label in zip(digits, labels, strict=True):
        store.add(int(label), digit)
    params = project.params()["feedback"]

    ran = project.stages_run(project.run("dvc", "repro", "evaluate@mlp128"))
    assert ran[0] == "feedback" and "normalise" in ran and ran[-1] == "evaluate@mlp128"
    summary = json.loads((project.path / "reports/feedback.json").read_text())
    folder = project.path / "data/feedback"
    parts = {name: np.load(folder / f"{name}.npz") for name in ("train", "holdout")}
    expected_holdout = [in_holdout(d, params["holdout_percent"]) for d in digits]
    assert summary["from_store"] == 60 and summary["holdout"] == sum(expected_holdout)
    assert 0 < summary["holdout"] < 60 and summary["train"] == 60 - summary["holdout"]
    held = {parts["holdout"]["images"][i].tobytes() for i in range(summary["holdout"])}
    trained = {parts["train"]["images"][i].tobytes() for i in range(summary["train"])}
    assert held.isdisjoint(trained)
    assert held == {d.tobytes() for d, h in zip(digits, expected_holdout, strict=True) if h}
    test = np.load(project.path / "data/split/test.npz")["images"]
    assert not ({t.tobytes() for t in test} & (held | trained))
    normalised = np.load(project.path / "data/normalised/train.npz")["labels"]
    split = np.load(project.path / "data/split/train.npz")["labels"]
    assert len(normalised) == len(split) + summary["train"]
    metrics = json.loads((project.path / "reports/candidates/mlp128/metrics.json").read_text())
    assert metrics["feedback_holdout_digits"] == summary["holdout"]
    assert 0 <= metrics["feedback_holdout_accuracy"] <= 1

    assert project.stages_run(project.run("dvc", "repro", "evaluate@mlp128")) == []


def test_a_labelled_file_that_is_no_image_stops_the_stage_naming_it(project) -> None:
    folder = project.path / "labelled" / "4"
    folder.mkdir(parents=True)
    (folder / "scan.png").write_bytes(b"not a picture")
    result = project.run("dvc", "repro", "feedback", check=False)
    assert result.returncode != 0
    assert "labelled/4/scan.png" in result.stderr + result.stdout
    (folder / "scan.png").unlink()
