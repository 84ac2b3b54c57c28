"""DVC experiments queued and run the way users run them: `dvc exp run --queue`, then
`dvc queue start -j N`, waited for and always stopped."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

from harness.project import Project


def queue_finished(project: Project, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")


def start_queue(project: Project, jobs: int) -> None:
    """`dvc queue start -j N`, its output in a file: the workers it detaches inherit its
    stdout, and a pipe would keep the caller waiting for as long as a worker lives."""
    log = project.path.parent / f"{project.path.name}-queue-start.log"
    with log.open("ab") as out:
        code = subprocess.call(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=project.path,
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    if code != 0:
        raise AssertionError(f"dvc queue start exited {code}:\n{log.read_text()[-3000:]}")


def stop_workers(project: Project) -> None:
    """Kill the queue workers still running in ``project``: a DVC worker has been seen to
    outlive its empty queue (and `dvc queue stop`), idle, for good."""
    import psutil

    here = project.path.resolve()
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        ours = process.info["cwd"] and Path(process.info["cwd"]).resolve() == here
        if ours and ("queue-worker" in cmdline or "queue start" in cmdline):
            with contextlib.suppress(psutil.Error):
                process.kill()


def run_queue(project: Project, values: list[str], jobs: int) -> dict:
    """Queue one experiment per lr value of mlp128, run them ``jobs`` at a time, and
    return `dvc exp show --json`'s experiments by name."""
    project.commit("the experiments' baseline")
    project.run(
        "dvc", "exp", "run", "--queue", "-S", f"train.candidates.mlp128.lr={','.join(values)}"
    )
    try:
        start_queue(project, jobs)
        status = queue_finished(project)
    finally:
        project.run("dvc", "queue", "stop", "--kill", check=False)
        stop_workers(project)
    assert "Failed" not in status, status
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    experiments = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            # A finished experiment has a git ref and no executor left; others say why.
            state = (experiment.get("executor") or {}).get("state", "success")
            for rev in experiment["revs"]:
                experiments[rev["name"]] = rev | {"state": state}
    return experiments
