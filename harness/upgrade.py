"""The serving tests against a newer BentoML than the pinned one: does an upgrade break the
service, and where. Writes docs/upgrades.md.

    python -m harness.upgrade                     the newest BentoML the package index has
    python -m harness.upgrade --version 1.4.40    a given one

In a throwaway virtual environment (deleted afterwards): the project's pinned packages,
then BentoML at the version asked for; then the tests that drive the service (the class,
its ASGI app, a real `bentoml serve`, the page in Chromium, the Bento's build) under that
interpreter. The page names both versions, the result and every failing test; the exit
code is pytest's. It installs from the package index, so it is a command, not a test.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.report import ROOT, git_commit, machine
from pipeline import atomic

PAGE = ROOT / "docs" / "upgrades.md"
# The tests whose subject is the service itself.
SERVING_TESTS = [
    "tests/serving",
    "tests/browser/test_page.py",
    "tests/browser/test_page_in_bento.py",
    "tests/browser/test_api_page.py",
]


def pinned() -> str:
    found = re.search(r'"bentoml==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    if not found:
        raise SystemExit("pyproject.toml pins no bentoml version")
    return found.group(1)


def newest() -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "bentoml"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return shown.splitlines()[0].split("(")[1].rstrip(")")


def run(venv: Path, version: str) -> tuple[int, str]:
    """(pytest's exit code, its summary lines) with BentoML ``version`` in a new ``venv``."""
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    # pip warns that the project pins another version: that is the point of the check.
    subprocess.run([*pip, f"bentoml=={version}"], check=True)
    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *SERVING_TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = [
        line
        for line in tests.stdout.splitlines()
        if line.startswith("FAILED") or line.startswith("ERROR") or " passed" in line
    ]
    return tests.returncode, "\n".join(summary) or tests.stdout[-2000:]


def render(base: str, version: str, code: int, summary: str) -> str:
    verdict = "the service's tests pass" if code == 0 else f"**breaks** (pytest exit {code})"
    return f"""# BentoML upgrade check

Written by `python -m harness.upgrade`; do not edit by hand.

- date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
- machine: {machine()}
- commit: {git_commit()}

| pinned | tried | tests | result |
|---|---|---|---|
| {base} | {version} | {", ".join(f"`{t}`" for t in SERVING_TESTS)} | {verdict} |

```
{summary}
```

The service reaches past BentoML's public API in one module, `serving/bentoml_adapter.py`;
`tests/serving/test_bentoml_adapter.py`, among the tests above, names what an upgrade moved.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.upgrade",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", help="the BentoML to try (default: the newest on the index)")
    p.add_argument("--out", type=Path, default=PAGE, help="default: %(default)s")
    args = p.parse_args(argv)
    version = args.version or newest()
    with tempfile.TemporaryDirectory(prefix="bentoml-upgrade-") as tmp:
        code, summary = run(Path(tmp) / "venv", version)
    atomic.write_text(args.out, render(pinned(), version, code, summary))
    print(f"upgrade: bentoml {pinned()} -> {version}: pytest exit {code}; wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
