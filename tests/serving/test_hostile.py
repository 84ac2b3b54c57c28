"""Requests generated from the service's own OpenAPI schema by schemathesis (seeded, a
few dozen per operation here; `make chaos` sends a thousand): none may get a 5xx, and the
server answers normally afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from harness.serve import schemathesis_run

pytestmark = pytest.mark.slow


def test_generated_requests_never_get_a_server_error(server: str, tmp_path: Path) -> None:
    result = subprocess.run(
        schemathesis_run(server, max_examples=25, seed=1),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "/predict" in result.stdout  # the operations were found and exercised
    assert httpx.get(f"{server}/readyz", timeout=10).status_code == 200
