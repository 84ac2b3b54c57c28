"""Working as a team, against real components on 127.0.0.1: the small-profile pipeline
logging to `mlflow server` (PostgreSQL behind it, artifacts in an S3-compatible store),
a DVC remote in the same store that a fresh clone pulls from, and experiments queued with
`dvc exp run --queue` and run two at a time."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest

from harness.experiments import run_queue
from tests.conftest import ENABLED, Project
from tests.team.conftest import s3_client

pytestmark = pytest.mark.slow

MODEL = "mnist-classifier"


@pytest.fixture(scope="module")
def client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.tracking_uri)


@pytest.fixture(scope="module")
def runs(client, server_project):
    experiment = client.get_experiment_by_name("mnist")
    return client.search_runs([experiment.experiment_id])


def test_every_run_model_dataset_and_the_alias_land_on_the_server(
    server_project: Project, client, runs
):
    assert not (server_project.path / "mlflow.db").exists()  # nothing went to a local store
    assert not (server_project.path / "mlartifacts").exists()
    by_candidate = {r.data.tags["candidate"]: r for r in runs}
    assert set(by_candidate) == set(ENABLED)
    for run in runs:
        assert {"final_val_accuracy", "test_accuracy"} <= run.data.metrics.keys()
        assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"train", "val"}
        assert run.data.tags["host"] and run.data.tags["user"]
        assert run.data.tags["dvc_md5.data/normalised"].endswith(".dir")
    logged = client.search_logged_models([runs[0].info.experiment_id])
    assert {m.source_run_id for m in logged} == {r.info.run_id for r in runs}
    champion = client.get_model_version_by_alias(MODEL, "champion")
    decision = json.loads((server_project.path / "reports/promote/decision.json").read_text())
    assert decision["applied"] and str(decision["champion_version"]) == champion.version
    assert (
        champion.tags["dvc_md5.data/normalised"]
        == (by_candidate[decision["candidate"]].data.tags["dvc_md5.data/normalised"])
    )
    history = json.loads(client.get_registered_model(MODEL).tags["champion_history"])
    assert [h["version"] for h in history] == [champion.version]


def test_artifacts_are_in_the_object_store(stack, runs, server_project: Project):
    """The server proxies artifacts into its bucket: listed through the S3 API itself."""
    s3 = s3_client(stack)
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
        for obj in page.get("Contents", [])
    ]
    for run in runs:
        mine = [k for k in keys if f"/{run.info.run_id}/" in k]
        assert any(k.endswith("train/weights.safetensors") for k in mine), run.info.run_name
        assert any(k.endswith("evaluate/confusion.png") for k in mine), run.info.run_name
    weights = server_project.path / "models/mlp128/weights.safetensors"
    run = next(r for r in runs if r.data.tags["candidate"] == "mlp128")
    key = next(k for k in keys if f"/{run.info.run_id}/" in k and k.endswith("weights.safetensors"))
    body = s3.get_object(Bucket="mlflow", Key=key)["Body"].read()
    assert body == weights.read_bytes()


def test_the_bento_is_built_from_the_servers_champion(server_project: Project, client):
    bento = json.loads((server_project.path / "reports/package/bento.json").read_text())
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert bento["applied"] and bento["registry_version"] == champion.version
    onnx = (server_project.path / "reports/package/model.onnx").read_bytes()
    assert bento["onnx_sha256"] == hashlib.sha256(onnx).hexdigest()
    listed = server_project.run("bentoml", "list", "-o", "json").stdout
    assert bento["bento"] in listed
    model = server_project.run(
        "python",
        "-c",
        f"import bentoml, json; print(json.dumps(bentoml.models.get({bento['model']!r})"
        ".info.labels))",
    )
    labels = json.loads(model.stdout)
    assert labels["registry_version"] == champion.version
    assert labels["onnx_sha256"] == bento["onnx_sha256"]


def test_the_champion_loads_through_the_server_and_predicts_as_evaluate_did(
    stack, server_project: Project, monkeypatch
):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.tracking_uri)
    decision = json.loads((server_project.path / "reports/promote/decision.json").read_text())
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    with np.load(server_project.path / "data/split/test.npz", allow_pickle=False) as test:
        pixels = (test["images"][:200].astype(np.float32) / 255)[:, None]
    reports = server_project.path / "reports/candidates" / decision["candidate"]
    with np.load(reports / "predictions.npz", allow_pickle=False) as reference:
        expected = reference["probabilities"][:200]
    np.testing.assert_allclose(np.asarray(model.predict(pixels)), expected, atol=1e-5)


def test_a_fresh_clone_pulls_everything_and_reruns_nothing(
    server_project: Project, stack, tmp_path
):
    server_project.run("dvc", "push")
    server_project.commit("a full run")
    clone_path = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(server_project.path), str(clone_path)], check=True)
    clone = Project(clone_path, server_project.env)
    # The remote's name and bucket come with .dvc/config; its endpoint and keys are local
    # (a teammate sets them with `dvc remote modify --local`), never in git.
    shared = (clone_path / ".dvc/config").read_text()
    assert "s3://dvc/project" in shared
    assert stack.s3_endpoint not in shared and "secret_access_key" not in shared
    shutil.copy(server_project.path / ".dvc/config.local", clone_path / ".dvc/config.local")
    assert not (clone_path / "models/mlp128/weights.safetensors").exists()
    clone.run("dvc", "pull")
    assert (clone_path / "models/mlp128/weights.safetensors").read_bytes() == (
        server_project.path / "models/mlp128/weights.safetensors"
    ).read_bytes()
    assert clone.stages_run(clone.run("dvc", "repro")) == []
    assert "in sync" in clone.run("dvc", "status", "-c").stdout


def test_queued_experiments_run_side_by_side_and_never_promote(
    server_project: Project, client, runs
):
    before = {
        "champion": client.get_model_version_by_alias(MODEL, "champion").version,
        "versions": len(client.search_model_versions(f"name = '{MODEL}'")),
        "bentos": server_project.run("bentoml", "list", "-o", "json").stdout.count('"tag"'),
    }
    experiments = run_queue(server_project, ["0.0005", "0.003"], jobs=2)
    assert len(experiments) >= 2, experiments.keys()
    names = list(experiments)
    for rev in experiments.values():
        metrics = rev["data"]["metrics"]
        assert rev["state"] == "success" and not rev.get("error"), rev
        assert "reports/scores/mlp128.json" in metrics
    experiment_id = client.get_experiment_by_name("mnist").experiment_id
    all_runs = client.search_runs([experiment_id], max_results=1000)
    tagged = {r.data.tags.get("dvc_exp_name") for r in all_runs} - {None}
    assert set(names) <= tagged
    # Only mlp128's params changed: cnn_fast was not retrained in any experiment.
    assert sum(r.data.tags["candidate"] == "cnn_fast" for r in all_runs) == 1
    assert sum(r.data.tags["candidate"] == "mlp128" for r in all_runs) == 1 + len(names)
    # Nothing shared moved: the alias, the registry, the Bentos.
    assert client.get_model_version_by_alias(MODEL, "champion").version == before["champion"]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == before["versions"]
    bentos = server_project.run("bentoml", "list", "-o", "json").stdout.count('"tag"')
    assert bentos == before["bentos"]
    workspace = json.loads((server_project.path / "reports/promote/decision.json").read_text())
    assert workspace["applied"]

    # The winner by validation accuracy comes into the workspace, where promotion happens.
    def mlp_val(rev):
        return rev["data"]["metrics"]["reports/scores/mlp128.json"]["data"]["val_accuracy"]

    best = max(names, key=lambda n: mlp_val(experiments[n]))
    server_project.run("dvc", "exp", "apply", best)
    recorded = json.loads((server_project.path / "reports/promote/decision.json").read_text())
    assert not recorded["applied"] and recorded["dvc_experiment"] == best
    result = server_project.run("dvc", "repro", "--force", "--downstream", "promote")
    assert server_project.stages_run(result) == ["promote", "package", "drift"]
    applied = json.loads((server_project.path / "reports/promote/decision.json").read_text())
    assert applied["applied"]
