"""Every stage in dvc.yaml lists as deps the project modules its code imports.

A module missing from a stage's deps means `dvc repro` would not rerun the stage when that
module changes: stale outputs that look current.
"""

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("pipeline", "serving")


def imported_modules(path: Path) -> set[str]:
    """Project modules (as repo-relative paths) that ``path`` imports, at any depth."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] not in PACKAGES:
                    continue
                file = ROOT / (name.replace(".", "/") + ".py")
                rel = str(file.relative_to(ROOT))
                if file.exists() and rel not in seen:
                    seen.add(rel)
                    todo.append(file)
    return seen


def stages():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        yield name, stage.get("do", stage)


@pytest.mark.parametrize("name, stage", list(stages()), ids=[n for n, _ in stages()])
def test_stage_deps_cover_the_modules_it_imports(name, stage):
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    entry = ROOT / (module.replace(".", "/") + ".py")
    needed = {str(entry.relative_to(ROOT))} | imported_modules(entry)
    missing = needed - set(stage["deps"])
    assert len(stage["deps"]) == len(set(stage["deps"])), f"stage {name}: a dep listed twice"
    assert not missing, f"stage {name}: add {sorted(missing)} to its deps in dvc.yaml"
