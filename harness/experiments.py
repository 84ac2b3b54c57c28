"""DVC experiments queued and run the way users run them: `dvc exp run --queue`, then
`dvc queue start -j N`, waited for and always stopped."""

from __future__ import annotations

import json
import time

from harness.project import Project


def queue_finished(project: Project, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")


def run_queue(project: Project, values: list[str], jobs: int) -> dict:
    """Queue one experiment per lr value of mlp128, run them ``jobs`` at a time, and
    return `dvc exp show --json`'s experiments by name."""
    project.commit("the experiments' baseline")
    project.run(
        "dvc", "exp", "run", "--queue", "-S", f"train.candidates.mlp128.lr={','.join(values)}"
    )
    try:
        project.run("dvc", "queue", "start", "-j", str(jobs))
        status = queue_finished(project)
    finally:
        project.run("dvc", "queue", "stop", "--kill", check=False)
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
