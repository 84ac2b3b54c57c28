"""Debian's Chromium as Playwright drives it here (its own browser download does not work
offline): the executable and the flags for a headless run with no background traffic."""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [  # Playwright adds --headless and a fresh temporary --user-data-dir
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
