"""End to end: the real DVC pipeline in a temporary git repo on a small data profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PROJECT_FILES = ["pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore",
                 ".gitignore"]
ENABLED = ["mlp128", "cnn_fast"]


def small_profile(params: dict) -> dict:
    params["split"].update(val_size=1000, train_limit=2000, test_limit=1000)
    params["train"]["enabled"] = ENABLED
    for name in ENABLED:
        params["train"]["candidates"][name].update(epochs=2, train_size=None)
    return params


class Project:
    def __init__(self, path: Path, env: dict):
        self.path, self.env = path, env

    def run(self, *args: str, check: bool = True, env: dict | None = None):
        result = subprocess.run(args, cwd=self.path, env=env or self.env, capture_output=True,
                                text=True, timeout=900)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                        f"{result.stderr}")
        return result

    def stages_run(self, result) -> list[str]:
        return [line.split("'")[1] for line in result.stdout.splitlines()
                if line.startswith("Running stage")]

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror) -> Project:
    path = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src = ROOT / name
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(
            src, path / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                 if src.is_dir() else {}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MNIST_MIRROR": str(mirror)}
    env.pop("MLFLOW_TRACKING_URI", None)
    p = Project(path, env)
    p.write_params(small_profile(p.params()))
    p.run("git", "init", "-q")
    p.run("git", "add", "-A")
    p.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return p


@pytest.fixture(scope="module")
def corrupt_fetch(project, tmp_path_factory, mirror):
    """Fetch from a corrupted mirror (and no reachable URL) before the real run."""
    bad = tmp_path_factory.mktemp("bad-mirror")
    for f in mirror.iterdir():
        shutil.copy(f, bad / f.name)
    data = bytearray((bad / "train-images-idx3-ubyte.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the deflate stream
    (bad / "train-images-idx3-ubyte.gz").write_bytes(bytes(data))
    params = project.params()
    saved = params["fetch"]["mirrors"]
    params["fetch"].update(mirrors=["http://127.0.0.1:9/"], timeout_s=2, retries=0)
    project.write_params(params)
    result = project.run("dvc", "repro", "fetch", check=False,
                         env={**project.env, "MNIST_MIRROR": str(bad)})
    params["fetch"]["mirrors"] = saved
    params["fetch"].update(timeout_s=30, retries=1)
    project.write_params(params)
    return result


@pytest.fixture(scope="module")
def first_repro(project, corrupt_fetch):
    return project.run("dvc", "repro")


def test_corrupt_mirror_fails_fetch_with_message_and_no_output(project, corrupt_fetch):
    assert corrupt_fetch.returncode != 0
    output = corrupt_fetch.stdout + corrupt_fetch.stderr
    assert "could not fetch train-images-idx3-ubyte" in output
    assert "expected sha256 ba891046e6505d7a" in output or "corrupt gzip" in output
    assert "Traceback" not in output
    assert not (project.path / "data" / "raw").exists()


def test_repro_produces_outputs_and_clean_status(project, first_repro):
    stages = project.stages_run(first_repro)
    assert stages[:3] == ["fetch", "split", "normalise"]
    assert {f"train@{n}" for n in ENABLED} | {f"evaluate@{n}" for n in ENABLED} <= set(stages)
    for name in ENABLED:
        for f in ("weights.safetensors", "history.csv", "metrics.json", "run.json"):
            assert (project.path / "models" / name / f).is_file()
        metrics = json.loads((project.path / "reports/candidates" / name / "metrics.json")
                             .read_text())
        assert metrics["n_test"] == 1000 and metrics["test_accuracy"] > 0.6
        assert (project.path / "reports/candidates" / name / "confusion.png").stat().st_size > 0
    summary = json.loads((project.path / "reports/summary/summary.json").read_text())
    assert set(summary) == set(ENABLED)
    status = project.run("dvc", "status")
    assert "up to date" in status.stdout


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


def test_second_repro_runs_nothing(project, first_repro):
    result = project.run("dvc", "repro")
    assert project.stages_run(result) == []


def test_changing_one_candidates_lr_reruns_only_its_train_and_evaluate(project, first_repro):
    params = project.params()
    params["train"]["candidates"]["mlp128"]["lr"] = 0.002
    project.write_params(params)
    result = project.run("dvc", "repro")
    assert project.stages_run(result) == ["train@mlp128", "evaluate@mlp128", "summarize"]


def test_dvc_exp_run_and_show(project, first_repro):
    project.run("git", "add", "-A")
    project.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    project.run("dvc", "exp", "run", "-S", "train.candidates.mlp128.lr=0.01", "-n", "lr01")
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "lr01" in text and "0.01" in text and "test_accuracy" in text
