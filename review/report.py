"""make report BASE=<ref>: what a change does to the models and the served champion.

Reproduces BASE and the working tree (committed or not) with DVC in a scratch clone
(review/scratch.py: a stage one side or an earlier review already ran is restored from
the run cache, and the report says which stages had to train), then writes one markdown
page with its pictures beside it:

- params diff (`dvc params diff`) and, per candidate, validation and test accuracy,
  training time and multiply-adds (`dvc metrics diff`, each side's summary.json);
- the champion decision of each side (promote's decision.json);
- the plots diff (`dvc plots diff`: training curves, confusion counts, ...) as PNG
  pictures, rendered offline from DVC's own Vega-Lite specs by vl-convert;
- the robustness report per corruption family for each side's champion (test split);
- the R1-R5 reproductions, each side's verdict against its published band;
- single-digit /predict throughput and p99 of both champions' Bentos, side by side;
- the gate (review/compare.py): the rules this change breaks, with the figures.

Exit status: 0 when the gate passes, 1 when it refuses the change, 2 for bad input (an
unknown ref, a dirty tree with --require-clean, a side without the pipeline's outputs).
``--profile small`` runs both sides on the small data profile of the tests (a few
thousand images, two short candidates): minutes on 2 cores, for pull requests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

from harness.report import machine
from pipeline.errors import StageError
from pipeline.params import ReviewParams, load_section
from review import compare, speed
from review.scratch import Scratch, Side, changes, resolve, side_label

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("base", "change")


def outcome(scratch: Scratch, side: Side) -> compare.Outcome:
    summary = json.loads(scratch.show(side, "reports/summary/summary.json"))
    decision = json.loads(scratch.show(side, "reports/promote/decision.json"))
    params = yaml.safe_load(scratch.show(side, "params.yaml"))
    corruptions = {}
    for name in summary:
        path = f"reports/robustness/{name}/corruptions.json"
        with contextlib.suppress(StageError):  # a base from before the corruption report
            corruptions[name] = json.loads(scratch.show(side, path))
    return compare.Outcome(summary, decision, corruptions, compare.references(params))


def signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}" if value else "="


def candidates_table(base: compare.Outcome, change: compare.Outcome, metrics: dict) -> str:
    """A row per candidate: base -> change for validation and test accuracy (DVC's
    metrics diff), training seconds and multiply-adds (each side's summary)."""
    rows = [
        "| candidate | validation accuracy | test accuracy | training time | multiply-adds |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(set(base.summary) | set(change.summary)):
        scores = metrics.get(f"reports/scores/{name}.json", {})
        cells = []
        for key in ("val_accuracy", "test_accuracy"):
            entry = scores.get(key, {})
            old, new = entry.get("old"), entry.get("new")
            cells.append(change_cell(old, new, "{:.4f}"))
        old, new = base.summary.get(name, {}), change.summary.get(name, {})
        cells.append(change_cell(old.get("train_seconds"), new.get("train_seconds"), "{:.1f} s"))
        cells.append(change_cell(old.get("multiply_adds"), new.get("multiply_adds"), "{:,}"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def change_cell(old, new, form: str) -> str:
    if old is None and new is None:
        return "-"
    if old is None:
        return f"(new) {form.format(new)}"
    if new is None:
        return f"{form.format(old)} (removed)"
    if form.format(old) == form.format(new):
        return form.format(new)
    return f"{form.format(old)} → **{form.format(new)}**"


def params_table(diff: dict) -> str:
    """`dvc params diff --json` as a table, or a line saying nothing changed."""
    rows = [
        f"| {name} | {format_param(entry.get('old'))} | {format_param(entry.get('new'))} |"
        for changes in diff.values()
        for name, entry in sorted(changes.items())
    ]
    if not rows:
        return "No params changed."
    return "\n".join(["| param | base | change |", "|---|---|---|", *rows])


def format_param(value) -> str:
    return "-" if value is None else f"`{json.dumps(value)}`"


def eligibility(decision: dict) -> str:
    """Why the champion is the one: best validation accuracy among the eligible."""
    left_out = [
        f"{', '.join(decision[key])} {what}"
        for key, what in (
            ("over_budget", "over the serving budget"),
            ("below_floor", "over the robustness floor"),
        )
        if decision.get(key)
    ]
    why = "best validation accuracy"
    return f"{why}; not eligible: {'; '.join(left_out)}" if left_out else why


def decision_table(sides: dict[str, Side], outcomes: dict[str, compare.Outcome]) -> str:
    rows = ["| | champion | validation accuracy | test accuracy | why |", "|---|---|---|---|---|"]
    for name in SIDES:
        o = outcomes[name]
        row = o.summary[o.champion]
        reason = eligibility(o.decision)
        rows.append(
            f"| {name}: {sides[name].label} | {o.champion} | {row['val_accuracy']:.4f} | "
            f"{row['test_accuracy']:.4f} | {reason} |"
        )
    return "\n".join(rows)


def robustness_table(base: compare.Outcome, change: compare.Outcome) -> str:
    """Per corruption family and serving path, the champion's test error, base -> change."""
    before, after = base.families(), change.families()
    if not before or not after:
        return "One side has no corruption report."
    rows = [
        f"| family | arrays (/predict): {base.champion} → {change.champion} | "
        "images (/predict_image) |",
        "|---|---|---|",
    ]
    for family in sorted(set(before.get("arrays", {})) | set(after.get("arrays", {}))):
        cells = [
            change_cell(before.get(path, {}).get(family), after.get(path, {}).get(family), "{:.1%}")
            for path in compare.PATHS
        ]
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
    means = [
        change_cell(
            base.corruption_error("test").get(path), change.corruption_error("test").get(path),
            "{:.1%}",
        )
        for path in compare.PATHS
    ]  # fmt: skip
    rows.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(rows)


def reproduction_table(base: compare.Outcome, change: compare.Outcome, profile: str) -> str:
    names = sorted(set(base.references) | set(change.references))
    if not names:
        return "No enabled candidate reproduces a published system on both sides."
    rows = ["| candidate | system | base | change |", "|---|---|---|---|"]
    if profile == "small":
        rows.insert(0, "The bands are for training on the full data set: with the small profile "
                    "the verdicts only show which way a change moves.\n")  # fmt: skip
    for name in names:
        cells = []
        for o in (base, change):
            found = o.reproduction(name)
            cells.append(f"{found[0]}: {found[1]}" if found else "-")
        system = change.references.get(name) or base.references.get(name)
        rows.append(f"| {name} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def speed_table(figures: dict[str, compare.Speed] | None, reason: str) -> str:
    if figures is None:
        return f"Not measured: {reason}."
    rows = ["| | req/s | p99 |", "|---|---|---|"]
    for name in SIDES:
        rows.append(
            f"| {name} | {figures[name].requests_per_s:,.0f} | {figures[name].p99_ms:.2f} ms |"
        )
    b, c = figures["base"], figures["change"]
    rows.append(
        f"| change / base | {c.requests_per_s / b.requests_per_s:.2f}x | "
        f"{c.p99_ms / b.p99_ms:.2f}x |"
    )
    return "\n".join(rows)


def render_plots(plots: dict, out: Path) -> list[tuple[str, str]]:
    """(title, file) of a PNG per Vega-Lite plot of `dvc plots diff --json`."""
    import vl_convert

    pictures = []
    for title, entries in plots.get("data", {}).items():
        for number, entry in enumerate(entries):
            if entry.get("type") != "vega":
                continue
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
            name = f"plot-{slug}{'-' + str(number) if number else ''}.png"
            png = vl_convert.vegalite_to_png(json.dumps(entry["content"]), scale=1)
            (out / name).write_bytes(png)
            pictures.append((title, name))
    return pictures


def trained_line(side: Side) -> str:
    if side.trained:
        return f"trained {', '.join(side.trained)}"
    return "trained nothing"


def page(
    sides: dict[str, Side],
    outcomes: dict[str, compare.Outcome],
    params_changed: str,
    metrics: dict,
    pictures: list[tuple[str, str]],
    figures: dict | None,
    speed_note: str,
    refusals: list[compare.Refusal],
    profile: str,
) -> str:
    base, change = outcomes["base"], outcomes["change"]
    verdict = (
        "**The gate passes.**"
        if not refusals
        else "**The gate refuses this change:**\n\n"
        + "\n".join(f"- `{r.rule}`: {r.message}" for r in refusals)
    )
    runs = "\n".join(
        f"- {name}: {sides[name].label}: {len(sides[name].ran)} stages run, "
        f"{len(sides[name].restored)} restored from DVC's run cache; {trained_line(sides[name])}"
        for name in SIDES
    )
    plots = "\n\n".join(f"**{title}**\n\n![{title}]({file})" for title, file in pictures)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Review: {sides["change"].label} against {sides["base"].label}

Written by `make report` on {now}, {machine()}; data profile: {profile}.

{verdict}

{runs}

## Champion

{decision_table(sides, outcomes)}

## Params

{params_changed}

## Candidates

{candidates_table(base, change, metrics)}

## Robustness of the champion (test split, error per corruption family)

{robustness_table(base, change)}

## Reproductions of published systems (test accuracy against the published band)

{reproduction_table(base, change, profile)}

## Serving: single-digit `/predict` of each champion's Bento, side by side

{speed_table(figures, speed_note)}

## Plots

{plots or "No plots."}
"""


def sample_digit(scratch: Scratch) -> np.ndarray:
    with np.load(scratch.repo / "data/split/test.npz", allow_pickle=False) as test:
        return test["images"][0]


def review(args: argparse.Namespace, say) -> int:
    project = args.project.resolve()
    base_commit = resolve(project, args.base)
    changed = changes(project)
    if changed and args.require_clean:
        listed = ", ".join(path for _, path in changed[:8]) + (", ..." if len(changed) > 8 else "")
        raise StageError(
            f"the working tree has uncommitted changes ({listed}); commit or stash them: "
            "with --require-clean the report is of HEAD as committed"
        )
    head = resolve(project, "HEAD")
    small = None
    if args.profile == "small":
        from harness.project import small_profile as small
    scratch = Scratch(project, args.workdir, small)
    scratch.open()
    sides = {
        "base": Side("base", side_label("base", args.base, base_commit, []), base_commit),
        "change": Side("change", side_label("change", "", head, changed), head),
    }
    for name in SIDES:
        scratch.reproduce(sides[name], changed if name == "change" else [], say)
        scratch.run("git", "tag", "-f", name, sides[name].commit)
    outcomes = {name: outcome(scratch, sides[name]) for name in SIDES}
    tolerances = load_section(scratch.repo / "params.yaml", "review", ReviewParams)
    params = scratch.dvc_json("params", "diff", "base", "change")
    metrics = scratch.dvc_json("metrics", "diff", "base", "change", "--all")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("plot-*.png"):
        old.unlink()
    plots = scratch.dvc_json("plots", "diff", "base", "change")
    pictures = render_plots(plots, out)
    figures, speed_note = None, "--serve-rounds 0"
    if args.serve_rounds:
        say(f"serving: both champions' Bentos, {args.serve_rounds} alternating runs each ...")
        bentos = {
            name: json.loads(scratch.show(sides[name], "reports/package/bento.json"))["bento"]
            for name in SIDES
        }
        figures = speed.measure(
            bentos, sample_digit(scratch), scratch.env, scratch.folder,
            args.serve_rounds, args.serve_seconds,
        )  # fmt: skip
    refusals = compare.gate(outcomes["base"], outcomes["change"], figures, tolerances)
    text = page(
        sides, outcomes, params_table(params), metrics, pictures, figures, speed_note, refusals,
        args.profile,
    )  # fmt: skip
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(
        json.dumps(
            {
                "base": vars(sides["base"]),
                "change": vars(sides["change"]),
                "champions": {name: outcomes[name].champion for name in SIDES},
                "val_accuracy": {name: outcomes[name].val_accuracy() for name in SIDES},
                "speed": {name: vars(figures[name]) for name in SIDES} if figures else None,
                "refusals": [vars(r) for r in refusals],
            },
            indent=2,
        )
    )
    say(f"report: {out / 'report.md'}")
    for refusal in refusals:
        print(f"report: gate refuses ({refusal.rule}): {refusal.message}", file=sys.stderr)
    return 1 if refusals else 0


def cli_main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m review",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", help="the git ref to compare the working tree with (main, HEAD~1, ...)")
    p.add_argument("--profile", choices=["full", "small"], default="full")
    p.add_argument("--project", type=Path, default=Path.cwd(), help="the project's repository")
    p.add_argument("--out", type=Path, help="report folder (default: reports/review)")
    p.add_argument(
        "--workdir", type=Path,
        help="scratch clone, DVC cache and MLflow store, kept between reviews "
        "(default: review-scratch; BentoML builds nothing under a hidden folder)",
    )  # fmt: skip
    p.add_argument("--serve-rounds", type=int, default=3, help="0: no serving measurement")
    p.add_argument("--serve-seconds", type=int, default=5)
    p.add_argument(
        "--require-clean", action="store_true",
        help="refuse a working tree with uncommitted changes (CI: the report is of a commit)",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.out = args.out or args.project / "reports" / "review"
    args.workdir = args.workdir or args.project / "review-scratch"

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        sys.exit(review(args, say))
    except StageError as error:
        print(f"report: error: {error}", file=sys.stderr)
        sys.exit(2)
