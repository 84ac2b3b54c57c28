"""The MLflow UI as a newcomer meets it after `make run`: started over a copy of a
project's store, and its four views (the compared runs, the chart view, the champion's
curves, the registry) opened in Chromium. The browser test checks these views; this
module's command writes their screenshots into docs/img from a real project.

    python -m harness.mlflow_ui [--project .] [--out docs/img]

In: a project folder after `dvc repro` (params.yaml, mlflow.db). Out: PNG screenshots.
Needs the test tools (`make install`) and Chromium (`make system-tools`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.ui import runs_page, serve, wait_until_healthy
from harness.chromium import CHROMIUM, CHROMIUM_FLAGS
from harness.serve import free_port, stop

VIEWPORT = {"width": 1400, "height": 900}
SCREENSHOTS = (
    "mlflow_experiment_runs.png",
    "mlflow_chart_view.png",
    "mlflow_run_curves.png",
    "mlflow_registered_model.png",
)


@dataclass(frozen=True)
class Pipeline:
    """What the project's params name: its store, experiment, registered model, candidates."""

    store: Path
    experiment: str
    model: str
    candidates: list[str]

    @classmethod
    def of(cls, project: Path) -> Pipeline:
        params = yaml.safe_load((project / "params.yaml").read_text())
        return cls(
            store=project / params["mlflow"]["store"],
            experiment=params["mlflow"]["experiment"],
            model=params["promote"]["registered_model"],
            candidates=list(params["train"]["enabled"]),
        )


@contextmanager
def mlflow_ui(store: Path, folder: Path) -> Iterator[str]:
    """`mlflow ui` (as `make ui` starts it) on a free port over a copy of ``store`` in
    ``folder`` (a schema upgrade on start-up cannot touch the original); yields its URL
    and stops its process group whatever happens."""
    shutil.copy2(store, folder / "mlflow.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (folder / "mlflow_ui.log").open("wb") as log:
        process = serve(
            f"sqlite:///{folder / 'mlflow.db'}",
            port,
            cwd=folder,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_until_healthy(process, url)
        yield url
    finally:
        stop(process)


def rest(url: str, endpoint: str, **query: Any) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/2.0/mlflow/{endpoint}", params=query, timeout=30)
    response.raise_for_status()
    return response.json()


def champion_run_id(url: str, model: str) -> str:
    registered = rest(url, "registered-models/get", name=model)["registered_model"]
    version = next(a["version"] for a in registered["aliases"] if a["alias"] == "champion")
    return rest(url, "model-versions/get", name=model, version=version)["model_version"]["run_id"]


def open_runs(page: Any, url: str, experiment_id: str) -> None:
    """The link `make ui` prints, with every candidate's row drawn (and MLflow's
    assistant panel, which a new browser opens beside them, closed)."""
    page.goto(runs_page(url, experiment_id))
    page.get_by_text("val_error_pct").first.wait_for(timeout=60_000)
    page.get_by_text("champion: served").first.wait_for(timeout=60_000)
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()


def open_charts(page: Any, url: str, experiment_id: str) -> Any:
    """The chart view; returns the first chart card once its bars are drawn."""
    page.goto(runs_page(url, experiment_id) + "&compareRunsMode=CHART")
    card = page.locator("[data-testid='experiment-view-compare-runs-card']").first
    card.locator("g.point").first.wait_for(timeout=60_000)
    return card


def open_curves(page: Any, url: str, experiment_id: str, run_id: str) -> None:
    run_page = f"{url}/#/experiments/{experiment_id}/runs/{run_id}"
    page.goto(f"{run_page}/model-metrics?workflowType=machine_learning")
    page.get_by_placeholder("Search metric charts").fill("accuracy")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)


def open_registry(page: Any, url: str, model: str) -> None:
    page.goto(f"{url}/#/models/{model}?workflowType=machine_learning")
    page.get_by_text("MNIST digit classifier:").first.wait_for(timeout=60_000)


def screenshots(project: Path, out: Path) -> list[Path]:
    """Open the four views of ``project``'s store and save them as SCREENSHOTS in ``out``."""
    from playwright.sync_api import sync_playwright

    pipeline = Pipeline.of(project)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in SCREENSHOTS]
    with (
        tempfile.TemporaryDirectory() as folder,
        mlflow_ui(pipeline.store, Path(folder)) as url,
        sync_playwright() as playwright,
    ):
        experiment_id = rest(url, "experiments/get-by-name", experiment_name=pipeline.experiment)[
            "experiment"
        ]["experiment_id"]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        open_runs(page, url, experiment_id)
        page.screenshot(path=str(paths[0]))
        open_charts(page, url, experiment_id)
        page.screenshot(path=str(paths[1]))
        open_curves(page, url, experiment_id, champion_run_id(url, pipeline.model))
        page.screenshot(path=str(paths[2]))
        open_registry(page, url, pipeline.model)
        page.screenshot(path=str(paths[3]))
        browser.close()
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m harness.mlflow_ui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--project", type=Path, default=Path("."), help="a folder after dvc repro")
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="where the PNGs go")
    args = p.parse_args(argv)
    for path in screenshots(args.project.resolve(), args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
