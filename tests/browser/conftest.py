"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, the real
`bentoml serve` from tests/serving/fixtures.py, and a folder for screenshots.

Chromium must be installed (`apt-get install -y chromium`); Playwright's own browser
download does not work offline. If it is missing or cannot start, the tests fail and say why.
Screenshots go to tests/browser/artifacts/ (gitignored); the path is printed at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.chromium import CHROMIUM, CHROMIUM_FLAGS

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for a test module. Not for the session: Playwright's sync API
    holds an asyncio loop in the main thread while it runs, and later tests that call
    asyncio.run() (tests/serving) would fail."""
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `apt-get install -y chromium` (Debian)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, timeout=60_000
            )
        except Error as error:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {error}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests save screenshots; emptied at the start of a session."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir()
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"browser test screenshots: {ARTIFACTS}")
