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
                folder = ROOT / name.replace(".", "/")
                if (folder / "__init__.py").exists() and name not in PACKAGES:
                    # A package below the top (pipeline/architectures): its folder is the
                    # dep, and what its modules import is imported too.
                    rel = str(folder.relative_to(ROOT))
                    if rel not in seen:
                        seen.add(rel)
                        todo += [m for m in folder.glob("*.py") if m.name != "__init__.py"]
                        todo.append(folder / "__init__.py")
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
    readers = [m for m in needed if m.endswith(".py") and m != "pipeline/params.py"]
    if any("TrainParams" in (ROOT / m).read_text() for m in readers):
        needed.add("pipeline/architectures")  # params.py imports it to read `train`
    missing = needed - set(stage["deps"])
    assert len(stage["deps"]) == len(set(stage["deps"])), f"stage {name}: a dep listed twice"
    assert not missing, f"stage {name}: add {sorted(missing)} to its deps in dvc.yaml"


def test_package_deps_cover_what_the_bento_holds():
    """A change to any file the Bento ships (the service, the page) rebuilds it."""
    bentofile = yaml.safe_load((ROOT / "serving/bentofile.yaml").read_text())
    excluded = {ROOT / pattern for pattern in bentofile["exclude"]}
    matched = [path for pattern in bentofile["include"] for path in ROOT.glob(pattern)]
    files = [path for m in matched for path in ([m] if m.is_file() else m.rglob("*"))]
    shipped = {
        path
        for path in files  # "dir/**" matches the folders; their files are what ships
        if path.is_file() and path not in excluded and "__pycache__" not in path.parts
    }
    deps = [ROOT / dep for dep in dict(stages())["package"]["deps"]]
    uncovered = [
        path for path in shipped if not any(path == dep or dep in path.parents for dep in deps)
    ]
    assert shipped, "serving/bentofile.yaml's include matched no files"
    missing = sorted(str(path.relative_to(ROOT)) for path in uncovered)
    assert not missing, f"stage package: add {missing} to its deps in dvc.yaml"
