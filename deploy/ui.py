"""`make ui`: the MLflow UI on the pipeline's store, opened on the candidates compared.

    python -m deploy.ui [--port 5000]

In: params.yaml's ``mlflow`` section (the SQLite store, or MLFLOW_TRACKING_URI's
server). Out: `mlflow ui` on 127.0.0.1 over the SQLite store (one web worker, no GenAI
job workers: the runs list is all it serves here) and, once it answers, the link to the
experiment's runs; for a tracking server, only that link. Ctrl-C stops the UI.

The link opens the runs list in MLflow's model-training view (``workflowType``; MLflow
3 otherwise remembers a GenAI view per browser) with the view the pipeline stores in the
experiment (``viewStateShareKey``): validation, test and robustness error, multiply-adds,
training time and what promotion made of each run, best validation first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import tracking
from pipeline.params import MlflowParams, load_section

REPO = Path(__file__).resolve().parent.parent


START_TIMEOUT_S = 180  # mlflow 3 takes tens of seconds to start on 2 busy cores


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's model-training view, in the compare view."""
    return (
        f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={tracking.COMPARE_VIEW}"
    )


def healthy(base_url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve(store: str, port: int, **popen) -> subprocess.Popen:
    """`mlflow ui` on 127.0.0.1:``port`` over ``store``; ``popen`` goes to Popen (cwd, a
    log file as stdout, a session of its own)."""
    command = [
        *(sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    env = os.environ | {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job workers: unused here
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    return subprocess.Popen(command, env=env, **popen)


class NotHealthy(RuntimeError):
    """`mlflow ui` exited, or did not answer in time."""


def wait_until_healthy(process: subprocess.Popen, base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(base_url):
        if process.poll() is not None:
            raise NotHealthy(f"mlflow ui exited with {process.returncode} before it answered")
        if time.monotonic() > deadline:
            raise NotHealthy(
                f"mlflow ui did not answer at {base_url}/health in {START_TIMEOUT_S} s"
            )
        time.sleep(0.5)


def experiment_id(params: MlflowParams) -> str | None:
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(params))
    experiment = mlflow.get_experiment_by_name(params.experiment)
    return experiment.experiment_id if experiment else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m deploy.ui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = p.parse_args(argv)
    params = load_section(args.params, "mlflow", MlflowParams)
    found = experiment_id(params)
    server = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = server.rstrip("/") if server.startswith("http") else f"http://127.0.0.1:{args.port}"
    if server.startswith("http"):  # the team's server already serves the UI
        print(link(base, found, params.experiment))
        return
    process = serve(tracking.tracking_uri(params), args.port)
    try:
        wait_until_healthy(process, base)
        print(link(base, found, params.experiment), flush=True)
        process.wait()
    except NotHealthy as error:
        sys.exit(str(error))
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()


def link(base: str, found: str | None, experiment: str) -> str:
    if found is None:
        return f"no experiment {experiment!r} yet: `make run` first; the UI is at {base}"
    return f"the candidates compared: {runs_page(base, found)}"


if __name__ == "__main__":
    main()
