"""`make bench`: every speed figure in one run, written to docs/performance.md.

    python -m bench [--skip-repro] [--skip-training] [--skip-serving] [--skip-team] [--out FILE]

Calibrates the machine once (the page's header), then runs bench/pipeline_bench.py,
bench/distributed_bench.py, bench/serving_bench.py, bench/robustness_bench.py and
bench/team_bench.py. A partial run
(any --skip) writes to bench/out/performance.md unless --out says otherwise, so the page
in docs/ always holds a whole run. GPU figures: bench/gpu.py, on a machine with one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import (
    distributed_bench,
    pipeline_bench,
    robustness_bench,
    serving_bench,
    team_bench,
)
from harness.report import ROOT, Report


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--skip-repro", action="store_true", help="skip the dvc repro timings")
    p.add_argument("--skip-training", action="store_true", help="skip per-candidate timings")
    p.add_argument("--skip-serving", action="store_true", help="skip the serving benchmark")
    p.add_argument("--skip-team", action="store_true", help="skip the team-stack benchmark")
    p.add_argument("--out", type=Path, help="markdown file to write")
    args = p.parse_args()
    partial = args.skip_repro or args.skip_training or args.skip_serving or args.skip_team
    out = args.out or ROOT / ("bench/out" if partial else "docs") / "performance.md"
    report = Report("Performance")
    report.calibrate()
    pipeline_bench.run_all(report, args.skip_repro, args.skip_training)
    if not args.skip_training:
        distributed_bench.run_all(report)
    if not args.skip_serving:
        serving_bench.run_all(report)
        robustness_bench.run_all(report)
    if not args.skip_team:
        team_bench.run_all(report)
    report.write(out)


if __name__ == "__main__":
    main()
