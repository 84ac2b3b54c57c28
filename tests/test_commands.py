"""The commands that write docs/ (make bench, make chaos, the loop timer), each run at a
tiny size so that they cannot rot; make reproduce's tiny run is in test_reproduce.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import run_parts
from harness import loops
from harness.project import copy_project
from harness.report import Report

ROOT = Path(__file__).resolve().parent.parent


def page_written(module: str, args: list[str], out: Path, env: dict) -> str:
    """Run ``python -m module args --out out`` from the repository; the page it wrote."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = out.read_text()
    header_is_complete(page)
    return page


def header_is_complete(page: str) -> None:
    for line in ("- date:", "- machine:", "- calibration:"):
        assert line in page, f"the page's header has no {line!r}"


def test_a_failing_part_writes_its_failure_into_its_row_and_the_run_goes_on() -> None:
    ran = []

    def broken(report: Report) -> None:
        raise RuntimeError("dvc pull exited 1")

    def fine(report: Report) -> None:
        ran.append("fine")
        report.row("Fine", "a figure", "1.0 s")

    report = Report("Performance")
    outcomes = run_parts(
        report, ["broken", "fine"], tiny=False, runners={"broken": broken, "fine": fine}
    )
    page = report.markdown()
    assert ran == ["fine"] and outcomes["fine"] == "ok"
    assert "RuntimeError: dvc pull exited 1" in outcomes["broken"]
    assert "| the broken part | **failed**: RuntimeError: dvc pull exited 1 |" in page
    assert "| a figure | 1.0 s |" in page


def test_bench_rejects_an_unknown_part() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--parts", "pipeline,servin"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no part named ['servin']" in result.stderr


@pytest.mark.slow
def test_make_bench_at_a_tiny_size_writes_a_whole_page(tmp_path: Path, mirror: Path) -> None:
    env = {**os.environ, "MNIST_MIRROR": str(mirror), "BENTOML_HOME": str(tmp_path / "bentoml")}
    page = page_written("bench", ["--tiny"], tmp_path / "performance.md", env)
    assert "fetch from the local mirror" in page
    assert "`/predict`, 1 digit, b64 body" in page
    assert "| pipeline |" in page and "| serving |" in page and "failed" not in page


@pytest.mark.slow
def test_make_chaos_at_a_tiny_size_kills_repairs_and_attacks(
    tmp_path: Path, pipeline_project, pipeline_store: Path, mirror: Path
) -> None:
    # Its own copy: the repairs log runs and artifacts into the copy's store, not the suite's.
    copy = copy_project(pipeline_project, tmp_path / "project", mirror)
    args = ["--tiny", "--project", str(copy.path)]
    page = page_written("reliability", args, tmp_path / "reliability.md", copy.env)
    assert "| split |" in page and "1 of 1 kills survived" in page
    assert "... answers with a 5xx status | 0 |" in page


def test_the_loop_timer_records_a_row_with_its_calibration_and_keeps_a_failure(
    tmp_path: Path,
) -> None:
    page = tmp_path / "loops.md"
    assert loops.main(["ok", "--page", str(page), "--", "true"]) == 0
    assert loops.main(["broken", "--page", str(page), "--", "false"]) == 1
    text = page.read_text()
    header_is_complete(text)
    assert "| ok | `true` |" in text and "| broken | `false` |" in text
    rows = [line for line in text.splitlines() if line.startswith("| broken")]
    assert rows and "| 1 |" in rows[0]  # the exit code, recorded
