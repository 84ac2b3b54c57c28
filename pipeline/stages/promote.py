"""promote: register the best candidate and move the ``champion`` alias if it wins.

In: ``summary.json`` from summarize (validation and test accuracy, MLflow run id per
candidate); each candidate's ``corruptions.json`` from robustness; the ``promote`` and
``mlflow`` params. The choice uses validation accuracy only, among the candidates within
the serving budget (``promote.max_multiply_adds``) whose error on the validation split's
corrupted digits clears the robustness floor (``promote.max_corruption_error``) on both
serving paths: the test split plays no part. A candidate that would take the alias must
also label the feedback hold-out (``--holdout``, digits people corrected, which no
candidate trains on) at least as well as the champion, scored now from its logged
weights when it is not among this summary's runs. Out: ``decision.json`` (chosen version,
metrics, whether the alias moved and why, each candidate's robustness margin) and, in
the MLflow Model Registry, a version of ``promote.registered_model`` with metrics,
robustness, params and lineage as tags, and the alias.

Idempotent: the run that is already registered is not registered again, and a
champion is only replaced by a strictly better one (by ``min_improvement`` or more).
The alias moves in one registry call, so it is never missing. Each move is appended to
the registered model's ``champion_history`` tag. ``--rollback`` points ``champion``
back at the previous champion.

Promotion happens only in the workspace. Inside a queued or ``--temp`` DVC experiment
(a temporary copy of the repository) the stage records what it would do, reading the
registry but changing nothing: ``decision.json`` says ``"applied": false``. After
``dvc exp apply``, ``dvc repro --force promote`` promotes the applied winner.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, faults, inference, registry, tracking
from pipeline.errors import StageError
from pipeline.params import MlflowParams, PromoteParams, load_section


def within_budget(row: dict, max_multiply_adds: int | None) -> bool:
    return max_multiply_adds is None or row["multiply_adds"] <= max_multiply_adds


def best_candidate(summary: dict, max_multiply_adds: int | None = None) -> dict:
    """Highest validation accuracy among the candidates within the serving budget; ties go
    to the alphabetically first name."""
    if not summary:
        raise StageError("summary.json lists no candidates")
    eligible = [row for row in summary.values() if within_budget(row, max_multiply_adds)]
    if not eligible:
        cheapest = min(summary.values(), key=lambda row: row["multiply_adds"])
        raise StageError(
            f"promote.max_multiply_adds: no candidate fits {max_multiply_adds:,} multiply-adds "
            f"an image (the cheapest, {cheapest['candidate']}, needs "
            f"{cheapest['multiply_adds']:,}); raise the budget or enable a smaller candidate"
        )
    return min(eligible, key=lambda row: (-row["val_accuracy"], row["candidate"]))


def with_robustness(summary: dict, robustness: Path) -> dict:
    """The summary's rows with ``val_corruption_error``: {serving path: the candidate's
    mean error over corruption families on the validation split}, from robustness's
    ``<candidate>/corruptions.json``."""
    rows = {}
    for name, row in summary.items():
        report = atomic.read_json(robustness / name / "corruptions.json")["val"]
        errors = {path: scores["mean_error"] for path, scores in report.items()}
        rows[name] = row | {"val_corruption_error": errors}
    return rows


def worse_path_error(row: dict) -> float:
    """A candidate's corruption error on its worse serving path: what the floor judges."""
    return max(row["val_corruption_error"].values())


def clears_floor(row: dict, floor: float | None) -> bool:
    return floor is None or worse_path_error(row) <= floor


def below_floor(summary: dict, floor: float | None) -> list[str]:
    return sorted(row["candidate"] for row in summary.values() if not clears_floor(row, floor))


def robust_enough(summary: dict, floor: float | None) -> dict:
    """The candidates that clear the robustness floor; a clear error if none does."""
    passing = {name: row for name, row in summary.items() if clears_floor(row, floor)}
    if summary and not passing:
        best = min(summary.values(), key=worse_path_error)
        raise StageError(
            f"promote.max_corruption_error: no candidate's validation error on corrupted "
            f"digits is within {floor:.1%} on both serving paths (the most robust, "
            f"{best['candidate']}, has {worse_path_error(best):.1%}); "
            "raise the floor or train a more robust candidate"
        )
    return passing


def robustness_margins(summary: dict, floor: float | None) -> dict:
    """Per candidate: its validation corruption error per path and how far within the
    floor its worse path is (negative: over it)."""
    return {
        name: row["val_corruption_error"]
        | ({"margin": floor - worse_path_error(row)} if floor is not None else {})
        for name, row in sorted(summary.items())
        if "val_corruption_error" in row
    }


def eligibility(summary: dict, params: PromoteParams) -> dict:
    """The decision's account of who could be chosen: the budget and who is over it, the
    robustness floor, who is below it and each candidate's margin."""
    return {
        "max_multiply_adds": params.max_multiply_adds,
        "over_budget": over_budget(summary, params.max_multiply_adds),
        "max_corruption_error": params.max_corruption_error,
        "below_floor": below_floor(summary, params.max_corruption_error),
        "robustness": robustness_margins(summary, params.max_corruption_error),
    }


def over_budget(summary: dict, max_multiply_adds: int | None) -> list[str]:
    return sorted(
        row["candidate"] for row in summary.values() if not within_budget(row, max_multiply_adds)
    )


def decide(new_val: float, champion_val: float | None, min_improvement: float) -> tuple[bool, str]:
    if champion_val is None:
        return True, "no champion yet"
    gain = new_val - champion_val
    if gain > 0 and gain >= min_improvement:
        return True, f"validation accuracy {new_val:.4f} beats {champion_val:.4f} by {gain:+.4f}"
    return False, (
        f"validation accuracy {new_val:.4f} does not beat the champion's "
        f"{champion_val:.4f} by at least {min_improvement}"
    )


def champion_holdout_accuracy(champion, summary: dict, holdout: dict) -> float:
    """The champion's accuracy on the feedback hold-out: its summary row's when it is one of
    this summary's runs, else its logged weights (the train stage's artifacts) scored now."""
    for row in summary.values():
        if row["run_id"] == champion.run_id:
            return row["feedback_holdout_accuracy"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            candidate, stats, weights, _ = tracking.trained_files(champion.run_id, Path(tmp))
        except Exception as error:
            raise StageError(
                f"the champion (version {champion.version}, run {champion.run_id}) cannot be "
                f"scored on the feedback hold-out, its train/ artifacts do not load: {error}"
            ) from None
        predictor = inference.load_predictor(candidate, weights, stats)
    return inference.accuracy(predictor, holdout["images"], holdout["labels"], batch_size=256)


def feedback_holdout(row: dict, champion, summary: dict, holdout: dict) -> dict | None:
    """The candidate's and the champion's accuracy on the feedback hold-out, or None while it
    is empty or there is no champion to compare with."""
    if champion is None or not len(holdout["labels"]):
        return None
    return {
        "digits": len(holdout["labels"]),
        "candidate": row["feedback_holdout_accuracy"],
        "champion": champion_holdout_accuracy(champion, summary, holdout),
    }


def judge(
    row: dict, champion, summary: dict, holdout: dict, min_improvement: float
) -> tuple[bool, str, dict | None]:
    """(move the alias?, why, the feedback hold-out comparison): validation accuracy decides,
    and a winner that labels the feedback hold-out worse than the champion is refused."""
    moved, reason = decide(row["val_accuracy"], champion_val(champion), min_improvement)
    if not moved:
        return moved, reason, None
    compared = feedback_holdout(row, champion, summary, holdout)
    if compared and compared["candidate"] < compared["champion"]:
        return (
            False,
            (
                f"{reason}, but labels the feedback hold-out worse: {compared['candidate']:.4f} "
                f"against the champion's {compared['champion']:.4f} on {compared['digits']} "
                "corrected digits"
            ),
            compared,
        )
    return moved, reason, compared


def read_holdout(path: Path | None) -> dict:
    """holdout.npz from the feedback stage; no file (``--holdout`` not given) is empty."""
    if path is None:
        return {"images": np.zeros((0, 28, 28), np.uint8), "labels": np.zeros(0, np.int64)}
    return atomic.read_npz(path)


def champion_val(champion) -> float | None:
    return float(champion.tags["val_accuracy"]) if champion else None


def record(summary: dict, params: PromoteParams, holdout: dict) -> dict:
    """What promote would do, with nothing registered and the alias untouched."""
    name = params.registered_model
    row = best_candidate(
        robust_enough(summary, params.max_corruption_error), params.max_multiply_adds
    )
    champion = registry.current_champion(name) if registry.has_model(name) else None
    compared = None
    if champion is not None and champion.run_id == row["run_id"]:
        would_move, reason = False, "already the champion"
    else:
        would_move, reason, compared = judge(
            row, champion, summary, holdout, params.min_improvement
        )
    return {
        "applied": False,
        "dvc_experiment": tracking.dvc_experiment().get("dvc_exp_name"),
        "registered_model": name,
        "candidate": row["candidate"],
        "run_id": row["run_id"],
        "val_accuracy": row["val_accuracy"],
        "test_accuracy": row["test_accuracy"],
        "alias": registry.ALIAS,
        "would_move_alias": would_move,
        "reason": reason,
        "feedback_holdout": compared,
        "champion_version": champion.version if champion else None,
        **eligibility(summary, params),
    }


def promote(summary: dict, params: PromoteParams, experiment_id: str, holdout: dict) -> dict:
    name = params.registered_model
    row = best_candidate(
        robust_enough(summary, params.max_corruption_error), params.max_multiply_adds
    )
    registry.ensure_registered_model(name)
    registry.reconcile(name)  # an earlier promote killed mid-way
    version = registry.version_for_run(name, row, experiment_id)
    faults.point("promote.registered")  # registered, the alias not moved yet
    champion = registry.current_champion(name)
    compared = None
    if champion is not None and champion.version == version.version:
        moved, reason = False, "already the champion"
    else:
        moved, reason, compared = judge(row, champion, summary, holdout, params.min_improvement)
        if moved:
            registry.move_alias(
                name, version.version, champion.version if champion else None, reason
            )
    served = registry.current_champion(name)
    return {
        "applied": True,
        "registered_model": name,
        "candidate": row["candidate"],
        "version": version.version,
        "run_id": row["run_id"],
        "val_accuracy": row["val_accuracy"],
        "test_accuracy": row["test_accuracy"],
        "alias": registry.ALIAS,
        "alias_moved": moved,
        "reason": reason,
        "feedback_holdout": compared,
        "champion_version": served.version,
        "champion_candidate": served.tags.get("candidate"),
        "champion_run_id": served.run_id,
        **eligibility(summary, params),
    }


def promotion_notes(summary: dict, decision: dict) -> dict[str, tuple[str, str]]:
    """What the decision made of each candidate, for its run's ``promotion`` tag:
    candidate -> (run id, note)."""
    budget = decision["max_multiply_adds"]
    best = summary[decision["candidate"]]
    notes = {}
    for name, row in summary.items():
        if row["run_id"] == decision["champion_run_id"]:
            note = f"champion: served as version {decision['champion_version']}"
        elif name in decision.get("below_floor", []):
            note = (
                f"not eligible: {worse_path_error(row):.1%} error on corrupted validation "
                f"digits, over the robustness floor of {decision['max_corruption_error']:.1%}"
            )
        elif not within_budget(row, budget):
            note = (
                f"not eligible: {row['multiply_adds']:,} multiply-adds an image, over the "
                f"serving budget of {budget:,}"
            )
        elif name == decision["candidate"]:
            note = f"best eligible, not promoted: {decision['reason']}"
        else:
            behind = 100 * (best["val_accuracy"] - row["val_accuracy"])
            note = f"eligible: validation error {behind:.2f} points above {best['candidate']}'s"
        notes[name] = (row["run_id"], note)
    return notes


def main(args) -> None:
    params = load_section(args.params, "promote", PromoteParams)
    experiment_id = tracking.setup(load_section(args.params, "mlflow", MlflowParams))
    if args.rollback:
        version = registry.rollback(params.registered_model)
        print(f"promote: {params.registered_model}@{registry.ALIAS} is now version {version}")
        return
    if args.summary is None or args.out is None or args.robustness is None:
        raise StageError("--summary, --robustness and --out are required unless --rollback")
    summary = with_robustness(atomic.read_json(args.summary), args.robustness)
    holdout = read_holdout(args.holdout)
    if tracking.in_workspace():
        decision = promote(summary, params, experiment_id, holdout)
        tracking.tag_candidates(experiment_id, promotion_notes(summary, decision))
    else:
        decision = record(summary, params, holdout)
    atomic.write_json(args.out, decision)
    if decision["below_floor"]:
        print(
            f"promote: over the robustness floor of {params.max_corruption_error:.1%} error "
            f"on corrupted validation digits, so not eligible: {', '.join(decision['below_floor'])}"
        )
    if decision["over_budget"]:
        print(
            f"promote: over the serving budget of {params.max_multiply_adds:,} multiply-adds "
            f"an image, so not eligible: {', '.join(decision['over_budget'])}"
        )
    if not decision["applied"]:
        verb = "would move to it" if decision["would_move_alias"] else "would stay"
        print(
            f"promote: in experiment {decision['dvc_experiment']} (a temporary copy): best "
            f"candidate {decision['candidate']}; {registry.ALIAS} {verb}: "
            f"{decision['reason']}. Nothing registered; after `dvc exp apply`, "
            "`dvc repro --force promote` promotes it"
        )
        return
    verb = "moved to" if decision["alias_moved"] else "stays on"
    print(
        f"promote: best candidate {decision['candidate']} (version {decision['version']}); "
        f"{registry.ALIAS} {verb} version {decision['champion_version']}: {decision['reason']}"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("promote", __doc__)
    p.add_argument("--summary", type=Path, help="summary.json from summarize")
    p.add_argument("--out", type=Path, help="decision.json to write")
    p.add_argument(
        "--robustness", type=Path, help="robustness's folder (<candidate>/corruptions.json)"
    )
    p.add_argument(
        "--holdout",
        type=Path,
        help="holdout.npz from feedback: a new champion must label it as well as the current one",
    )
    p.add_argument(
        "--rollback",
        action="store_true",
        help="point the champion alias back at the previous champion and exit",
    )
    cli.run("promote", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
