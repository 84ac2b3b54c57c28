"""pipeline.tracking against a real MLflow SQLite store: the experiment's tags, a run's end
after evaluate, where a stage runs (workspace or an experiment's temporary copy), and the
lineage a run carries."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import tracking
from pipeline.params import MlflowParams


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return MlflowParams(experiment="tracking-test", store="unused.db", system_metrics=False)


def test_setup_tags_new_and_existing_experiments(store):
    import mlflow

    experiment_id = tracking.setup(store)
    client = mlflow.MlflowClient()
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")
    assert tracking.setup(store) == experiment_id  # an existing store gets it back
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == tracking.EXPERIMENT_TAGS["mlflow.note.content"]


def test_adding_to_a_run_leaves_its_end_and_adds_each_digest_once(store, tmp_path):
    import mlflow

    experiment_id = tracking.setup(store)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("train_seconds", 1.0)
    client = mlflow.MlflowClient()
    before = client.get_run(run.info.run_id).info
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    folders = {"evaluate": tmp_path / "out"}

    def add(value: float, digest: str) -> bool:
        return tracking.add_to_run(
            run.info.run_id, {"test_accuracy": value}, folders, "recorded_sha256", digest
        )

    assert add(0.9, "a")
    after = client.get_run(run.info.run_id)
    assert (after.info.status, after.info.end_time) == (before.status, before.end_time)
    assert after.data.metrics["test_accuracy"] == 0.9
    assert after.data.tags["recorded_sha256"] == "a"
    listed = [a.path for a in client.list_artifacts(run.info.run_id, "evaluate")]
    assert listed == ["evaluate/metrics.json"]
    assert not add(0.5, "a")  # the same files: nothing logged twice
    assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1
    assert add(0.8, "b")  # new files for the same run: added
    assert client.get_run(run.info.run_id).data.metrics["test_accuracy"] == 0.8


def test_a_stage_knows_whether_it_runs_in_the_workspace(tmp_path, monkeypatch):
    workspace, copy = tmp_path / "repo", tmp_path / "repo/.dvc/tmp/exps/tmp1"
    copy.mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.in_workspace()  # outside DVC: the user ran the module by hand
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.chdir(workspace)
    assert tracking.in_workspace() and tracking.project_root() == workspace.resolve()
    monkeypatch.chdir(copy)  # a queued experiment: DVC_ROOT still names the workspace
    assert not tracking.in_workspace() and tracking.project_root() == workspace.resolve()


def test_lineage_names_the_experiment_user_host_and_dvc_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.npz").write_bytes(b"data")
    lock = {"stages": {"normalise": {"outs": [{"path": "data/normalised", "md5": "ab.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1a2b3")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c0ffee")
    tags = tracking.lineage_tags({"train": tmp_path / "x.npz"}, dvc_outs=(Path("data/normalised"),))
    assert tags["dvc_exp_name"] == "exp-1a2b3" and tags["dvc_exp_baseline_rev"] == "c0ffee"
    assert tags["dvc_md5.data/normalised"] == "ab.dir"
    assert tags["user"] and tags["host"]
    assert len(tags["data_sha256.train"]) == 64
    assert tracking.dvc_md5(Path("data/other")) is None


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_lineage_tells_changed_code_from_rewritten_outputs(tmp_path):
    """Outputs DVC records in dvc.lock (and dvc.lock) changing is not a code change; a
    changed module or params.yaml is."""
    lock = {"stages": {"train": {"outs": [{"path": "models/a/metrics.json", "md5": "1"},
                                          {"path": "reports/a", "md5": "2.dir"}]}}}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    for name in ("models/a/metrics.json", "reports/a/classes.csv", "code.py", "params.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")

    clean = tracking.git_lineage(tmp_path)
    assert len(clean["git_commit"]) == 40 and clean["git_source_changed"] == "false"
    assert clean["git_changed_outputs"] == "0"

    (tmp_path / "models/a/metrics.json").write_text("v2")
    (tmp_path / "reports/a/classes.csv").write_text("v2")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock) + "# rerun\n")
    rerun = tracking.git_lineage(tmp_path)
    assert rerun["git_source_changed"] == "false" and rerun["git_changed_outputs"] == "3"
    assert rerun["git_commit"] == clean["git_commit"]

    (tmp_path / "code.py").write_text("v2")
    (tmp_path / "params.yaml").write_text("v2")
    edited = tracking.git_lineage(tmp_path)
    assert edited["git_source_changed"] == "true"
    assert edited["git_changed_source"] == "code.py, params.yaml"


def test_lineage_outside_git_says_unknown(tmp_path):
    assert tracking.git_lineage(tmp_path) == {"git_commit": "unknown"}
