"""How long each of the project's loops takes: run a command, time it, and record the
figure in docs/loops.md (and docs/loops.json, which holds the rows).

    python -m harness.loops NAME -- COMMAND ...     e.g.  python -m harness.loops run -- make run
    python -m harness.loops --render                the page again from the JSON

Each row keeps its own date, machine, calibration and load average (measured just before
the command), since the loops are timed in different runs and these machines differ up to
2x from day to day. A row replaces the older row of the same NAME; a command that fails
is recorded with its exit code, never dropped. The exit code is the command's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.report import ROOT, calibration, git_commit, machine
from pipeline import atomic

PAGE = ROOT / "docs" / "loops.md"


def record(name: str, command: list[str], cwd: Path, page: Path) -> int:
    cal = calibration()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    code = subprocess.call(command, cwd=cwd)
    seconds = time.perf_counter() - started
    store = page.with_suffix(".json")
    rows = atomic.read_json(store) if store.is_file() else {}
    rows[name] = {
        "command": " ".join(command),
        "seconds": round(seconds, 1),
        "exit_code": code,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "calibration": cal,
        "load_before": load,
        "commit": git_commit(),
    }
    atomic.write_json(store, rows)
    atomic.write_text(page, render(rows))
    print(f"loops: {name}: {seconds / 60:.1f} min, exit {code}; wrote {page}", flush=True)
    return code


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def render(rows: dict[str, dict]) -> str:
    machines = sorted({row["machine"] for row in rows.values()})
    dates = sorted(row["date"] for row in rows.values())
    lines = [
        "# The loops: how long each command takes",
        "",
        "Written by `python -m harness.loops NAME -- COMMAND`; do not edit by hand.",
        "",
        f"- date: {dates[0]} to {dates[-1]}" if dates else "- date: none recorded",
        f"- machine: {'; '.join(machines)}",
        "- calibration: per row (10^7 Python additions / 20 float32 1024x1024 matmuls, "
        "best of 3, measured just before the command)",
        "",
        "| loop | command | took | exit | when | machine | calibration | load before | commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cal = row["calibration"]
        lines.append(
            f"| {name} | `{row['command']}` | {minutes(row['seconds'])} | {row['exit_code']} | "
            f"{row['date']} | {row['machine']} | "
            f"{cal['python_loop_s']:.2f} s / {cal['matmul_s']:.2f} s | "
            f"{row['load_before']} | {row['commit']} |"
        )
    lines += [
        "",
        "Each row is one run of its command in a clone of the repository, install included "
        "where the command installs: `make run` and `make test` on a fresh clone, the "
        "others after `make run` in the same clone, on the machine its row names.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m harness.loops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="the loop's name: run, test, check, bench, ...")
    p.add_argument("--render", action="store_true", help="write the page from the JSON again")
    p.add_argument("--page", type=Path, default=PAGE, help="default: %(default)s")
    p.add_argument("--cwd", type=Path, default=Path.cwd(), help="where the command runs")
    args = p.parse_args(argv)
    if args.render:
        atomic.write_text(args.page, render(atomic.read_json(args.page.with_suffix(".json"))))
        return 0
    if not args.name or not command:
        p.error("give a NAME and, after --, the command to time")
    return record(args.name, command, args.cwd, args.page)


if __name__ == "__main__":
    sys.exit(main())
