"""The pipeline under faults, on the small profile in a real DVC repo: each stage killed
while it writes its outputs (SIGKILL, and SIGTERM as a scheduler sends it) is repaired by
the next `dvc repro`, byte for byte; MLflow runs end truthfully; promotion and packaging
survive a kill at their weakest moments. Each repair reruns the killed stage from scratch
and must give the first run's bytes, every output of the project compared: with every stage
module killed once (and cnn_fast's training in the SIGTERM test), that is also the check
that the same params give the same bytes, stage by stage.

Kills come from pipeline/faults.py (MNIST_FAULT), at the moment most likely to leave a half file,
"while writing outputs": just before an atomic write's rename. reliability/suite.py adds kills while
importing and mid-work, on every stage of the full pipeline.
"""

from __future__ import annotations

import pytest

from harness.faults import client, killed, promotion_under_kill
from harness.project import copy_project
from tests.conftest import ENABLED, Project

pytestmark = pytest.mark.slow


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
def project(tmp_path_factory, mirror, pipeline_project: Project, pipeline_store) -> Project:
    """A copy of the suite's pipeline project after its `dvc repro`, for these tests alone
    to kill and repair; its `dvc repro` runs nothing, and its outputs are the clean state
    every repair must give back."""
    project = copy_project(pipeline_project, tmp_path_factory.mktemp("faults") / "project", mirror)
    assert project.stages_run(project.run("dvc", "repro")) == []
    project.clean = project.fingerprint()
    return project


def runs(project: Project):
    c = client(project)
    return c.search_runs([c.get_experiment_by_name("mnist").experiment_id])


# Every stage module once: the candidates' train and evaluate stages run the same code.
STAGES = [
    "fetch",
    "split",
    "normalise",
    f"train@{ENABLED[0]}",
    f"evaluate@{ENABLED[0]}",
    "photo_set",
    "corruption_set",
    f"robustness@{ENABLED[0]}",
    "record",
    "summarize",
    "promote",
    "package",
]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_while_writing_is_repaired_by_the_next_repro(project, stage):
    killed(project, stage, "atomic.replace#1:kill")
    project.run("dvc", "repro")
    assert project.fingerprint() == project.clean
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
    assert project.fingerprint() == project.clean


def test_promotion_and_packaging_killed_at_their_weakest_moments(project):
    facts = promotion_under_kill(project)
    killed_register = facts["after_register_kill"]
    assert killed_register["versions"] == facts["versions_before"] + 1  # registered, killed
    assert killed_register["champion"] == "mlp128" and killed_register["loadable"]
    killed_alias = facts["after_alias_kill"]  # moved, killed before the history was written
    assert killed_alias["champion"] == "cnn_fast" and not killed_alias["recorded"]
    assert killed_alias["loadable"]
    assert facts["previous_bento_serves"]  # package killed before building
    after = facts["after_repro"]
    assert after["versions"] == killed_register["versions"]  # no duplicate registration
    assert after["no_gap"] and after["no_double"] and after["bento_of_champion"]
    assert after["champion"] == "cnn_fast"
