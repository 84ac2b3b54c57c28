"""MLflow and lineage helpers shared by train, evaluate, promote and package.

The default store is a SQLite file at the project root, resolved to an absolute path
so that ``dvc exp run`` (which may run in a copy under ``.dvc/tmp/exps``) logs into the
same store; MLFLOW_TRACKING_URI overrides it (a tracking server, another file).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from pipeline.params import MlflowParams

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def project_root(start: Path = PACKAGE_ROOT) -> Path:
    """The repository root, also when running inside a DVC experiment's temp copy."""
    parts = start.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return start


def tracking_uri(params: MlflowParams) -> str:
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{project_root() / params.store}"


def setup(params: MlflowParams) -> str:
    """Point MLflow at the store and return the experiment id (created if new)."""
    import mlflow

    # A server chooses its own artifact store; a local SQLite store keeps artifacts
    # beside it. (Decided before set_tracking_uri, which exports MLFLOW_TRACKING_URI.)
    local = "MLFLOW_TRACKING_URI" not in os.environ
    mlflow.set_tracking_uri(tracking_uri(params))
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (project_root() / "mlartifacts").as_uri() if local else None
    return mlflow.create_experiment(params.experiment, artifact_location=artifacts)


def git_commit(cwd: Path = PACKAGE_ROOT) -> str:
    """HEAD's commit, with ``-dirty`` if tracked files differ; ``unknown`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lineage_tags(files: dict[str, Path]) -> dict[str, str]:
    """Tags that tie a run to its code and data: git commit and one sha256 per file."""
    tags = {"git_commit": git_commit()}
    tags.update({f"data_sha256.{name}": sha256_file(path) for name, path in files.items()})
    return tags


def requirements(*packages: str) -> list[str]:
    """Pinned pip requirements of a logged model; given explicitly, MLflow does not infer
    them (which imports and traces the model)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def log_model(predictor, clf=None) -> None:
    """Log the model as ``model``, pickle-free: torch.export (pt2) of the Predictor for a
    torch network, skops for a scikit-learn ``clf``."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    example = torch.zeros(2, 1, 28, 28)  # (B, 1, 28, 28) pixels in [0, 1]
    if clf is not None:
        flat = example.flatten(1).numpy()
        mlflow.sklearn.log_model(
            clf,
            name="model",
            serialization_format="skops",
            signature=infer_signature(flat, clf.predict_proba(flat)),
            input_example=flat,
            pip_requirements=requirements("scikit-learn", "skops", "numpy"),
        )
        return
    signature = infer_signature(example.numpy(), predictor(example).detach().numpy())
    mlflow.pytorch.log_model(
        predictor,
        name="model",
        serialization_format="pt2",
        signature=signature,
        input_example=example.numpy(),
        pip_requirements=requirements("torch", "numpy"),
    )
