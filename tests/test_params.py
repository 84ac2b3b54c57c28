import subprocess
import sys

import pytest
import yaml

from pipeline.params import (EvaluateParams, FetchParams, MlflowParams, NormaliseParams,
                             ParamsError, PromoteParams, SplitParams, TrainParams, load_section)
from tests.conftest import ROOT

SECTIONS = {"fetch": FetchParams, "split": SplitParams, "normalise": NormaliseParams,
            "train": TrainParams, "evaluate": EvaluateParams, "mlflow": MlflowParams,
            "promote": PromoteParams}


def test_repository_params_are_valid():
    for section, model in SECTIONS.items():
        load_section(ROOT / "params.yaml", section, model)


def write_with(tmp_path, edit):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("section, edit, key, words", [
    ("split", lambda p: p["split"].update(val_sise=5), "split.val_sise", "unknown key"),
    ("split", lambda p: p["split"].update(val_size="10k"), "split.val_size", "integer"),
    ("split", lambda p: p["split"].update(val_size=-1), "split.val_size", "greater than 0"),
    ("fetch", lambda p: p["fetch"].update(mirrors=[]), "fetch.mirrors", "at least 1"),
    ("normalise", lambda p: p["normalise"].update(standardise="yes"),
     "normalise.standardise", "boolean"),
    ("train", lambda p: p["train"]["candidates"]["mlp128"].update(lr=-0.1),
     "train.candidates.mlp128.lr", "greater than 0"),
    ("train", lambda p: p["train"]["candidates"]["mlp128"].update(optimiser="sgd"),
     "train.candidates.mlp128.optimiser", "unknown key"),
    ("train", lambda p: p["train"]["candidates"]["mlp128"].update(activation="gelu"),
     "train.candidates.mlp128.activation", "relu"),
    ("train", lambda p: p["train"]["candidates"]["mlp128"].update(hidden=[]),
     "train.candidates.mlp128", "non-empty 'hidden'"),
    ("train", lambda p: p["train"]["candidates"]["mlp128"].pop("arch"),
     "train.candidates.mlp128.arch", "required"),
    ("train", lambda p: p["train"].update(enabled=["mlp128", "resnet9000"]),
     "train", "resnet9000"),
    ("train", lambda p: p["train"]["candidates"]["cnn_best"]["augment"].update(max_rotate=90),
     "train.candidates.cnn_best.augment.max_rotate", "less than or equal to 45"),
    ("train", lambda p: p["train"]["candidates"]["cnn_best"].update(channels=[16, 32]),
     "train.candidates.cnn_best.channels", "at least 3"),
    ("train", lambda p: p["train"]["candidates"]["cnn_best"].update(first_layer="strided"),
     "train.candidates.cnn_best.first_layer", "'pool' or 'stride'"),
    ("train", lambda p: p["train"]["candidates"]["cnn_fast"].update(micro_batch=32),
     "train.candidates.cnn_fast", "batch norm"),
    ("train", lambda p: p["train"]["candidates"]["logreg"].update(members=2),
     "train.candidates.logreg", "one scikit-learn model"),
    ("train", lambda p: p["train"]["candidates"]["cnn_best"].update(members=0),
     "train.candidates.cnn_best.members", "greater than or equal to 1"),
    ("promote", lambda p: p["promote"].update(max_multiply_adds="1.5M"),
     "promote.max_multiply_adds", "integer"),
    ("promote", lambda p: p["promote"].update(min_improvement=2),
     "promote.min_improvement", "less than or equal to 1"),
])
def test_bad_value_names_its_key(tmp_path, section, edit, key, words):
    path = write_with(tmp_path, edit)
    with pytest.raises(ParamsError) as error:
        load_section(path, section, SECTIONS[section])
    message = str(error.value)
    assert f"{path}: {key}:" in message
    assert words in message


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
    result = subprocess.run([sys.executable, "-m", "pipeline.split", "--params", str(path),
                             "--raw", str(tmp_path / "nothing"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "split: error:" in result.stderr and "split.seed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_help_describes_the_stage():
    result = subprocess.run([sys.executable, "-m", "pipeline.train", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "--candidate" in result.stdout and "MLflow" in result.stdout
