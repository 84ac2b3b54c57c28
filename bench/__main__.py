"""`make bench`: every speed figure in one run, written to docs/performance.md.

    python -m bench [--parts pipeline,training,distributed,serving,robustness,team]
                    [--tiny] [--out FILE]

Calibrates the machine once (the page's header), then runs the parts in order:
bench/pipeline_bench.py (fetch, `dvc repro`, per-candidate training and evaluation),
bench/distributed_bench.py, bench/serving_bench.py, bench/robustness_bench.py and
bench/team_bench.py. A part that fails writes its error into its own row and the run
goes on; the page ends with how long each part took. A partial run (--parts or --tiny)
writes to bench/out/performance.md unless --out says otherwise, so the page in docs/
always holds a whole run. --tiny runs every part that has a small size at that size
(seconds, not minutes: the suite's check that the command still works). GPU figures:
bench/gpu.py, on a machine with one.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from harness.report import ROOT, Report

PARTS = ("pipeline", "training", "distributed", "serving", "robustness", "team")
TINY = ("pipeline", "serving")  # the parts with a small size
LOAD_SECONDS = 5  # each wrk run: long enough for a steady p99 at thousands of req/s


def part_runners(tiny: bool) -> dict[str, Callable[[Report], None]]:
    """Each part's run, at its full size or its tiny one. Imported late: a part's import
    failing is that part's failure, not the run's."""

    def pipeline(report: Report) -> None:
        from bench import pipeline_bench

        pipeline_bench.run_all(report, skip_repro=tiny, skip_training=True)

    def training(report: Report) -> None:
        from bench import pipeline_bench

        pipeline_bench.run_all(report, skip_repro=True, skip_training=False, fetch_row=False)

    def distributed(report: Report) -> None:
        from bench import distributed_bench

        distributed_bench.run_all(report)

    def serving(report: Report) -> None:
        from bench import serving_bench

        if tiny:
            serving_bench.run_all(report, duration=1, concurrency=4, tiny=True)
        else:
            serving_bench.run_all(report, duration=LOAD_SECONDS)

    def robustness(report: Report) -> None:
        from bench import robustness_bench

        robustness_bench.run_all(report, duration=LOAD_SECONDS)

    def team(report: Report) -> None:
        from bench import team_bench

        team_bench.run_all(report)

    return {
        "pipeline": pipeline,
        "training": training,
        "distributed": distributed,
        "serving": serving,
        "robustness": robustness,
        "team": team,
    }


def run_parts(
    report: Report,
    parts: list[str],
    tiny: bool,
    runners: dict[str, Callable[[Report], None]] | None = None,
) -> dict[str, str]:
    """Run each part, its failure recorded in its row; returns each part's outcome."""
    runners = runners or part_runners(tiny)
    outcomes, took = {}, {}
    for name in parts:
        started = time.perf_counter()
        try:
            runners[name](report)
            outcome = "ok"
        except (Exception, SystemExit) as error:  # the run goes on, the row says why
            traceback.print_exc()
            outcome = f"**failed**: {type(error).__name__}: {str(error).strip()[-300:]}"
            report.row(f"Failed: {name}", f"the {name} part", outcome.replace("|", "/"))
        took[name] = time.perf_counter() - started
        outcomes[name] = outcome
    report.table("How long each part took", "part", "seconds", "outcome")
    for name, seconds in took.items():
        report.add("How long each part took", name, f"{seconds:.0f}", outcomes[name].split(":")[0])
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated parts to run, in this order (default: %(default)s)",
    )
    p.add_argument("--tiny", action="store_true", help=f"the parts {TINY} at a tiny size only")
    p.add_argument("--out", type=Path, help="markdown file to write")
    args = p.parse_args(argv)
    parts = [name for name in args.parts.split(",") if name]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: no part named {unknown}; the parts are {', '.join(PARTS)}")
    if args.tiny:
        parts = [name for name in parts if name in TINY]
    partial = args.tiny or parts != list(PARTS)
    out = args.out or ROOT / ("bench/out" if partial else "docs") / "performance.md"
    report = Report("Performance")
    report.calibrate()
    outcomes = run_parts(report, parts, args.tiny)
    report.write(out)
    failed = [name for name, outcome in outcomes.items() if outcome != "ok"]
    if failed:
        print(f"bench: parts that failed (their rows say why): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
