"""End to end: the real DVC pipeline in a temporary git repo on a small data profile."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.serve import bentoml_serve
from tests.conftest import ENABLED, new_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corrupt_fetch(tmp_path_factory, mirror):
    """Fetch, in a fresh copy, from a corrupted mirror and no reachable URL."""
    project = new_project(tmp_path_factory.mktemp("corrupt"), mirror)
    bad = tmp_path_factory.mktemp("bad-mirror")
    for f in mirror.iterdir():
        shutil.copy(f, bad / f.name)
    data = bytearray((bad / "train-images-idx3-ubyte.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the deflate stream
    (bad / "train-images-idx3-ubyte.gz").write_bytes(bytes(data))
    params = project.params()
    params["fetch"].update(mirrors=["http://127.0.0.1:9/"], timeout_s=2, retries=0)
    project.write_params(params)
    result = project.run(
        "dvc", "repro", "fetch", check=False, env={**project.env, "MNIST_MIRROR": str(bad)}
    )
    result.project = project
    return result


@pytest.fixture(scope="module")
def project(pipeline_project):
    return pipeline_project


@pytest.fixture(scope="module")
def first_repro(pipeline_project, pipeline_store):
    return pipeline_project.repro_result


def test_corrupt_mirror_fails_fetch_with_message_and_no_output(corrupt_fetch):
    project = corrupt_fetch.project
    assert corrupt_fetch.returncode != 0
    output = corrupt_fetch.stdout + corrupt_fetch.stderr
    assert "could not fetch train-images-idx3-ubyte" in output
    assert "expected sha256 ba891046e6505d7a" in output or "corrupt gzip" in output
    assert "Traceback" not in output
    assert not (project.path / "data" / "raw").exists()


def test_repro_produces_outputs_and_clean_status(project, first_repro):
    stages = project.stages_run(first_repro)
    assert stages[:2] == ["fetch", "split"] and stages.index("feedback") < stages.index("normalise")
    assert {f"train@{n}" for n in ENABLED} | {f"evaluate@{n}" for n in ENABLED} <= set(stages)
    for name in ENABLED:
        for f in ("weights.safetensors", "history.csv", "metrics.json", "run.json"):
            assert (project.path / "models" / name / f).is_file()
        metrics = json.loads(
            (project.path / "reports/candidates" / name / "metrics.json").read_text()
        )
        assert metrics["n_test"] == 1000 and metrics["test_accuracy"] > 0.6
        assert (project.path / "reports/candidates" / name / "confusion.png").stat().st_size > 0
    summary = json.loads((project.path / "reports/summary/summary.json").read_text())
    assert set(summary) == set(ENABLED)
    status = project.run("dvc", "status")
    assert "up to date" in status.stdout
    assert (project.path / "mlartifacts").is_dir() and not (project.path / "mlruns").exists()


def test_promote_picks_best_validation_and_package_builds_a_bento(project, first_repro):
    summary = json.loads((project.path / "reports/summary/summary.json").read_text())
    decision = json.loads((project.path / "reports/promote/decision.json").read_text())
    # cnn_fast (2.1M multiply-adds an image) validates best but is over the serving budget
    # (1.5M), so the champion is the best of the rest.
    assert decision["max_multiply_adds"] == 1_500_000
    assert summary["cnn_fast"]["multiply_adds"] > 1_500_000 >= summary["mlp128"]["multiply_adds"]
    assert summary["cnn_fast"]["val_accuracy"] > summary["mlp128"]["val_accuracy"]
    assert decision["over_budget"] == ["cnn_fast"]
    assert decision["candidate"] == "mlp128" and decision["alias_moved"]
    bento = json.loads((project.path / "reports/package/bento.json").read_text())
    assert bento["onnx_check"]["label_disagreements"] == 0
    assert bento["onnx_check"]["max_probability_diff"] < 1e-5
    listed = project.run("bentoml", "list", "-o", "json")
    assert bento["bento"] in listed.stdout
    card = (project.path / "reports/package/model_card.md").read_text()
    assert decision["candidate"] in card and "Limits" in card
    calibrated = json.loads(
        (project.path / f"models/{decision['candidate']}/calibration.json").read_text()
    )
    assert f"softmax(logits / {calibrated['temperature']:.3f})" in card
    assert "expected calibration error on test" in card


def test_served_bento_answers_exactly_what_evaluate_computed(project, first_repro):
    """Differential: `bentoml serve` of the packaged Bento vs evaluate's predictions."""
    import httpx
    import numpy as np

    bento = json.loads((project.path / "reports/package/bento.json").read_text())
    candidate = bento["candidate"]
    with bentoml_serve(
        bento["bento"], env=project.env, cwd=project.path, log_path=project.path / "serve.log"
    ) as served:
        url = served.url
        with np.load(project.path / "data/split/test.npz", allow_pickle=False) as test:
            images = test["images"][:300]
        with np.load(
            project.path / f"reports/candidates/{candidate}/predictions.npz", allow_pickle=False
        ) as reference:
            labels, probs = reference["labels"][:300], reference["probabilities"][:300]
        response = httpx.post(
            f"{url}/predict",
            timeout=60,
            json={"images": images.reshape(300, -1).tolist(), "dtype": "uint8"},
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["labels"] == labels.tolist()
        # The calibrated probabilities, as evaluate computed them.
        np.testing.assert_allclose(np.array(answer["probabilities"]), probs, atol=1e-5)
        threshold = float(project.params()["serve"]["unsure_below"])
        assert answer["unsure"] == (probs.max(axis=1) < threshold).tolist()
        info = httpx.post(f"{url}/model_info", json={}, timeout=10).json()
        assert info["registry_version"] == bento["registry_version"]
        assert info["candidate"] == candidate


def test_mlflow_run_has_params_epoch_metrics_model_and_lineage(project, first_repro):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id])
    by_candidate = {r.data.tags["candidate"]: r for r in runs}
    assert set(by_candidate) == set(ENABLED)
    run = by_candidate["mlp128"]
    assert run.data.params["lr"] == "0.001" and run.data.params["batch_size"] == "32"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert "test_accuracy" in run.data.metrics  # evaluate logged into train's run
    assert len(run.data.tags["git_commit"]) >= 40
    assert len(run.data.tags["data_sha256.train"]) == 64
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"train", "val"}
    models = client.search_logged_models([experiment.experiment_id])
    assert {m.source_run_id for m in models} == {r.info.run_id for r in runs}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert "evaluate/confusion.png" in artifacts and "evaluate/mistakes.png" in artifacts


def test_robustness_is_reported_for_every_candidate_and_on_the_champions_card(project, first_repro):
    """photo_set renders test digits as people send them, once; robustness@<candidate>
    scores each candidate on them: a report, a picture, its MLflow run, its DVC scores, the
    model card."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    stages = project.stages_run(first_repro)
    assert "photo_set" in stages and {f"robustness@{n}" for n in ENABLED} <= set(stages)
    kinds = project.params()["robustness"]["kinds"]
    per_kind = project.params()["robustness"]["per_kind"]
    with np.load(project.path / "data/photo_set/digits.npz", allow_pickle=False) as photo_set:
        assert list(photo_set["kinds"]) == kinds
        assert photo_set["images"].shape == (len(kinds), per_kind, 28, 28)
        assert photo_set["index"].max() < 1000  # the test split of the small profile
    assert (project.path / "reports/robustness/examples.png").stat().st_size > 0
    client = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    for name in ENABLED:
        folder = project.path / "reports/robustness" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        run_id = json.loads((project.path / "models" / name / "run.json").read_text())["run_id"]
        assert metrics["run_id"] == run_id and set(metrics["accuracy"]) == set(kinds)
        assert metrics["reference_accuracy"] > 0.6 and metrics["accuracy"]["clean"] > 0.6
        assert (folder / "robustness.png").stat().st_size > 0
        logged = client.get_run(run_id).data.metrics
        assert logged["robustness_photo"] == metrics["accuracy"]["photo"]
    # `dvc metrics show` has the mean over kinds in each candidate's scores
    shown = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)
    for name in ENABLED:
        mean = json.loads((project.path / "reports/robustness" / name / "metrics.json").read_text())
        scores = shown[""]["data"][f"reports/scores/{name}.json"]["data"]
        assert scores["photo_accuracy"] == mean["mean_accuracy"]
    card = (project.path / "reports/package/model_card.md").read_text()
    assert "**Robustness.**" in card and "| photo |" in card


def test_second_repro_runs_nothing(project, first_repro):
    result = project.run("dvc", "repro")
    assert project.stages_run(result) == []


def test_queued_experiments_share_the_sqlite_store_two_at_a_time(project, first_repro):
    """Two experiments in temporary copies write to the workspace's mlflow.db at once:
    both finish (SQLite waits for its lock instead of failing) and both runs are there."""
    from mlflow.tracking import MlflowClient

    from harness.experiments import run_queue

    experiments = run_queue(project, ["0.0007", "0.0015"], jobs=2)
    assert len(experiments) == 2
    assert all(rev["state"] == "success" for rev in experiments.values()), experiments
    client = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert set(experiments) <= {r.data.tags.get("dvc_exp_name") for r in runs}
    for run in runs:
        if run.data.tags.get("dvc_exp_name") in experiments:
            assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
