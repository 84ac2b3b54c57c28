"""The MLflow Model Registry as the pipeline uses it: versions, the ``champion`` alias
and its history.

In: a registered model's name, and summary rows (candidate, metrics, MLflow run id).
Out: registry versions tagged with their candidate, metrics and lineage; the alias,
moved in one call so it is never missing; and the registered model's
``champion_history`` tag, which records every move (the last HISTORY_KEEP).
"""

from __future__ import annotations

import json
import time

from pipeline import faults
from pipeline.errors import StageError

ALIAS = "champion"
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 20  # entries; a registry tag holds at most a few kB


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def has_model(name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException:
        return False
    return True


LINEAGE_TAGS = (
    "git_commit",
    "git_source_changed",
    "git_changed_source",
    "git_changed_outputs",
    "user",
    "host",
    "dvc_exp_name",
    "dvc_exp_baseline_rev",
)
LINEAGE_PREFIXES = ("data_sha256.", "dvc_md5.")


def ensure_registered_model(name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException:
        client().create_registered_model(
            name, description="MNIST digit classifier; `champion` is the one served."
        )


def version_for_run(name: str, row: dict, experiment_id: str):
    """The registry version of this run's model, registered now if it is not yet."""
    mlflow_client = client()
    existing = mlflow_client.search_model_versions(
        f"name = '{name}' and run_id = '{row['run_id']}'"
    )
    if existing:
        return max(existing, key=lambda v: int(v.version))
    logged = mlflow_client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{row['run_id']}'"
    )
    if not logged:
        raise StageError(f"run {row['run_id']} ({row['candidate']}) has no logged model")
    run = mlflow_client.get_run(row["run_id"])
    lineage = {
        k: v
        for k, v in run.data.tags.items()
        if k in LINEAGE_TAGS or k.startswith(LINEAGE_PREFIXES)
    }
    tags = {
        "candidate": row["candidate"],
        "val_accuracy": f"{row['val_accuracy']:.6f}",
        "test_accuracy": f"{row['test_accuracy']:.6f}",
        # The expected calibration error on test, with the temperature and without it.
        "test_ece": f"{row['test_ece']:.4f}",
        "test_ece_uncalibrated": f"{row['test_ece_uncalibrated']:.4f}",
        "multiply_adds": str(row["multiply_adds"]),
        "parameters": str(row["parameters"]),
        **{
            f"val_corruption_error_{path}": f"{error:.4f}"
            for path, error in row.get("val_corruption_error", {}).items()
        },
        **lineage,
    }
    settings = ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()))
    return mlflow_client.create_model_version(
        name,
        source=logged[0].model_uri,
        run_id=row["run_id"],
        tags=tags,
        model_id=logged[0].model_id,
        description=(
            f"{row['candidate']}: validation accuracy {row['val_accuracy']:.4f}, "
            f"test accuracy {row['test_accuracy']:.4f}. Params: {settings}"
        ),
    )


def describe(name: str, version: str, card: str) -> None:
    """The model card as the description of a packaged version and, since that version
    is the one served, of the registered model."""
    mlflow_client = client()
    mlflow_client.update_model_version(name, version, description=card)
    mlflow_client.update_registered_model(name, description=card)


def current_champion(name: str):
    """The version the alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def history(name: str) -> list[dict]:
    tag = client().get_registered_model(name).tags.get(HISTORY_TAG)
    return json.loads(tag) if tag else []


def record(name: str, version: str, previous: str | None, reason: str) -> None:
    """Append a move of the alias to ``version`` to the history (once: a version that is
    already the last entry is not recorded again)."""
    mlflow_client = client()
    entries = history(name)
    if entries and entries[-1]["version"] == version:
        return
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = {"version": version, "previous": previous, "reason": reason, "at": at}
    mlflow_client.set_registered_model_tag(
        name, HISTORY_TAG, json.dumps([*entries, entry][-HISTORY_KEEP:])
    )
    mlflow_client.set_model_version_tag(name, version, "promoted_at", at)


def move_alias(name: str, version: str, previous: str | None, reason: str) -> None:
    """Point the alias at ``version`` (one call: never missing), then record why. A kill
    between the two leaves the alias moved and the history one short, which
    ``reconcile`` repairs."""
    client().set_registered_model_alias(name, ALIAS, version)
    faults.point("registry.alias_moved")
    record(name, version, previous, reason)


def reconcile(name: str) -> None:
    """Repair the history after an interrupted move: an alias on a version the history
    does not end with gets its entry, so there is never a gap (nor, by ``record``, a
    double entry)."""
    if not has_model(name):
        return
    champion = current_champion(name)
    entries = history(name)
    if champion is not None and (not entries or entries[-1]["version"] != champion.version):
        previous = entries[-1]["version"] if entries else None
        record(name, champion.version, previous, "recorded after an interrupted promote")


def rollback(name: str) -> str:
    """Point the alias back at the champion before the current one; return its version."""
    reconcile(name)
    entries = history(name)
    champion = current_champion(name)
    if (
        champion is None
        or not entries
        or entries[-1]["version"] != champion.version
        or entries[-1]["previous"] is None
    ):
        raise StageError(f"{name}: no previous champion recorded to roll back to")
    previous = entries[-1]["previous"]
    move_alias(name, previous, champion.version, f"rollback from version {champion.version}")
    return previous
