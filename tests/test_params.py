import subprocess
import sys

import pytest
import yaml

from pipeline.architectures.conv3 import Conv3Dense
from pipeline.params import (
    DriftParams,
    EvaluateParams,
    FeedbackParams,
    FetchParams,
    MlflowParams,
    NormaliseParams,
    ParamsError,
    PromoteParams,
    ReviewParams,
    ServeParams,
    SplitParams,
    TrainParams,
    candidate_from_logged,
    load_section,
)
from tests.conftest import ROOT

SECTIONS = {
    "fetch": FetchParams,
    "split": SplitParams,
    "normalise": NormaliseParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "mlflow": MlflowParams,
    "promote": PromoteParams,
    "serve": ServeParams,
    "feedback": FeedbackParams,
    "drift": DriftParams,
    "review": ReviewParams,
}


def test_repository_params_are_valid():
    for section, model in SECTIONS.items():
        load_section(ROOT / "params.yaml", section, model)


def write_with(tmp_path, edit):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(
    "section, edit, key, words",
    [
        ("split", lambda p: p["split"].update(val_sise=5), "split.val_sise", "unknown key"),
        ("split", lambda p: p["split"].update(val_size="10k"), "split.val_size", "integer"),
        ("split", lambda p: p["split"].update(val_size=-1), "split.val_size", "greater than 0"),
        ("fetch", lambda p: p["fetch"].update(mirrors=[]), "fetch.mirrors", "at least 1"),
        (
            "normalise",
            lambda p: p["normalise"].update(standardise="yes"),
            "normalise.standardise",
            "boolean",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(lr=-0.1),
            "train.candidates.mlp128.lr",
            "greater than 0",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(optimiser="sgd"),
            "train.candidates.mlp128.optimiser",
            "unknown key",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(activation="gelu"),
            "train.candidates.mlp128.activation",
            "relu",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(hidden=[]),
            "train.candidates.mlp128.hidden",
            "at least 1 item",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].pop("arch"),
            "train.candidates.mlp128",
            "needs an 'arch': one of conv1_dense, conv3_dense",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(arch="resnet"),
            "train.candidates.mlp128",
            "arch must be one of conv1_dense, conv3_dense",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].pop("lr"),
            "train.candidates.mlp128.lr",
            "Field required",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(channels=[8, 16, 32]),
            "train.candidates.mlp128.channels",
            "unknown key for arch 'mlp'",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["logreg"].update(lr=0.1),
            "train.candidates.logreg.lr",
            "unknown key for arch 'logreg'",
        ),
        ("train", lambda p: p["train"].pop("threads"), "train.threads", "Field required"),
        (
            "normalise",
            lambda p: p["normalise"].pop("standardise"),
            "normalise.standardise",
            "Field required",
        ),
        (
            "train",
            lambda p: p["train"].update(enabled=["mlp128", "resnet9000"]),
            "train",
            "resnet9000",
        ),
        (
            "serve",
            lambda p: p["serve"].update(unsure_below=1.5),
            "serve.unsure_below",
            "less than 1",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["cnn_compact"].update(reference="R4"),
            "train",
            "more than one candidate reproduces ['R4']",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["mlp128"].update(reference="R6"),
            "train.candidates.mlp128.reference",
            "Input should be 'R1', 'R2', 'R3', 'R4' or 'R5'",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["cnn_ensemble"]["augment"].update(max_rotate=90),
            "train.candidates.cnn_ensemble.augment.max_rotate",
            "less than or equal to 45",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["cnn_ensemble"].update(channels=[16, 32]),
            "train.candidates.cnn_ensemble.channels",
            "at least 3",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["cnn_ensemble"].update(first_layer="strided"),
            "train.candidates.cnn_ensemble.first_layer",
            "'pool' or 'stride'",
        ),
        # batch norm's statistics must come from the whole batch: conv3 archs have no micro_batch
        (
            "train",
            lambda p: p["train"]["candidates"]["cnn_fast"].update(micro_batch=32),
            "train.candidates.cnn_fast.micro_batch",
            "unknown key for arch 'conv3_linear'",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["logreg"].update(members=2),
            "train.candidates.logreg.members",
            "unknown key for arch 'logreg'",
        ),
        (
            "train",
            lambda p: p["train"]["candidates"]["cnn_ensemble"].update(members=0),
            "train.candidates.cnn_ensemble.members",
            "greater than or equal to 1",
        ),
        (
            "promote",
            lambda p: p["promote"].update(max_multiply_adds="1.5M"),
            "promote.max_multiply_adds",
            "integer",
        ),
        (
            "promote",
            lambda p: p["promote"].update(min_improvement=2),
            "promote.min_improvement",
            "less than or equal to 1",
        ),
        (
            "review",
            lambda p: p["review"].update(max_p99_increase=-0.1),
            "review.max_p99_increase",
            "greater than or equal to 0",
        ),
        (
            "review",
            lambda p: p["review"].update(max_val_acuracy_drop=0.01),
            "review.max_val_acuracy_drop",
            "unknown key (typo?)",
        ),
    ],
)
def test_bad_value_names_its_key(tmp_path, section, edit, key, words):
    path = write_with(tmp_path, edit)
    with pytest.raises(ParamsError) as error:
        load_section(path, section, SECTIONS[section])
    message = str(error.value)
    assert f"{path}: {key}:" in message
    assert words in message


def test_each_architecture_has_exactly_its_own_fields():
    candidates = load_section(ROOT / "params.yaml", "train", TrainParams).candidates
    mlp, cnn, logreg = candidates["mlp128"], candidates["cnn_compact"], candidates["logreg"]
    assert "channels" not in mlp.model_dump() and "C" not in mlp.model_dump()
    assert "hidden" not in cnn.model_dump() and "micro_batch" not in cnn.model_dump()
    assert set(logreg.model_dump()) == {
        "arch",
        "description",
        "reference",
        "train_size",
        "C",
        "max_iter",
    }


def test_no_schema_default_disagrees_with_params_yaml():
    """Every section key that params.yaml carries is required in the schema."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, model in SECTIONS.items():
        for key in params[section]:
            assert model.model_fields[key].is_required(), f"{section}.{key} has a default"


def test_candidates_logged_before_the_union_still_load():
    """A flat candidate.json of an earlier run (every architecture's fields, old arch
    names) becomes its architecture's model, so package can still rebuild that champion."""
    old = {
        "arch": "cnn_best",
        "description": "old",
        "hidden": [],
        "activation": "relu",
        "dropout": 0.1,
        "channels": [16, 24, 48],
        "first_layer": "stride",
        "init": "torch",
        "optimizer": "adamw",
        "lr": 0.005,
        "momentum": 0.0,
        "weight_decay": 0.01,
        "schedule": "onecycle",
        "label_smoothing": 0.1,
        "epochs": 30,
        "batch_size": 128,
        "micro_batch": None,
        "train_size": None,
        "members": 2,
        "tta": 0,
        "C": 1.0,
        "max_iter": 100,
        "augment": {"max_shift": 0.07, "max_rotate": 8.0, "max_scale": 0.08},
    }
    candidate = candidate_from_logged(old)
    assert isinstance(candidate, Conv3Dense) and candidate.members == 2
    assert candidate.channels == [16, 24, 48] and candidate.augment.max_rotate == 8.0
    current = load_section(ROOT / "params.yaml", "train", TrainParams).candidates["cnn_compact"]
    assert candidate_from_logged(current.model_dump()) == current
    with pytest.raises(ParamsError, match="unknown arch 'resnet'"):
        candidate_from_logged({"arch": "resnet"})


def test_missing_section_and_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split: {val_size: 1}\n")
    with pytest.raises(ParamsError, match="missing section 'fetch'"):
        load_section(path, "fetch", FetchParams)
    path.write_text("split: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_section(path, "split", SplitParams)


def test_stage_stops_before_writing_on_bad_params(tmp_path):
    path = write_with(tmp_path, lambda p: p["split"].update(seed=-3))
    out = tmp_path / "split"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.split",
            "--params",
            str(path),
            "--raw",
            str(tmp_path / "nothing"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "split: error:" in result.stderr and "split.seed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_help_describes_the_stage():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "--candidate" in result.stdout and "MLflow" in result.stdout
