"""`dvc plots show`'s page, opened from disk in headless Chromium as a user opens it: every
chart draws, with no request leaving the machine and no script error. A screenshot goes
to tests/browser/artifacts/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.project import Project

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page_file(pipeline_project: Project, pipeline_store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dvc-plots-browser")
    pipeline_project.run("dvc", "plots", "show", "-o", str(out))
    return out / "index.html"


def test_every_chart_draws_offline(browser: Any, page_file: Path, artifacts: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    foreign: list[str] = []
    errors: list[str] = []

    def request(request: Any) -> None:
        if not request.url.startswith(("file:", "data:", "blob:")):
            foreign.append(request.url)

    page.on("request", request)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_file.as_uri())
    # vegaEmbed renders into each plot's div (class vega-embed), a canvas per chart
    marks = "div.vega-embed .marks"
    page.wait_for_function(
        f"document.querySelectorAll('{marks}').length"
        " >= document.querySelectorAll('div.vega-embed').length",
        timeout=30_000,
    )
    sizes = page.locator(marks).evaluate_all("marks => marks.map(m => m.width * m.height)")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert page.locator("div.vega-embed").count() == len(sizes) == len(plots)
    assert all(size > 10_000 for size in sizes), sizes
    page.screenshot(path=str(artifacts / "dvc_plots.png"), full_page=True)
    assert not foreign, foreign
    assert not errors, errors
    page.close()
