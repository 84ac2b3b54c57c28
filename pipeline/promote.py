"""promote: register the best candidate and move the ``champion`` alias if it wins.

In: ``summary.json`` from summarize (validation and test accuracy, MLflow run id per
candidate); the ``promote`` and ``mlflow`` params. The choice uses validation accuracy
only, among the candidates within the serving budget (``promote.max_multiply_adds``):
the test split plays no part. Out: ``decision.json`` (chosen version, metrics,
whether the alias moved and why) and, in the MLflow Model Registry, a version of
``promote.registered_model`` with metrics, params and lineage as tags, and the alias.

Idempotent: the run that is already registered is not registered again, and a
champion is only replaced by a strictly better one (by ``min_improvement`` or more).
The alias moves in one registry call, so it is never missing. Each move is appended to
the registered model's ``champion_history`` tag. ``--rollback`` points ``champion``
back at the previous champion.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline import atomic, cli, tracking
from pipeline.params import MlflowParams, PromoteParams, load_section

ALIAS = "champion"
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 20  # entries; a registry tag holds at most a few kB


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def within_budget(row: dict, max_multiply_adds: int | None) -> bool:
    return max_multiply_adds is None or row["multiply_adds"] <= max_multiply_adds


def best_candidate(summary: dict, max_multiply_adds: int | None = None) -> dict:
    """Highest validation accuracy among the candidates within the serving budget; ties go
    to the alphabetically first name."""
    if not summary:
        raise cli.StageError("summary.json lists no candidates")
    eligible = [r for r in summary.values() if within_budget(r, max_multiply_adds)]
    if not eligible:
        cheapest = min(summary.values(), key=lambda r: r["multiply_adds"])
        raise cli.StageError(
            f"promote.max_multiply_adds: no candidate fits {max_multiply_adds:,} multiply-adds "
            f"an image (the cheapest, {cheapest['candidate']}, needs "
            f"{cheapest['multiply_adds']:,}); raise the budget or enable a smaller candidate")
    return min(eligible, key=lambda r: (-r["val_accuracy"], r["candidate"]))


def over_budget(summary: dict, max_multiply_adds: int | None) -> list[str]:
    return sorted(r["candidate"] for r in summary.values()
                  if not within_budget(r, max_multiply_adds))


def ensure_registered_model(name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException:
        client().create_registered_model(
            name, description="MNIST digit classifier; `champion` is the one served.")


def version_for_run(name: str, row: dict, experiment_id: str):
    """The registry version of this run's model, registered now if it is not yet."""
    c = client()
    existing = c.search_model_versions(f"name = '{name}' and run_id = '{row['run_id']}'")
    if existing:
        return max(existing, key=lambda v: int(v.version))
    logged = c.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{row['run_id']}'")
    if not logged:
        raise cli.StageError(f"run {row['run_id']} ({row['candidate']}) has no logged model")
    run = c.get_run(row["run_id"])
    tags = {"candidate": row["candidate"], "val_accuracy": f"{row['val_accuracy']:.6f}",
            "multiply_adds": str(row["multiply_adds"]),
            "test_accuracy": f"{row['test_accuracy']:.6f}", "parameters": str(row["parameters"]),
            **{k: v for k, v in run.data.tags.items()
               if k == "git_commit" or k.startswith("data_sha256.")}}
    settings = ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()))
    return c.create_model_version(
        name, source=logged[0].model_uri, run_id=row["run_id"], tags=tags,
        model_id=logged[0].model_id,
        description=(f"{row['candidate']}: validation accuracy {row['val_accuracy']:.4f}, "
                     f"test accuracy {row['test_accuracy']:.4f}. Params: {settings}"))


def current_champion(name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def history(name: str) -> list[dict]:
    tag = client().get_registered_model(name).tags.get(HISTORY_TAG)
    return json.loads(tag) if tag else []


def move_alias(name: str, version: str, previous: str | None, reason: str) -> None:
    """Point the alias at ``version`` (one call: never missing) and record why."""
    c = client()
    c.set_registered_model_alias(name, ALIAS, version)
    entries = history(name) + [{"version": version, "previous": previous, "reason": reason,
                                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries[-HISTORY_KEEP:]))
    c.set_model_version_tag(name, version, "promoted_at", entries[-1]["at"])


def decide(new_val: float, champion_val: float | None, min_improvement: float) -> tuple[bool, str]:
    if champion_val is None:
        return True, "no champion yet"
    gain = new_val - champion_val
    if gain > 0 and gain >= min_improvement:
        return True, f"validation accuracy {new_val:.4f} beats {champion_val:.4f} by {gain:+.4f}"
    return False, (f"validation accuracy {new_val:.4f} does not beat the champion's "
                   f"{champion_val:.4f} by at least {min_improvement}")


def promote(summary: dict, params: PromoteParams, experiment_id: str) -> dict:
    name = params.registered_model
    row = best_candidate(summary, params.max_multiply_adds)
    ensure_registered_model(name)
    version = version_for_run(name, row, experiment_id)
    champion = current_champion(name)
    if champion is not None and champion.version == version.version:
        moved, reason = False, "already the champion"
    else:
        champion_val = float(champion.tags["val_accuracy"]) if champion else None
        moved, reason = decide(row["val_accuracy"], champion_val, params.min_improvement)
        if moved:
            move_alias(name, version.version, champion.version if champion else None, reason)
    served = current_champion(name)
    return {"registered_model": name, "candidate": row["candidate"], "version": version.version,
            "run_id": row["run_id"], "val_accuracy": row["val_accuracy"],
            "test_accuracy": row["test_accuracy"], "alias": ALIAS, "alias_moved": moved,
            "reason": reason, "champion_version": served.version,
            "champion_candidate": served.tags.get("candidate"),
            "champion_run_id": served.run_id,
            "max_multiply_adds": params.max_multiply_adds,
            "over_budget": over_budget(summary, params.max_multiply_adds)}


def rollback(name: str) -> str:
    """Point the alias back at the champion before the current one."""
    entries = history(name)
    champion = current_champion(name)
    if champion is None or not entries or entries[-1]["version"] != champion.version \
            or entries[-1]["previous"] is None:
        raise cli.StageError(f"{name}: no previous champion recorded to roll back to")
    previous = entries[-1]["previous"]
    move_alias(name, previous, champion.version, f"rollback from version {champion.version}")
    return previous


def main(args) -> None:
    params = load_section(args.params, "promote", PromoteParams)
    experiment_id = tracking.setup(load_section(args.params, "mlflow", MlflowParams))
    if args.rollback:
        version = rollback(params.registered_model)
        print(f"promote: {params.registered_model}@{ALIAS} is now version {version}")
        return
    if args.summary is None or args.out is None:
        raise cli.StageError("--summary and --out are required unless --rollback")
    decision = promote(atomic.read_json(args.summary), params, experiment_id)
    atomic.write_json(args.out, decision)
    if decision["over_budget"]:
        print(f"promote: over the serving budget of {params.max_multiply_adds:,} multiply-adds "
              f"an image, so not eligible: {', '.join(decision['over_budget'])}")
    verb = "moved to" if decision["alias_moved"] else "stays on"
    print(f"promote: best candidate {decision['candidate']} (version {decision['version']}); "
          f"{ALIAS} {verb} version {decision['champion_version']}: {decision['reason']}")


def cli_main(argv=None) -> None:
    p = cli.parser("promote", __doc__)
    p.add_argument("--summary", type=Path, help="summary.json from summarize")
    p.add_argument("--out", type=Path, help="decision.json to write")
    p.add_argument("--rollback", action="store_true",
                   help="point the champion alias back at the previous champion and exit")
    cli.run("promote", main, cli.parse(p, argv))


if __name__ == "__main__":
    cli_main()
