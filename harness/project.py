"""A real copy of the project in a temporary folder: its own git repository, a small data
profile, and commands (dvc, git, bentoml) run inside it, for the end-to-end tests and the
benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


# Outputs whose bytes the same params must reproduce are all but these, which carry MLflow
# run ids, registry versions, Bento tags or timings.
VARYING = {
    "run.json",
    "recorded.json",
    "summary.json",
    "summary.csv",
    "decision.json",
    "bento.json",
    "model_card.md",
    "bentofile.yaml",
}


class CommandFailed(AssertionError):
    """A command run in the project exited non-zero; the message holds its output."""


PROJECT_FILES = [
    "pipeline",
    "serving",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
    "served_log/README.md",
    "feedback/README.md",
    "labelled/README.md",
]
ENABLED = ["mlp128", "cnn_fast"]


def small_profile(params: dict) -> dict:
    """2,000 training, 1,000 validation and 1,000 test images; two short candidates; 50
    test digits under each kind of photo, 50 of each split under each corruption, and a
    robustness floor two minutes' training can clear."""
    params["split"].update(val_size=1000, train_limit=2000, test_limit=1000)
    params["robustness"]["per_kind"] = 50
    params["robustness"]["corruptions"]["per_split"] = 50
    params["promote"]["max_corruption_error"] = 0.9
    params["train"]["enabled"] = ENABLED
    for name in ENABLED:
        params["train"]["candidates"][name].update(epochs=2, train_size=None)
    return params


class Project:
    """A copy of the repository in its own git repo, with commands run inside it."""

    def __init__(self, path: Path, env: dict):
        self.path, self.env = path, env
        self.repro_result = None

    def run(self, *args: str, check: bool = True, env: dict | None = None):
        result = subprocess.run(
            args, cwd=self.path, env=env or self.env, capture_output=True, text=True, timeout=1200
        )
        if check and result.returncode != 0:
            raise CommandFailed(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def commit(self, message: str) -> None:
        """Commit everything (git ignores what .gitignore says, DVC's outputs among them)."""
        self.run("git", "add", "-A")
        self.run(
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            message,
            check=False,
        )  # nothing to commit is fine

    @staticmethod
    def stages_run(result) -> list[str]:
        """The stages a `dvc repro` or `dvc exp run` ran, in order, from its result or
        its output."""
        output = result if isinstance(result, str) else result.stdout
        return [
            line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")
        ]

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every output file the same params must reproduce byte for byte (a
        JSON output without its MLflow ``run_id``, which names the run, not a result)."""
        import hashlib

        found = {}
        for folder in ("data", "models", "reports"):
            for path in sorted((self.path / folder).rglob("*")):
                skip = path.name in VARYING or path.name == ".gitignore" or path.suffix == ".tmp"
                if path.is_file() and not skip:
                    data = path.read_bytes()
                    if path.suffix == ".json":
                        data = comparable_json(data)
                    found[str(path.relative_to(self.path))] = hashlib.sha256(data).hexdigest()
        return found

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def comparable_json(data: bytes) -> bytes:
    """A JSON output as the fingerprint compares it: without a top-level ``run_id``."""
    value = json.loads(data)
    if isinstance(value, dict):
        value.pop("run_id", None)
    return json.dumps(value, sort_keys=True).encode()


def new_project(path: Path, mirror: Path, profile=small_profile) -> Project:
    """A copy of the repository's pipeline in ``path``, its own git repo, with ``profile``
    applied to its params."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    project = open_project(path, mirror)
    project.write_params(profile(project.params()))
    project.run("git", "init", "-q")
    project.commit("init")
    return project


def open_project(path: Path, mirror: Path, bentoml_home: Path | None = None) -> Project:
    """A project folder (new, or copied from one) with the environment its commands run
    in: this interpreter's tools first, the mirror, a BentoML home outside the folder."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MNIST_MIRROR": str(mirror),
        # Outside the repository, as a user's ~/bentoml is: neither git nor DVC sees it.
        "BENTOML_HOME": str(bentoml_home or path.parent / f"{path.name}-bentoml"),
    }
    # Set by other test modules' fixtures; a user's shell has neither.
    for name in ("MLFLOW_TRACKING_URI", "MNIST_MODEL_TAG", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    return Project(path, env)


def copy_project(project: Project, path: Path, mirror: Path) -> Project:
    """A copy of ``project`` at ``path`` that stands on its own: its files and git and DVC
    history, its BentoML home beside it, and its MLflow store's runs, models and registry
    with their artifacts in the copy. What a second `dvc repro` of the same commit would
    hold, without running the pipeline again. DVC's own temporary state is left behind."""

    def dvc_tmp(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == project.path / ".dvc" else []

    shutil.copytree(project.path, path, symlinks=True, ignore=dvc_tmp)
    home = path.parent / f"{path.name}-bentoml"
    shutil.copytree(project.env["BENTOML_HOME"], home, symlinks=True)
    store = path / "mlflow.db"
    if store.exists():
        relocate_store(store, project.path, path)
    return open_project(path, mirror, bentoml_home=home)


def relocate_store(store: Path, old: Path, new: Path) -> None:
    """Point every path under ``old`` that an MLflow SQLite store records (the experiment's
    artifact location, each run's and logged model's artifacts, the registry's sources) at
    the same path under ``new``: MLflow stores them absolute. Every text column of every
    table is rewritten, so that a new MLflow schema needs no change here."""
    before, after = f"{old.resolve()}/", f"{new.resolve()}/"
    with sqlite3.connect(store) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [
                row[1]
                for row in db.execute(f'PRAGMA table_info("{table}")')
                if "CHAR" in row[2].upper() or "TEXT" in row[2].upper()
            ]
            for column in columns:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE instr("{column}", ?) > 0',
                    (before, after, before),
                )
    db.close()
