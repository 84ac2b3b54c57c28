"""A new architecture as docs/extending.md adds it: its module and its params entry,
copied from the page into a copy of the suite's pipeline project, and nothing else; then
`dvc repro` trains, evaluates, scores, records, promotes and packages it."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime
import pytest
import yaml

from harness.faults import client
from harness.project import copy_project
from tests.conftest import ROOT, Project

pytestmark = pytest.mark.slow

PAGE = ROOT / "docs" / "extending.md"


def recipe() -> tuple[str, str, dict]:
    """(module path, module source, params entry) as the page gives them."""
    text = PAGE.read_text()
    source = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    entry = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    path = re.match(r"# (\S+\.py)\n", source).group(1)
    return path, source, entry


@pytest.fixture(scope="module")
def extended(tmp_path_factory, mirror, pipeline_project: Project, pipeline_store) -> Project:
    project = copy_project(pipeline_project, tmp_path_factory.mktemp("extend") / "project", mirror)
    path, source, entry = recipe()
    (project.path / path).write_text(source)
    params = project.params()
    (name,) = entry
    entry[name]["epochs"] = 2  # the small profile's
    params["train"]["candidates"] |= entry
    params["train"]["enabled"] = [name]  # the only candidate,
    # and a registered model of its own: it becomes the champion, so it is packaged too,
    # however it compares with the suite's champion after two epochs.
    params["promote"]["registered_model"] = "mnist-extended"
    project.write_params(params)
    project.repro_result = project.run("dvc", "repro")
    project.new_candidate = name
    return project


def test_a_new_architecture_runs_through_every_stage_to_the_bento(extended: Project) -> None:
    name = extended.new_candidate
    ran = extended.stages_run(extended.repro_result)
    for stage in (f"train@{name}", f"evaluate@{name}", f"robustness@{name}", "record"):
        assert stage in ran, ran
    assert {"promote", "package"} <= set(ran)
    tested = json.loads((extended.path / f"reports/candidates/{name}/metrics.json").read_text())
    assert tested["test_accuracy"] > 0.6  # a real network after 2 epochs on 2,000 digits
    corrupted = json.loads(
        (extended.path / f"reports/robustness/{name}/corruptions.json").read_text()
    )
    assert set(corrupted) == {"val", "test"}

    decision = json.loads((extended.path / "reports/promote/decision.json").read_text())
    assert decision["candidate"] == name and decision["alias_moved"]
    bento = json.loads((extended.path / "reports/package/bento.json").read_text())
    assert bento["candidate"] == name
    assert bento["onnx_check"]["label_disagreements"] == 0
    # The exported graph reads raw pixels / 255 and answers what evaluate computed.
    session = onnxruntime.InferenceSession(str(extended.path / "reports/package/model.onnx"))
    with np.load(extended.path / "data/split/test.npz", allow_pickle=False) as test:
        images = test["images"][:200]
    with np.load(
        extended.path / f"reports/candidates/{name}/predictions.npz", allow_pickle=False
    ) as reference:
        expected = reference["labels"][:200]
    (probabilities,) = session.run(None, {"images": images[:, None].astype(np.float32) / 255})
    assert (probabilities.argmax(1) == expected).all()
    assert bento["bento"] in extended.run("bentoml", "list", "-o", "json").stdout

    mlflow = client(extended)
    run = mlflow.get_run(
        json.loads((extended.path / f"models/{name}/run.json").read_text())["run_id"]
    )
    assert run.data.tags["arch"] == "lenet5" and run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(tested["test_accuracy"])
    assert "robustness_mean" in run.data.metrics  # added by record
