"""Failures on purpose, for the tests and the chaos script (reliability/suite.py): a stage calls
``point("name")`` where a failure must be survivable, and nothing happens unless the
environment asks for it.

In: MNIST_FAULT = ``name[#n][@rank][:action]``, e.g. ``train.start@1`` (rank 1 raises),
``promote.registered:kill`` (SIGKILL itself between registering a version and moving
the alias) or ``atomic.replace#3:term`` (SIGTERM at the third atomic write, just before
its rename). Actions: ``raise`` (a StageError, the default), ``kill`` (SIGKILL), ``term``
(SIGTERM). Unset in normal runs.
"""

from __future__ import annotations

import os
import signal

from pipeline.errors import StageError

ENV = "MNIST_FAULT"
_reached: dict[str, int] = {}  # times each point was reached in this process


def point(name: str) -> None:
    """Fail here if MNIST_FAULT names this point (its n-th passage, this process's rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, action = spec.partition(":")
    where, _, rank = where.partition("@")
    wanted, _, nth = where.partition("#")
    if wanted != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _reached[name] = _reached.get(name, 0) + 1
    if nth and _reached[name] != int(nth):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    suffix = f" on rank {rank}" if rank else ""
    raise StageError(f"fault injected at {name}{suffix} ({ENV}={spec})")
