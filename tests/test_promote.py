"""Promotion against a real MLflow SQLite store with real logged (pt2) models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import inference, models, registry, tracking
from pipeline.errors import StageError
from pipeline.params import LogReg, MlflowParams, PromoteParams
from pipeline.stages import promote

NAME = "mnist-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    experiment_id = tracking.setup(
        MlflowParams(experiment="promote-test", store="unused.db", system_metrics=False)
    )
    yield experiment_id
    mp.undo()


CANDIDATE = LogReg(arch="logreg", description="", C=1.0, max_iter=1)


def logged_run(experiment_id: str, name: str, val: float, test: float, seed: int = 0) -> dict:
    """A run with a real logged model and the train/ artifacts its weights come back from,
    as train makes them; returns its summary row."""
    import mlflow
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = models.build(CANDIDATE)
    with (
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=name,
            tags={"candidate": name, "git_commit": "abc"},
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        save_file(net.state_dict(), f"{tmp}/weights.safetensors")
        mlflow.log_artifacts(tmp, artifact_path="train")
        mlflow.log_dict(CANDIDATE.model_dump(), "train/candidate.json")
        mlflow.log_dict({"mean": 0.0, "std": 1.0}, "train/stats.json")
        tracking.log_model(inference.Predictor(net, 0.0, 1.0))
    return {
        "candidate": name,
        "val_accuracy": val,
        "test_accuracy": test,
        "test_ece": 0.012,
        "test_ece_uncalibrated": 0.05,
        "parameters": 7850,
        "multiply_adds": 7840,
        "feedback_holdout_accuracy": None,
        "run_id": run.info.run_id,
    }


NO_HOLDOUT = promote.read_holdout(None)


def decide(store, rows, min_improvement=0.0, holdout=NO_HOLDOUT, name=NAME):
    summary = {r["candidate"]: r for r in rows}
    params = PromoteParams(
        registered_model=name,
        min_improvement=min_improvement,
        max_multiply_adds=None,
        max_corruption_error=None,
        quantize="none",
    )
    return promote.promote(summary, params, store, holdout)


@pytest.fixture(scope="module")
def runs(store):
    return {
        "a": logged_run(store, "a", 0.95, 0.94),
        "worse": logged_run(store, "worse", 0.90, 0.99),
        "better": logged_run(store, "better", 0.97, 0.90),
        "slightly": logged_run(store, "slightly", 0.9705, 0.9),
    }


def alias_version():
    return registry.current_champion(NAME).version


def test_promotion_story(store, runs):
    first = decide(store, [runs["a"]])
    assert first["alias_moved"] and first["reason"] == "no champion yet"
    assert alias_version() == first["version"]

    # Rerunning changes nothing: same version, no second registration, alias unmoved.
    again = decide(store, [runs["a"]])
    assert again["version"] == first["version"] and not again["alias_moved"]
    assert len(registry.client().search_model_versions(f"name = '{NAME}'")) == 1

    # A worse candidate (by validation; its better *test* accuracy must not matter) is
    # best of its own summary, gets registered, but does not take the alias.
    worse = decide(store, [runs["worse"]])
    assert not worse["alias_moved"] and "does not beat" in worse["reason"]
    assert alias_version() == first["version"] != worse["version"]

    # The summary's best by validation accuracy wins, and moves the alias.
    better = decide(store, [runs["worse"], runs["better"]])
    assert better["candidate"] == "better" and better["alias_moved"]
    assert alias_version() == better["version"]
    version = registry.client().get_model_version(NAME, better["version"])
    assert version.tags["candidate"] == "better" and version.tags["git_commit"] == "abc"
    assert float(version.tags["val_accuracy"]) == 0.97
    assert float(version.tags["test_ece"]) == 0.012  # the card quotes it from here

    # Not enough improvement under min_improvement: kept.
    slight = decide(store, [runs["slightly"]], min_improvement=0.01)
    assert not slight["alias_moved"] and alias_version() == better["version"]

    history = registry.history(NAME)
    assert [h["version"] for h in history] == [first["version"], better["version"]]
    assert history[-1]["previous"] == first["version"]

    # Rollback restores the previous champion, and records that too.
    assert registry.rollback(NAME) == first["version"]
    assert alias_version() == first["version"]
    assert "rollback" in registry.history(NAME)[-1]["reason"]


def test_a_winner_that_labels_the_feedback_holdout_worse_than_the_champion_is_refused(store):
    name = "mnist-feedback-holdout"
    champion = logged_run(store, "champ", 0.95, 0.94, seed=1)
    assert decide(store, [champion], name=name)["alias_moved"]
    # A hold-out the champion labels right by construction: its own answers on 40 digits.
    with tempfile.TemporaryDirectory() as tmp:
        candidate, stats, weights, _ = tracking.trained_files(champion["run_id"], Path(tmp))
        predictor = inference.load_predictor(candidate, weights, stats)
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = inference.in_batches(predictor, inference.to_pixels(images)).argmax(1).numpy()
    holdout = {"images": images, "labels": labels}

    # Better on validation, worse on what people corrected: the champion stays, scored from
    # its logged weights since it is not in this summary.
    newer = logged_run(store, "newer", 0.97, 0.96, seed=2) | {"feedback_holdout_accuracy": 0.5}
    refused = decide(store, [newer], holdout=holdout, name=name)
    assert not refused["alias_moved"] and refused["champion_candidate"] == "champ"
    assert refused["feedback_holdout"] == {"digits": 40, "candidate": 0.5, "champion": 1.0}
    assert refused["reason"].endswith(
        "labels the feedback hold-out worse: 0.5000 against the champion's 1.0000 on 40 "
        "corrected digits"
    )
    # As good as the champion on the hold-out, better on validation: it takes the alias.
    equal = decide(store, [newer | {"feedback_holdout_accuracy": 1.0}], holdout=holdout, name=name)
    assert equal["alias_moved"] and equal["champion_candidate"] == "newer"
    assert equal["feedback_holdout"]["champion"] == 1.0


def test_rollback_without_history_is_a_clear_error(store):
    with pytest.raises(StageError, match="no previous champion"):
        registry.client().create_registered_model("empty-model")
        registry.rollback("empty-model")


def test_choice_ignores_test_accuracy():
    rows = {
        "x": {"candidate": "x", "val_accuracy": 0.9, "test_accuracy": 0.99},
        "y": {"candidate": "y", "val_accuracy": 0.91, "test_accuracy": 0.5},
    }
    assert promote.best_candidate(rows)["candidate"] == "y"
    with pytest.raises(StageError):
        promote.best_candidate({})


def test_serving_budget_leaves_out_costly_candidates():
    rows = {
        "big": {"candidate": "big", "val_accuracy": 0.996, "multiply_adds": 2_700_000},
        "small": {"candidate": "small", "val_accuracy": 0.995, "multiply_adds": 1_400_000},
        "tiny": {"candidate": "tiny", "val_accuracy": 0.97, "multiply_adds": 8_000},
    }
    assert promote.best_candidate(rows)["candidate"] == "big"
    assert promote.best_candidate(rows, 1_500_000)["candidate"] == "small"
    assert promote.best_candidate(rows, 2_700_000)["candidate"] == "big"  # the limit fits
    assert promote.over_budget(rows, 1_500_000) == ["big"]
    assert promote.over_budget(rows, None) == []
    with pytest.raises(StageError, match=r"promote.max_multiply_adds: .*tiny, needs 8,000"):
        promote.best_candidate(rows, 1_000)


def test_each_candidate_gets_a_note_on_what_promotion_made_of_it():
    rows = {
        "big": {"candidate": "big", "val_accuracy": 0.996, "multiply_adds": 2_700_000},
        "small": {"candidate": "small", "val_accuracy": 0.995, "multiply_adds": 1_400_000},
        "tiny": {"candidate": "tiny", "val_accuracy": 0.97, "multiply_adds": 8_000},
    }
    for name, row in rows.items():
        row["run_id"] = f"run-{name}"
    decision = {
        "candidate": "small",
        "champion_run_id": "run-small",
        "champion_version": "3",
        "max_multiply_adds": 1_500_000,
        "reason": "no champion yet",
    }
    notes = promote.promotion_notes(rows, decision)
    assert notes["small"] == ("run-small", "champion: served as version 3")
    assert notes["big"][1] == (
        "not eligible: 2,700,000 multiply-adds an image, over the serving budget of 1,500,000"
    )
    assert notes["tiny"][1] == "eligible: validation error 2.50 points above small's"

    # The best that did not beat the champion (an older run) says why.
    kept = decision | {"champion_run_id": "run-older", "reason": "does not beat it"}
    assert promote.promotion_notes(rows, kept)["small"][1] == (
        "best eligible, not promoted: does not beat it"
    )


def test_promote_tags_the_compared_runs_and_clears_earlier_ones(store, runs):
    from mlflow import MlflowClient

    notes = {"a": (runs["a"]["run_id"], "eligible"), "worse": (runs["worse"]["run_id"], "x")}
    tracking.tag_candidates(store, notes)
    tracking.tag_candidates(store, {"better": (runs["better"]["run_id"], "champion: served")})
    client = MlflowClient()
    tags = {name: client.get_run(runs[name]["run_id"]).data.tags for name in runs}
    assert tags["better"][tracking.PROMOTION_TAG] == "champion: served"
    assert tracking.PROMOTION_TAG not in tags["a"] and tracking.PROMOTION_TAG not in tags["worse"]
    assert tags["a"]["mlflow.runColor"] != tags["worse"]["mlflow.runColor"]


def test_the_robustness_floor_leaves_out_fragile_candidates_and_says_by_how_much():
    rows = {
        "sharp": {"candidate": "sharp", "val_accuracy": 0.996, "multiply_adds": 10,
                  "val_corruption_error": {"arrays": 0.31, "images": 0.12}},
        "sturdy": {"candidate": "sturdy", "val_accuracy": 0.995, "multiply_adds": 10,
                   "val_corruption_error": {"arrays": 0.06, "images": 0.08}},
    }  # fmt: skip
    assert promote.best_candidate(promote.robust_enough(rows, 0.10))["candidate"] == "sturdy"
    assert promote.best_candidate(promote.robust_enough(rows, None))["candidate"] == "sharp"
    assert promote.below_floor(rows, 0.10) == ["sharp"]
    margins = promote.robustness_margins(rows, 0.10)
    assert margins["sturdy"]["margin"] == pytest.approx(0.02)
    assert margins["sharp"]["margin"] == pytest.approx(-0.21)  # its worse path, arrays
    with pytest.raises(StageError, match=r"max_corruption_error: .*sturdy, has 8.0%"):
        promote.robust_enough(rows, 0.05)
    for name, row in rows.items():
        row["run_id"] = f"run-{name}"
    decision = {
        "candidate": "sturdy",
        "champion_run_id": "run-sturdy",
        "champion_version": "1",
        "max_multiply_adds": None,
        "max_corruption_error": 0.10,
        "below_floor": ["sharp"],
        "reason": "no champion yet",
    }
    assert promote.promotion_notes(rows, decision)["sharp"][1] == (
        "not eligible: 31.0% error on corrupted validation digits, over the robustness "
        "floor of 10.0%"
    )
