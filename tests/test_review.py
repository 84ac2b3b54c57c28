"""make report BASE=<ref> on a real project with its own git history: a commit that
improves a candidate passes the gate, one that breaks the champion is refused (exit 1,
naming the rule), and the report's figures are the ones DVC's metrics files hold. Bad
input (an unknown ref, a dirty tree with --require-clean, a base without the pipeline)
gets a clear message and exit 2. The report runs through `make report`, as the pull
request workflow runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.project import new_project
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's, in every repository


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror):
    project = new_project(tmp_path_factory.mktemp("review") / "p", mirror)
    params = project.params()
    # One short serving run a side, fifty digits a corruption: their noise is not what
    # this test is about; the champion's validation accuracy is.
    params["review"].update(max_p99_increase=100.0, max_corruption_error_increase=1.0)
    project.write_params(params)
    project.commit("review tolerances for a small test")
    return project


def make_report(project, base: str, *extra: str):
    """`make report` as the workflow runs it (make turns every failing exit into 2)."""
    args = " ".join(["--project", str(project.path), *extra])
    return subprocess.run(
        ["make", "-s", "report", f"BASE={base}", "PROFILE=small", f"REPORT_ARGS={args}"],
        cwd=ROOT,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def report(project, base: str, *extra: str):
    """The command make runs, for its own exit status: 1 refused, 2 bad input."""
    command = [sys.executable, "-m", "review", base, "--profile", "small"]
    return subprocess.run(
        [*command, "--project", str(project.path), *extra],
        cwd=ROOT,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def set_lr(project, lr: float, message: str) -> None:
    params = project.params()
    params["train"]["candidates"]["mlp128"]["lr"] = lr
    project.write_params(params)
    project.commit(message)


def scores(project, side: str, candidate: str) -> dict:
    """A candidate's DVC metrics file as the review's commit of ``side`` holds it."""
    shown = project.run(
        "git", "-C", "review-scratch/repo", "show", f"{side}:reports/scores/{candidate}.json"
    )
    return json.loads(shown.stdout)


def test_an_improvement_passes_and_a_broken_champion_is_refused(project) -> None:
    set_lr(project, 0.003, "mlp128: a higher learning rate")
    improved = make_report(project, "HEAD~1", "--serve-rounds", "0")
    assert improved.returncode == 0, improved.stdout + improved.stderr
    out = project.path / "reports" / "review"
    page = (out / "report.md").read_text()
    summary = json.loads((out / "report.json").read_text())
    before, after = scores(project, "base", "mlp128"), scores(project, "change", "mlp128")
    assert before != after
    assert (
        f"| mlp128 | {before['val_accuracy']:.4f} → **{after['val_accuracy']:.4f}** | "
        f"{before['test_accuracy']:.4f} → **{after['test_accuracy']:.4f}** |" in page
    )
    assert summary["champions"] == {"base": "mlp128", "change": "mlp128"}
    assert summary["val_accuracy"]["change"] == after["val_accuracy"]
    assert "| train.candidates.mlp128.lr | `0.001` | `0.003` |" in page
    assert "The gate passes" in page and summary["refusals"] == []
    # Only what the change touched was trained again; the report says so.
    assert "train@mlp128" in summary["change"]["ran"]
    assert "train@cnn_fast" not in summary["change"]["ran"]
    assert "trained train@mlp128" in page
    assert sorted(p.name for p in out.glob("plot-*.png"))  # DVC's plots, as pictures
    assert (out / "plot-validation-accuracy-per-epoch.png").read_bytes()[:4] == b"\x89PNG"

    set_lr(project, 2.0, "mlp128: a learning rate that breaks it")
    broken = report(project, "HEAD~1", "--serve-rounds", "1", "--serve-seconds", "1")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "gate refuses (max_val_accuracy_drop)" in broken.stderr
    assert "review.max_val_accuracy_drop" in broken.stderr  # how to let it by
    summary = json.loads((out / "report.json").read_text())
    assert [r["rule"] for r in summary["refusals"]] == ["max_val_accuracy_drop"]
    assert summary["val_accuracy"]["base"] == after["val_accuracy"]  # the last change's
    assert summary["speed"]["change"]["requests_per_s"] > 0
    assert "The gate refuses this change" in (out / "report.md").read_text()


def test_bad_input_gets_a_clear_message_and_exit_2(project) -> None:
    unknown = report(project, "no-such-branch", "--serve-rounds", "0")
    assert unknown.returncode == 2 and "BASE=no-such-branch: no such commit" in unknown.stderr

    (project.path / "params.yaml").write_text(
        (project.path / "params.yaml").read_text() + "\n# an edit\n"
    )
    dirty = report(project, "HEAD~1", "--serve-rounds", "0", "--require-clean")
    project.run("git", "checkout", "params.yaml")
    assert dirty.returncode == 2 and "uncommitted changes (params.yaml)" in dirty.stderr

    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    orphan = project.run("git", *identity, "commit-tree", EMPTY_TREE, "-m", "before the pipeline")
    no_pipeline = report(project, orphan.stdout.strip(), "--serve-rounds", "0")
    assert no_pipeline.returncode == 2 and "has no dvc.yaml" in no_pipeline.stderr
