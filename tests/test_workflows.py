"""The hosted forge's workflows (.github/workflows): actionlint finds nothing wrong in them
(and does find a broken one), and every step they run is a `make` target that runs here:
`make test` is what CI runs (.ci/run), `make report` is what tests/test_review.py runs;
the one other step posts the report with CML, which needs the forge."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINT = ["node", str(ROOT / "harness" / "actionlint.cjs")]
# Each make target a workflow runs, and where this suite runs it.
RUN_HERE = {
    "test": ".ci/run",
    "system-tools": "make test's first prerequisite",
    "report": "tests/test_review.py",
}
POST = "cml comment update --target=pr --watermark-title=review reports/review/report.md"


def actionlint(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_actionlint_passes_every_workflow() -> None:
    assert {path.name for path in WORKFLOWS} == {"test.yml", "review.yml"}
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_what_is_wrong_in_a_broken_workflow(tmp_path) -> None:
    broken = tmp_path / "broken.yml"
    text = (ROOT / ".github/workflows/review.yml").read_text()
    broken.write_text(text.replace("github.base_ref", "github.base_reff"))
    result = actionlint(broken)
    assert result.returncode == 1 and "base_reff" in result.stdout


def test_every_step_runs_a_make_target_the_tests_run() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    ran = set()
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if "run" not in step:
                    continue
                command = " ".join(step["run"].split())
                if command.startswith("cml "):
                    assert command == POST, path.name
                    continue
                found = re.fullmatch(r"(?:sudo )?make ([a-z-]+)(?: .*)?", command)
                assert found, f"{path.name}: `{command}` is not a make target"
                assert found.group(1) in targets, f"{path.name}: no target {found.group(1)}"
                ran.add(found.group(1))
    assert ran == set(RUN_HERE)
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert re.search(r"^test: install system-tools", makefile, re.M)
