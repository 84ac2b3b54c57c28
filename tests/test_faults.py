"""The pipeline under faults, on the small profile in a real DVC repo: each stage killed
while it writes its outputs (SIGKILL, and SIGTERM as a scheduler sends it) is repaired by
the next `dvc repro`, byte for byte; MLflow runs end truthfully; promotion and packaging
survive a kill at their weakest moments; and two forced runs give the same bytes.

Kills come from pipeline/faults.py (MNIST_FAULT), at the moment the issue names "while
writing outputs": just before an atomic write's rename. bench/chaos.py adds kills while
importing and mid-work, on every stage of the full pipeline.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from tests.conftest import ENABLED, Project, new_project
from tests.support.serve import bentoml_serve

pytestmark = pytest.mark.slow

# Outputs whose bytes the same params must reproduce (the others carry MLflow run ids,
# registry versions, Bento tags or timings).
VARYING = {
    "run.json",
    "summary.json",
    "summary.csv",
    "decision.json",
    "bento.json",
    "model_card.md",
    "bentofile.yaml",
}
MODEL = "mnist-classifier"


def fingerprint(project: Project) -> dict[str, str]:
    """sha256 of every reproducible output file."""
    found = {}
    for folder in ("data", "models", "reports"):
        for path in sorted((project.path / folder).rglob("*")):
            skip = path.name in VARYING or path.name == ".gitignore" or path.suffix == ".tmp"
            if path.is_file() and not skip:
                found[str(path.relative_to(project.path))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return found


def unignored_leftovers(project: Project) -> list[str]:
    """Temporary files a kill left that git or DVC would see (both ignore `.*.tmp`)."""
    found = [
        str(p.relative_to(project.path))
        for folder in ("data", "models", "reports")
        for p in (project.path / folder).rglob("*.tmp")
    ]
    return [
        path
        for path in found
        if project.run("git", "check-ignore", "-q", path, check=False).returncode != 0
        or project.run("dvc", "check-ignore", "-q", path, check=False).returncode != 0
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror) -> Project:
    project = new_project(tmp_path_factory.mktemp("faults"), mirror)
    project.run("dvc", "repro")
    project.clean = fingerprint(project)
    return project


def client(project: Project):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")


def runs(project: Project):
    c = client(project)
    return c.search_runs([c.get_experiment_by_name("mnist").experiment_id])


def killed(project: Project, stage: str, fault: str):
    """Run one stage (and only it) with a fault; it must die as the fault says."""
    result = project.run(
        "dvc",
        "repro",
        "--force",
        "--single-item",
        stage,
        check=False,
        env={**project.env, "MNIST_FAULT": fault},
    )
    assert result.returncode != 0, f"{stage} survived {fault}"
    return result


def test_two_forced_runs_give_the_same_bytes(project):
    project.run("dvc", "repro", "--force")
    assert fingerprint(project) == project.clean


STAGES = [
    "fetch",
    "split",
    "normalise",
    *(f"train@{n}" for n in ENABLED),
    *(f"evaluate@{n}" for n in ENABLED),
    "summarize",
    "promote",
    "package",
]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_while_writing_is_repaired_by_the_next_repro(project, stage):
    killed(project, stage, "atomic.replace#1:kill")
    project.run("dvc", "repro")
    assert fingerprint(project) == project.clean
    assert "up to date" in project.run("dvc", "status").stdout
    assert unignored_leftovers(project) == []


def test_sigterm_ends_the_run_killed_and_sigkill_leaves_an_orphan_the_next_run_ends(project):
    before = {r.info.run_id for r in runs(project)}
    result = killed(project, "train@cnn_fast", "atomic.replace#1:term")
    assert "interrupted (signal SIGTERM)" in result.stderr
    terminated = [r for r in runs(project) if r.info.run_id not in before]
    assert [r.info.status for r in terminated] == ["KILLED"]

    before |= {r.info.run_id for r in terminated}
    killed(project, "train@mlp128", "atomic.replace#1:kill")
    orphan = next(r for r in runs(project) if r.info.run_id not in before)
    assert orphan.info.status == "RUNNING"  # SIGKILL gives no chance to end it
    project.run("dvc", "repro")
    after = client(project).get_run(orphan.info.run_id)
    assert after.info.status == "KILLED"  # the candidate's next run ended it
    assert [r for r in runs(project) if r.info.status == "RUNNING"] == []
    logged = client(project).search_logged_models(
        [after.info.experiment_id], filter_string=f"source_run_id = '{orphan.info.run_id}'"
    )
    assert all(str(m.status) != "PENDING" for m in logged)
    assert fingerprint(project) == project.clean


def champion_and_history(project: Project):
    c = client(project)
    champion = c.get_model_version_by_alias(MODEL, "champion")
    return champion, json.loads(c.get_registered_model(MODEL).tags["champion_history"])


def test_promotion_killed_between_register_and_alias_keeps_a_loadable_champion(project):
    import mlflow

    versions_before = client(project).search_model_versions(f"name = '{MODEL}'")
    params = project.params()
    params["promote"]["max_multiply_adds"] = None  # cnn_fast now fits, and validates best
    project.write_params(params)
    killed(project, "promote", "promote.registered:kill")
    champion, history = champion_and_history(project)
    versions = client(project).search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == len(versions_before) + 1  # registered, then killed
    assert champion.tags["candidate"] == "mlp128"  # the alias did not move
    mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@champion") is not None

    previous_bento = json.loads((project.path / "reports/package/bento.json").read_text())
    killed(project, "promote", "registry.alias_moved:kill")  # moved, history not written
    champion, history = champion_and_history(project)
    assert champion.tags["candidate"] == "cnn_fast" and history[-1]["version"] != champion.version

    # The package stage killed before building: what was served still serves.
    killed(project, "package", "package.stored:kill")
    with bentoml_serve(
        previous_bento["bento"],
        env=project.env,
        cwd=project.path,
        log_path=project.path / "serve.log",
    ) as served:
        import httpx

        assert httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200

    project.run("dvc", "repro")
    champion, history = champion_and_history(project)
    assert len(client(project).search_model_versions(f"name = '{MODEL}'")) == len(versions)
    assert history[-1]["version"] == champion.version  # no gap
    assert all(a["version"] != b["version"] for a, b in itertools.pairwise(history))  # no double
    bento = json.loads((project.path / "reports/package/bento.json").read_text())
    assert bento["registry_version"] == str(champion.version) and bento["candidate"] == "cnn_fast"
