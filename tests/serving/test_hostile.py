"""Requests generated from the service's own OpenAPI schema by schemathesis (seeded, a
few dozen per operation here; `make chaos` sends a thousand): none may get a 5xx, and the
server answers normally afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ST = Path(sys.executable).parent / "st"


def test_generated_requests_never_get_a_server_error(server: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(ST),
            "run",
            f"{server}/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "/predict" in result.stdout  # the operations were found and exercised
    assert httpx.get(f"{server}/readyz", timeout=10).status_code == 200
