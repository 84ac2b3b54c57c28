"""The MLflow side as a user meets it: `mlflow ui` on 127.0.0.1 over the store a full
`dvc repro` left behind, started as `make ui` starts it. Through its REST API and in
Chromium: the experiment says it is model training and the link `make ui` prints opens
the compared runs (one per candidate, best validation error first, with the columns that
decide and what promotion made of each); the chart view draws a bar per candidate in a
colour of its own, validation error first; the registered model carries the `champion`
alias on a version logged by one of those runs, and the model card as its description.
Screenshots of each view go to tests/browser/artifacts/ (`make screenshots` takes the
same views of a real project for docs/img).

`pipeline_store` comes from tests/conftest.py: the project folder after `dvc repro`
(mlflow.db, params.yaml, ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from harness import mlflow_ui as views
from harness.project import ROOT
from harness.serve import free_port, stop
from pipeline.tracking import COMPARED_METRICS, PROMOTION_TAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_params(pipeline_store: Path) -> views.Pipeline:
    """Names the pipeline used: store, experiment, registered model, candidates trained."""
    return views.Pipeline.of(pipeline_store)


@pytest.fixture(scope="module")
def mlflow_ui(
    pipeline_params: views.Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow ui` on a free port over a copy of the pipeline's store; yields its URL."""
    with views.mlflow_ui(pipeline_params.store, tmp_path_factory.mktemp("mlflow_ui")) as url:
        yield url


def api(url: str, endpoint: str, **query: Any) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/2.0/mlflow/{endpoint}", params=query, timeout=30)
    assert response.status_code == 200, f"{endpoint}: {response.status_code} {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def tracked(mlflow_ui: str, pipeline_params: views.Pipeline) -> dict[str, Any]:
    """What the REST API says: the experiment, its runs, the registered model."""
    experiment = api(
        mlflow_ui, "experiments/get-by-name", experiment_name=pipeline_params.experiment
    )["experiment"]
    response = httpx.post(
        f"{mlflow_ui}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment["experiment_id"]], "max_results": 1000},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    runs = response.json().get("runs", [])
    model = api(mlflow_ui, "registered-models/get", name=pipeline_params.model)
    return {"experiment": experiment, "runs": runs, "model": model["registered_model"]}


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


def evaluated_runs(runs: list[dict[str, Any]], candidate: str) -> list[dict[str, Any]]:
    """Finished runs of a candidate that carry both its validation and test accuracy."""
    return [
        run
        for run in runs
        if tags(run).get("candidate") == candidate
        and run["info"]["status"] == "FINISHED"
        and {"final_val_accuracy", "test_accuracy"} <= metrics(run).keys()
    ]


def champion(tracked: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the version with the champion alias, the run that logged it)."""
    aliases = {alias["alias"]: alias["version"] for alias in tracked["model"].get("aliases", [])}
    assert "champion" in aliases, f"aliases of the registered model: {aliases}"
    version = next(
        v for v in tracked["model"]["latest_versions"] if v["version"] == aliases["champion"]
    )
    runs = {run["info"]["run_id"]: run for run in tracked["runs"]}
    assert version["run_id"] in runs, "the champion was not logged by a run of the experiment"
    return version, runs[version["run_id"]]


def test_rest_api_lists_each_candidates_run_with_its_accuracies(
    tracked: dict[str, Any], pipeline_params: views.Pipeline
) -> None:
    assert tracked["experiment"]["lifecycle_stage"] == "active"
    for candidate in pipeline_params.candidates:
        runs = evaluated_runs(tracked["runs"], candidate)
        assert runs, f"no finished run of {candidate} with final_val_accuracy and test_accuracy"
        for run in runs:
            assert run["info"]["run_name"] == candidate
            for name in ("final_val_accuracy", "test_accuracy"):
                assert 0.5 < metrics(run)[name] <= 1.0, (candidate, name, metrics(run)[name])


def test_rest_api_shows_the_champion_alias_on_a_pipeline_run(
    tracked: dict[str, Any], pipeline_params: views.Pipeline
) -> None:
    version, run = champion(tracked)
    candidate = tags(run)["candidate"]
    assert candidate in pipeline_params.candidates
    assert version["status"] == "READY"
    version_tags = {tag["key"]: tag["value"] for tag in version.get("tags", [])}
    assert version_tags.get("candidate") == candidate
    assert {"val_accuracy", "test_accuracy"} <= version_tags.keys()
    # Lineage: the project's commit, its code and params unchanged (only DVC's outputs).
    assert re.fullmatch(r"[0-9a-f]{40}", version_tags["git_commit"]), version_tags
    assert version_tags["git_source_changed"] == "false", version_tags
    assert run in evaluated_runs(tracked["runs"], candidate)
    card_title = f"# MNIST digit classifier: {candidate}"
    assert version["description"].startswith(card_title)
    assert tracked["model"]["description"].startswith(card_title)


def test_the_experiment_says_it_is_model_training(tracked: dict[str, Any]) -> None:
    experiment_tags = {t["key"]: t["value"] for t in tracked["experiment"].get("tags", [])}
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_tags["mlflow.experiment.primaryMetric.name"] == "val_error_pct"
    assert "val_error_pct" in experiment_tags["mlflow.note.content"]
    view = json.loads(experiment_tags["mlflow.sharedViewState.candidates"])
    assert view["orderByKey"] == "metrics.`val_error_pct`" and view["orderByAsc"] is True


def test_each_run_says_what_promotion_made_of_it_in_a_colour_of_its_own(
    tracked: dict[str, Any], pipeline_params: views.Pipeline
) -> None:
    """The runs promote compared carry its note (exactly one is the served champion) and
    distinct colours; their error metrics are the accuracies in percent."""
    _, champion_run = champion(tracked)
    compared = [run for run in tracked["runs"] if PROMOTION_TAG in tags(run)]
    assert sorted(tags(run)["candidate"] for run in compared) == sorted(pipeline_params.candidates)
    served = [run for run in compared if tags(run)[PROMOTION_TAG].startswith("champion: served")]
    assert served == [champion_run]
    others = [tags(run)[PROMOTION_TAG] for run in compared if run is not champion_run]
    assert all(note.startswith(("eligible:", "not eligible:", "best eligible")) for note in others)
    colours = [tags(run)["mlflow.runColor"] for run in compared]
    assert len(set(colours)) == len(colours), colours
    for run in compared:
        m = metrics(run)
        assert m["val_error_pct"] == pytest.approx(100 * (1 - m["final_val_accuracy"]), abs=1e-3)
        assert m["test_error_pct"] == pytest.approx(100 * (1 - m["test_accuracy"]), abs=1e-3)
        assert set(COMPARED_METRICS) <= m.keys(), sorted(m)


def test_a_runs_duration_is_its_own_work(tracked: dict[str, Any]) -> None:
    """Train owns its run and ends it; the stages after it (evaluate, robustness, record)
    add to the run without moving its end to when they ran, after every other candidate
    had trained."""
    for run in tracked["runs"]:
        seconds = (int(run["info"]["end_time"]) - int(run["info"]["start_time"])) / 1000
        own = metrics(run)["train_seconds"]
        # What remains is the final validation and logging (the model, its artifacts).
        assert own <= seconds <= own + 20, (run["info"], own)
        assert "test_accuracy" in metrics(run) and "robustness_mean" in metrics(run)


def test_training_runs_log_system_metrics(tracked: dict[str, Any]) -> None:
    for run in tracked["runs"]:
        logged = metrics(run)
        assert logged["system/cpu_utilization_percentage"] >= 0, run["info"]["run_name"]
        assert logged["system/system_memory_usage_megabytes"] > 0, run["info"]["run_name"]


@pytest.fixture
def page(browser: Any, mlflow_ui: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    foreign: list[str] = []
    page.on(
        "request",
        lambda r: foreign.append(r.url) if not r.url.startswith((mlflow_ui, "data:")) else None,
    )
    yield page
    context.close()
    assert foreign == [], f"the MLflow UI reached other origins: {foreign}"


def test_the_link_make_ui_prints_opens_the_compared_runs(
    page: Any,
    mlflow_ui: str,
    tracked: dict[str, Any],
    pipeline_params: views.Pipeline,
    artifacts: Path,
) -> None:
    """The runs list opens with the columns that decide, best validation error first, and
    the champion marked; no clicking needed."""
    experiment_id = tracked["experiment"]["experiment_id"]
    views.open_runs(page, mlflow_ui, experiment_id)
    for candidate in pipeline_params.candidates:
        expect(page.get_by_role("link", name=candidate, exact=True).first).to_be_visible()
    for column in (*COMPARED_METRICS, PROMOTION_TAG):
        expect(page.get_by_role("columnheader").filter(has_text=column).first).to_be_visible()
    expect(page.get_by_text(f"{len(tracked['runs'])} matching runs")).to_be_visible()
    assert f"/experiments/{experiment_id}/runs" in page.url
    page.screenshot(path=str(artifacts / "mlflow_experiment_runs.png"))
    shown = [
        name
        for row in page.get_by_role("row").all_inner_texts()
        for name in pipeline_params.candidates
        if name in row.split()  # the run name's cell; a note names others with "'s"
    ]
    by_validation = sorted(
        (run for run in tracked["runs"] if PROMOTION_TAG in tags(run)),
        key=lambda run: metrics(run)["val_error_pct"],
    )
    assert shown[: len(by_validation)] == [tags(run)["candidate"] for run in by_validation], shown

    _, run = champion(tracked)
    run_page = f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run['info']['run_id']}"
    page.goto(f"{run_page}?workflowType=machine_learning")
    for name in ("final_val_accuracy", "test_accuracy"):
        cell = page.get_by_role("cell", name=name, exact=True).first
        expect(cell).to_be_visible(timeout=60_000)
        shown = page.get_by_role("row").filter(has=cell).first.inner_text()
        numbers = [float(n) for n in re.findall(r"\d+\.\d+", shown)]
        assert any(abs(n - metrics(run)[name]) < 1e-3 for n in numbers), (name, shown)
    page.screenshot(path=str(artifacts / "mlflow_champion_run.png"), full_page=True)
    page.goto(f"{run_page}/model-metrics?workflowType=machine_learning")
    page.get_by_placeholder("Search metric charts").fill("accuracy")
    expect(page.get_by_text("val_accuracy", exact=True).first).to_be_visible(timeout=60_000)
    # final_val_accuracy, test_accuracy, train_accuracy, val_accuracy: drawn, not loading
    expect(page.locator(".js-plotly-plot")).to_have_count(4, timeout=60_000)
    page.screenshot(path=str(artifacts / "mlflow_run_curves.png"))


def test_the_chart_view_draws_a_bar_per_candidate(
    page: Any,
    mlflow_ui: str,
    tracked: dict[str, Any],
    pipeline_params: views.Pipeline,
    artifacts: Path,
) -> None:
    """The compared metrics come first, validation error leading, a bar per candidate in
    the run's own colour."""
    experiment_id = tracked["experiment"]["experiment_id"]
    first = views.open_charts(page, mlflow_ui, experiment_id)
    expect(first.get_by_text("val_error_pct", exact=True)).to_be_visible()
    page.screenshot(path=str(artifacts / "mlflow_chart_view.png"))
    bars = first.locator("g.point path")
    expect(bars).to_have_count(len(pipeline_params.candidates))
    fills = bars.evaluate_all("paths => paths.map(p => getComputedStyle(p).fill)")
    assert len(set(fills)) == len(fills), fills
    search = page.get_by_placeholder("Search metric charts")
    cards = page.locator("[data-testid='experiment-view-compare-runs-card']")
    for metric in COMPARED_METRICS:
        search.fill(metric)
        card = cards.filter(has=page.get_by_text(metric, exact=True))
        expect(card).to_have_count(1, timeout=30_000)
        # Plotly draws each run's bar as a point of the bar trace.
        expect(card.locator("g.point")).to_have_count(len(pipeline_params.candidates))


def test_model_page_shows_the_champion_alias(
    page: Any,
    mlflow_ui: str,
    tracked: dict[str, Any],
    pipeline_params: views.Pipeline,
    artifacts: Path,
) -> None:
    version, _ = champion(tracked)
    views.open_registry(page, mlflow_ui, pipeline_params.model)
    version_row = page.get_by_role("row").filter(
        has=page.get_by_role("link", name=f"Version {version['version']}", exact=True)
    )
    expect(version_row).to_have_count(1, timeout=60_000)
    expect(version_row.get_by_text(re.compile(r"^@\s*champion$"))).to_be_visible()
    expect(page.get_by_text("MNIST digit classifier:").first).to_be_visible()  # the card
    page.screenshot(path=str(artifacts / "mlflow_registered_model.png"), full_page=True)


def test_make_ui_prints_the_link_only_once_the_ui_answers(
    pipeline_params: views.Pipeline, tmp_path: Path
) -> None:
    """`python -m deploy.ui` (what `make ui` runs) on a copy of the store: the first line
    it prints is the compared-runs link, and the server answers it by then."""
    shutil.copy2(pipeline_params.store, tmp_path / "mlflow.db")
    shutil.copy2(pipeline_params.store.parent / "params.yaml", tmp_path / "params.yaml")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.ui", "--port", str(port), "--params", "params.yaml"],
        cwd=tmp_path,
        env={**os.environ, "DVC_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []  # MLflow may log a line of its own first
        while not (lines and lines[-1].startswith("the candidates compared")):
            lines.append(process.stdout.readline())  # blocks until a line is printed
            assert lines[-1], f"deploy.ui ended without printing the link: {lines}"
        line = lines[-1]
        assert line.startswith("the candidates compared: http://127.0.0.1:"), line
        assert "viewStateShareKey=candidates" in line and "workflowType=machine_learning" in line
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        stop(process)
