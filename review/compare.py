"""What each side of a review made, side by side, and the gate's rules over it.

In: each side's outputs as its scratch commit holds them (summary.json, decision.json,
each candidate's corruptions.json, params.yaml), the serving figures measured side by
side, and the change's ``review`` params (pipeline/params.py, ReviewParams). Out:
``Outcome`` (the champions, the candidate rows, the robustness per corruption family)
and the gate's refusals, each naming its rule, the figures and the key that lets it by.
Pure functions: no git, DVC or server here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.params import ReviewParams
from reproduction.study import REFERENCES, verdict

PATHS = ("arrays", "images")  # the serving paths the robustness stage measures


@dataclass
class Outcome:
    """One side's results."""

    summary: dict  # candidate -> summary.json row
    decision: dict  # promote's decision.json
    corruptions: dict  # candidate -> corruptions.json
    references: dict  # candidate -> "R1".."R5", for those reproducing a published system

    @property
    def champion(self) -> str:
        return self.decision.get("champion_candidate") or self.decision["candidate"]

    def val_accuracy(self) -> float:
        return self.summary[self.champion]["val_accuracy"]

    def corruption_error(self, split: str = "val") -> dict[str, float]:
        """The champion's mean error over corruption families, per serving path."""
        report = self.corruptions.get(self.champion, {}).get(split, {})
        return {path: report[path]["mean_error"] for path in PATHS if path in report}

    def families(self, split: str = "test") -> dict[str, dict[str, float]]:
        """path -> family -> the champion's error on ``split``."""
        report = self.corruptions.get(self.champion, {}).get(split, {})
        return {path: report[path]["families"] for path in PATHS if path in report}

    def reproduction(self, candidate: str) -> tuple[str, str] | None:
        """(verdict, why) of a candidate reproducing a published system, on its test
        accuracy; None for the others."""
        ref_id = self.references.get(candidate)
        ref = next((r for r in REFERENCES if r.id == ref_id), None)
        if ref is None or candidate not in self.summary:
            return None
        return verdict(100 * self.summary[candidate]["test_accuracy"], ref)


@dataclass
class Speed:
    """Single-digit /predict of one side's Bento: medians over alternating runs."""

    requests_per_s: float
    p99_ms: float
    runs: int


@dataclass
class Refusal:
    rule: str  # the review params key that sets it
    message: str


def references(params: dict) -> dict[str, str]:
    """candidate -> the published system it reproduces, for the enabled candidates."""
    candidates = params["train"]["candidates"]
    return {
        name: candidates[name]["reference"]
        for name in params["train"]["enabled"]
        if candidates.get(name, {}).get("reference")
    }


def override(key: str, value: float | bool) -> str:
    return (
        f"to accept it on purpose, set review.{key} to {value} in params.yaml in this "
        "change: the report's params diff shows that to the reviewer"
    )


def gate(
    base: Outcome,
    change: Outcome,
    speed: dict[str, Speed] | None,
    tolerances: ReviewParams,
) -> list[Refusal]:
    """Every rule the change breaks (none: it may merge)."""
    refusals = []
    drop = base.val_accuracy() - change.val_accuracy()
    if drop > tolerances.max_val_accuracy_drop + 1e-12:
        refusals.append(
            Refusal(
                "max_val_accuracy_drop",
                f"the champion's validation accuracy drops by {drop:.4f} "
                f"({base.champion} {base.val_accuracy():.4f} -> {change.champion} "
                f"{change.val_accuracy():.4f}), more than review.max_val_accuracy_drop = "
                f"{tolerances.max_val_accuracy_drop}; "
                + override("max_val_accuracy_drop", round(drop + 0.0005, 3)),
            )
        )
    if speed is not None:
        before, after = speed["base"].p99_ms, speed["change"].p99_ms
        growth = after / before - 1
        if growth > tolerances.max_p99_increase:
            refusals.append(
                Refusal(
                    "max_p99_increase",
                    f"single-digit p99 grows by {growth:.0%} ({before:.2f} -> {after:.2f} ms, "
                    f"medians of {speed['change'].runs} alternating runs), more than "
                    f"review.max_p99_increase = {tolerances.max_p99_increase}; "
                    + override("max_p99_increase", round(growth + 0.05, 2)),
                )
            )
    before_err, after_err = base.corruption_error(), change.corruption_error()
    for path in PATHS:
        if path in before_err and path in after_err:
            growth = after_err[path] - before_err[path]
            if growth > tolerances.max_corruption_error_increase + 1e-12:
                refusals.append(
                    Refusal(
                        "max_corruption_error_increase",
                        f"the champion's mean error on corrupted validation digits ({path}) "
                        f"grows by {growth:.3f} ({before_err[path]:.3f} -> "
                        f"{after_err[path]:.3f}), more than "
                        f"review.max_corruption_error_increase = "
                        f"{tolerances.max_corruption_error_increase}; "
                        + override("max_corruption_error_increase", round(growth + 0.005, 3)),
                    )
                )
    if tolerances.keep_reproductions:
        for candidate in sorted(set(base.references) & set(change.references)):
            was, now = base.reproduction(candidate), change.reproduction(candidate)
            if was and now and was[0] == "reproduced" and now[0] != "reproduced":
                refusals.append(
                    Refusal(
                        "keep_reproductions",
                        f"{candidate} ({change.references[candidate]}) no longer reproduces its "
                        f"published system: {now[1]} (the base: {was[1]}); "
                        + override("keep_reproductions", False),
                    )
                )
    return refusals
