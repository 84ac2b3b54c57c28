"""The front page and docs/: every relative link resolves, and no product file speaks of
how it was written (sessions, issue numbers, pages "not yet" there)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# How a page was written is history (git log), not product.
HISTORY = re.compile(
    r"\b(this|last|previous|earlier|next) session\b|not yet (on|written)"
    r"|this branch|\bissue #?\d+|\btask \d+\b",
    re.IGNORECASE,
)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a markdown page's headings."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # not code blocks
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve()
        missing_anchor = anchor and resolved.suffix == ".md" and resolved.exists()
        if not resolved.exists() or (missing_anchor and anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_the_generated_pages_exist() -> None:
    for name in ("performance.md", "reproduction.md", "reliability.md", "loops.md"):
        page = ROOT / "docs" / name
        assert page.is_file(), f"docs/{name} is missing: its command writes it"
        header = page.read_text()[:2000]
        assert "- date:" in header and "- machine:" in header and "calibration" in header


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    suffixes = {".md", ".py", ".yaml", ".yml", ".toml", ".sh", ".html", ".js", ".cfg", ""}
    skip = {"dvc.lock"}
    return [
        ROOT / name
        for name in listed
        if Path(name).suffix in suffixes and name not in skip and (ROOT / name).is_file()
    ]


def test_no_product_file_speaks_of_how_it_was_written() -> None:
    offenders = []
    for path in tracked_text_files():
        if path == Path(__file__):
            continue  # the pattern itself
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if HISTORY.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
