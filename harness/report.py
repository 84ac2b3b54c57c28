"""The figures a benchmark run measured, as a markdown file with one header.

In: rows (section, what was measured, the figure, its target) added as the benchmarks
run. Out: a markdown page whose header says when, on which machine, with which
calibration and by which command it was made; then one table per section, one figure a
cell. Machines of the same kind differ by up to 2x from day to day, so the calibration
(a pure-Python loop and a float32 matmul, timed in the same run) is what makes two
pages comparable, and ratios within a page are what the targets compare.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import atomic

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """(best wall-clock seconds over ``repeat`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def calibration() -> dict[str, float]:
    """Seconds for 10^7 Python additions and for 20 float32 1024x1024 matmuls (best of 3)."""
    import torch

    def python_loop() -> int:
        total = 0
        for i in range(10_000_000):
            total += i
        return total

    a = torch.randn(1024, 1024)
    loop, _ = timed(python_loop, repeat=3)
    matmul, _ = timed(lambda: [a @ a for _ in range(20)], repeat=3)
    return {"python_loop_s": loop, "matmul_s": matmul}


def machine() -> str:
    model, vector = "unknown CPU", ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):  # machines of one kind differ: AVX-512 or AVX2 only
            flags = line.split(":", 1)[1].split()
            vector = ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
            break
    return (
        f"{model}{vector}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}"
    )


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


DEFAULT_COLUMNS = ("what", "measured", "target")


@dataclass
class Report:
    title: str
    command: str = field(default_factory=lambda: " ".join(["python", *sys.orig_argv[1:]]))
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sections: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)

    def calibrate(self) -> None:
        self.calibrated = calibration()
        print(
            f"calibration: 10^7 Python additions {self.calibrated['python_loop_s']:.2f} s, "
            f"20 float32 1024x1024 matmuls {self.calibrated['matmul_s']:.2f} s",
            flush=True,
        )

    def row(self, section: str, what: str, figure: str, target: str = "") -> None:
        """One figure in a (what, measured, target) table."""
        self.add(section, what, figure, target)

    def table(self, section: str, *columns: str) -> None:
        """Declare a section whose rows have these columns (the first says what)."""
        self.columns[section] = columns

    def add(self, section: str, *cells: str) -> None:
        columns = self.columns.setdefault(section, DEFAULT_COLUMNS)
        if len(cells) != len(columns):
            raise ValueError(f"{section}: {len(cells)} cells for columns {columns}")
        self.sections.setdefault(section, []).append(cells)
        print(
            f"{section}: " + "  ".join(f"{c}: {v}" for c, v in zip(columns, cells, strict=True)),
            flush=True,
        )

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def markdown(self) -> str:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        lines = [
            f"# {self.title}",
            "",
            "Written by the benchmarks; do not edit by hand.",
            "",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- machine: {machine()} (load average {load} when written)",
        ]
        if self.calibrated:
            lines.append(
                f"- calibration: 10^7 Python additions {self.calibrated['python_loop_s']:.2f} s, "
                f"20 float32 1024x1024 matmuls {self.calibrated['matmul_s']:.2f} s (best of 3)"
            )
        lines += [f"- code: git commit {git_commit()}", f"- command: `{self.command}`", ""]
        for section, rows in self.sections.items():
            columns = self.columns[section]
            lines += [
                f"## {section}",
                "",
                "| " + " | ".join(columns) + " |",
                "|" + "---|" * len(columns),
            ]
            lines += ["| " + " | ".join(cells) + " |" for cells in rows]
            lines += [""] + [f"{text}\n" for text in self.notes.get(section, [])]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, path: Path) -> None:
        atomic.write_text(path, self.markdown())
        print(f"wrote {path}")
