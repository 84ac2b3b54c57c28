"""The two sides of a review, each reproduced by DVC in one scratch clone of the project.

In: the project's git repository, a base ref, and the working tree as it is (committed or
not). Out: in the scratch folder (``review-scratch`` by default) a clone that shares the
project's git objects, and in it one commit per side holding what `dvc repro` made of it
(``dvc.lock`` and every ``cache: false`` output: metrics, summaries, decisions), so that
`dvc params diff`, `dvc metrics diff` and `dvc plots diff` compare the two as two
revisions. Each side starts from what the clone last reproduced: its ``dvc.lock`` and
its outputs carry over, so `dvc repro` runs only the stages whose code, params or data
differ (DVC's run cache restores the stages it can, those whose outputs all live in
its cache), and a side that had to train says which candidates. Both sides log to one
MLflow store beside the clone; each starts from an empty model registry, so its
champion is its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import StageError

TRAINING = "train@"  # stages whose name starts so train a model: what a review reports
# What each side's repro must leave for the comparison.
REQUIRED = ["reports/summary/summary.json", "reports/promote/decision.json"]
LAST = "review-last"  # the tag on the side reproduced last
IDENTITY = ["-c", "user.name=make report", "-c", "user.email=report@localhost"]


@dataclass
class Side:
    name: str  # "base" or "change"
    label: str  # what a reader calls it: "main (1a2b3c4)", "the working tree (...)"
    source: str  # the project's commit it starts from
    commit: str = ""  # the scratch commit with its outputs
    ran: list[str] = field(default_factory=list)  # stages run
    restored: list[str] = field(default_factory=list)  # stages restored from the run cache

    @property
    def trained(self) -> list[str]:
        return [stage for stage in self.ran if stage.startswith(TRAINING)]


def git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise StageError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def resolve(project: Path, ref: str) -> str:
    """The commit ``ref`` names in the project, or a clear error."""
    found = git(project, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if not found:
        raise StageError(
            f"BASE={ref}: no such commit, branch or tag in {project} "
            "(`git fetch` it first if it lives on a remote)"
        )
    return found


def changes(project: Path) -> list[tuple[str, str]]:
    """(status, path) of each file where the working tree differs from HEAD, untracked
    files included, ignored ones (DVC's outputs among them) not: git's short status."""
    listed = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(entry[:2].strip(), entry[3:]) for entry in listed.split("\0") if entry]


def side_label(name: str, ref: str, commit: str, changed: list) -> str:
    short = commit[:8]
    if name == "base":
        return f"{ref} ({short})"
    if not changed:
        return f"the working tree (HEAD {short})"
    return f"the working tree (HEAD {short} and {len(changed)} uncommitted files)"


class Scratch:
    """The scratch clone, its DVC cache, MLflow store and BentoML home."""

    def __init__(self, project: Path, folder: Path, small_profile) -> None:
        self.project = project.resolve()
        self.folder = folder.resolve()
        self.repo = self.folder / "repo"
        self.small_profile = small_profile  # None: the params as they are
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.folder / 'mlflow.db'}",
            "BENTOML_HOME": str(self.folder / "bentoml"),
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
        for name in ("MNIST_MODEL_TAG", "PROMETHEUS_MULTIPROC_DIR", "DVC_ROOT"):
            self.env.pop(name, None)

    def open(self) -> None:
        """Clone the project once (sharing its objects: every commit it has is here at
        once) and point DVC at the scratch cache."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.repo / ".git").is_dir():
            shutil.rmtree(self.repo, ignore_errors=True)
            git(self.folder, "clone", "-q", "--shared", "--no-checkout", str(self.project), "repo")
        cache = self.folder / "cache"
        (self.repo / ".dvc").mkdir(exist_ok=True)
        (self.repo / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache}\n")

    def run(self, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(args, cwd=self.repo, env=self.env, capture_output=True, text=True)
        if log is not None:
            log.write_text(result.stdout + result.stderr)
        return result

    def checkout(self, side: Side, changed: list[tuple[str, str]]) -> None:
        """The side's files in the clone: its commit, plus the working tree's changes for
        the change side. DVC's outputs (ignored by git) stay for DVC to judge."""
        # Everything the last side made is committed, so a checkout leaves no strays; what
        # git does not track (the cached outputs) stays, for DVC to judge.
        git(self.repo, "checkout", "-qf", "--detach", side.source)
        for status, path in changed:
            target = self.repo / path
            if status == "D":
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.project / path, target)
        (self.repo / ".dvc").mkdir(exist_ok=True)
        if not (self.repo / "dvc.yaml").is_file():
            raise StageError(f"{side.label} has no dvc.yaml: there is no pipeline to compare")
        if self.small_profile is not None:
            path = self.repo / "params.yaml"
            params = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump(self.small_profile(params), sort_keys=False))

    def fresh_registry(self) -> None:
        """No registered model in the shared store: each side's promote starts from none,
        so its champion is its own best candidate (its runs stay, for the run cache)."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        params = yaml.safe_load((self.repo / "params.yaml").read_text())
        client = MlflowClient(tracking_uri=self.env["MLFLOW_TRACKING_URI"])
        with contextlib.suppress(MlflowException):  # none yet
            client.delete_registered_model(params["promote"]["registered_model"])
        experiment = params["mlflow"]["experiment"]
        if client.get_experiment_by_name(experiment) is None:
            artifacts = (self.folder / "mlartifacts").as_uri()
            client.create_experiment(experiment, artifact_location=artifacts)

    def carry_over(self, previous: str) -> None:
        """The lock and the git-tracked outputs (``cache: false``) of the clone's previous
        review commit, over the side just checked out; the cached outputs are still in the
        workspace. DVC then judges each stage against what was last reproduced."""
        lock = yaml.safe_load(git(self.repo, "show", f"{previous}:dvc.lock") or "{}") or {}
        outs = {
            out["path"]
            for stage in (lock.get("stages") or {}).values()
            for out in stage.get("outs", [])
        }
        # DVC lists each cached output in a .gitignore beside it, written when its stage
        # runs: those of the stages that will not run come over too.
        ignores = {f"{Path(out).parent}/.gitignore" for out in outs if "/" in out}
        tracked = git(self.repo, "ls-tree", "-r", "--name-only", previous).splitlines()
        files = [
            f
            for f in tracked
            if f in outs or f in ignores or any(f.startswith(f"{o}/") for o in outs)
        ]
        git(self.repo, "checkout", previous, "--", "dvc.lock", *files)

    def last_review(self) -> str | None:
        """The commit of the side reproduced last (what the workspace's cached outputs
        are), if any: tagged, since a review that failed later may have moved HEAD."""
        return git(self.repo, "rev-parse", "--verify", "--quiet", LAST, check=False) or None

    def reproduce(self, side: Side, changed: list[tuple[str, str]], say) -> None:
        """`dvc repro` of one side; its outputs committed in the clone."""
        previous = self.last_review()
        self.checkout(side, changed)
        if previous is not None:
            self.carry_over(previous)
        self.fresh_registry()
        say(f"{side.name}: dvc repro of {side.label} ...")
        log = self.folder / f"repro-{side.name}.log"
        result = self.run("dvc", "repro", log=log)
        output = result.stdout + result.stderr
        side.ran = stages(output, "Running stage '")
        side.restored = stages(output, "Stage '", "' is cached")
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-25:])
            raise StageError(f"dvc repro of {side.label} failed (all of it: {log}):\n{tail}")
        missing = [path for path in REQUIRED if not (self.repo / path).is_file()]
        if missing:
            raise StageError(f"{side.label}: its pipeline made no {', '.join(missing)}")
        git(self.repo, "add", "-A")
        git(self.repo, *IDENTITY, "commit", "-q", "--allow-empty", "-m", f"review: {side.label}")
        side.commit = git(self.repo, "rev-parse", "HEAD")
        git(self.repo, "tag", "-f", LAST, side.commit)
        trained = ", ".join(side.trained) or "nothing"
        say(f"{side.name}: {len(side.ran)} stages run (trained: {trained}), "
            f"{len(side.restored)} restored from the run cache")  # fmt: skip

    def show(self, side: Side, path: str) -> str:
        """A file as the side's commit holds it."""
        return git(self.repo, "show", f"{side.commit}:{path}")

    def dvc_json(self, *args: str):
        import json

        result = self.run("dvc", *args, "--json")
        if result.returncode != 0:
            raise StageError(f"dvc {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return json.loads(result.stdout or "{}")

    def dvc_text(self, *args: str) -> str:
        result = self.run("dvc", *args)
        if result.returncode != 0:
            raise StageError(f"dvc {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result.stdout


def stages(output: str, before: str, after: str = "'") -> list[str]:
    """The stage names DVC printed between ``before`` and ``after``, in order."""
    found = []
    for line in output.splitlines():
        if line.startswith(before) and after in line[len(before) :]:
            found.append(line[len(before) :].split(after)[0])
    return found
