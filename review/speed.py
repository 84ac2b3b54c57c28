"""Single-digit serving speed of the two sides' champions, measured side by side.

In: each side's Bento tag (its ``reports/package/bento.json``) in the review's BentoML
home, one test digit. Out: per side, the medians of ``rounds`` wrk runs of
``seconds`` each (single-digit ``/predict``, base64 body, 8 connections): requests a
second and p99. Both servers are up at once and take turns, base first in odd rounds and
change first in even ones, so that a machine that speeds up or slows down during the
measurement favours neither. Needs wrk (`make system-tools`); loopback only.
"""

from __future__ import annotations

import base64
import json
import statistics
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench.serving_bench import wrk
from harness.serve import ServeError, bentoml_serve
from pipeline.errors import StageError
from review.compare import Speed

CONNECTIONS = 8


def measure(
    bentos: dict[str, str], digit: np.ndarray, env: dict, folder: Path, rounds: int, seconds: int
) -> dict[str, Speed]:
    """side -> Speed, for the Bentos ``bentos`` (side -> tag)."""
    body = folder / "one-digit.json"
    payload = {"images_b64": base64.b64encode(digit.astype(np.uint8).tobytes()).decode()}
    body.write_text(json.dumps(payload))
    # The record of served digits goes beside each server's log, not into the project.
    runs: dict[str, list] = {side: [] for side in bentos}
    with ExitStack() as stack:
        try:
            servers = {
                side: stack.enter_context(
                    bentoml_serve(tag, env=env, cwd=folder, log_path=folder / f"serve-{side}.log")
                )
                for side, tag in bentos.items()
            }
        except ServeError as error:
            raise StageError(f"a champion's Bento did not serve: {error}") from None
        order = list(bentos)
        for round_ in range(rounds):
            for side in order if round_ % 2 == 0 else order[::-1]:
                url = f"{servers[side].url}/predict"
                result = wrk(
                    url,
                    body,
                    "application/json",
                    duration=seconds,
                    connections=CONNECTIONS,
                    workdir=folder,
                )
                if result.errors:
                    raise StageError(f"{side}'s Bento answered {result.errors} requests badly")
                runs[side].append(result)
    return {
        side: Speed(
            requests_per_s=statistics.median(r.requests_per_s for r in results),
            p99_ms=statistics.median(r.p99_ms for r in results),
            runs=len(results),
        )
        for side, results in runs.items()
    }
