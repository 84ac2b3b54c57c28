"""Start a real `bentoml serve` on 127.0.0.1 and wait for it: for tests and benchmarks.

In: what to serve (a service path such as ``serving.service:MNISTClassifier`` or a Bento
tag), the environment and a log file. Out: a running server (its own process group,
so stopping it stops its workers too) whose ``/readyz`` answered 200.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


class ServeError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log."""


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(
                f"bentoml serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise ServeError(f"bentoml serve not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def bentoml_serve(
    target: str, *, env: dict[str, str], cwd: Path, log_path: Path, timeout: float = 120
) -> Iterator[Server]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # What the service records (served digits, corrections) goes beside its log, never
    # into the repository it is started from, unless the caller names a folder.
    env = {
        "MNIST_SERVED_LOG_DIR": str(log_path.parent / f"{log_path.stem}-served_log"),
        "MNIST_FEEDBACK_DIR": str(log_path.parent / f"{log_path.stem}-feedback"),
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log_path, timeout)
        yield Server(url, process.pid)
    finally:
        stop(process)


def schemathesis_run(url: str, max_examples: int, seed: int) -> list[str]:
    """`st run` against the service's own OpenAPI schema: seeded, one worker, every
    generation phase, and only a 5xx counts as a failure."""
    return [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--suppress-health-check",
        "all",
    ]
