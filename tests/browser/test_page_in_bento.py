"""The page ships in the Bento: `bentoml build -f serving/bentofile.yaml` packs every file of
serving/static/ and serving/ui.py, byte for byte, so a containerized service serves /ui/
offline just as `bentoml serve` does from the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.ui import STATIC

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bento_contains_the_page_and_its_assets(model_tag: str, bentoml_home: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "MNIST_MODEL_TAG": model_tag}
    command = [sys.executable, "-m", "bentoml", "build", "-f", "serving/bentofile.yaml"]
    result = subprocess.run(
        [*command, "-o", "tag", "."],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    name, version = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:").split(":")
    packed = bentoml_home / "bentos" / name / version / "src" / "serving"

    assets = sorted(path.relative_to(STATIC) for path in STATIC.rglob("*") if path.is_file())
    assert {"index.html", "app.js", "style.css"} <= {str(path) for path in assets}
    for asset in assets:
        assert (packed / "static" / asset).read_bytes() == (STATIC / asset).read_bytes(), asset
    assert (packed / "ui.py").read_bytes() == (STATIC.parent / "ui.py").read_bytes()
