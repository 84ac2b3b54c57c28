"""`make ui`: the MLflow UI on the pipeline's store, opened on the training runs.

    python -m deploy.ui [--port 5000]

In: params.yaml's ``mlflow`` section (the SQLite store, or MLFLOW_TRACKING_URI's
server). Out: `mlflow ui` on 127.0.0.1 over the SQLite store, after printing the link to
the experiment's training runs; for a tracking server, only that link.

MLflow 3's UI shows an experiment in its GenAI view (an empty overview of traces) or its
model-training view (the runs) by a toggle it remembers per browser, or by the link's
``workflowType``. The experiment's ``mlflow.experimentKind`` tag says the same, for the
UIs that read it; this link works in either.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline import tracking
from pipeline.params import MlflowParams, load_section

REPO = Path(__file__).resolve().parent.parent


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's model-training view."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
    if found is None:
        print(f"no experiment {params.experiment!r} yet: `make run` first; the UI is at {base}")
    else:
        print(f"the candidates' runs: {runs_page(base, found)}")
    if server.startswith("http"):
        return  # the team's server already serves the UI
    store = tracking.tracking_uri(params)
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    )


if __name__ == "__main__":
    main()
