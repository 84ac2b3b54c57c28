"""Promotion and packaging killed at their weakest moments, in a project after a clean
small-profile `dvc repro`: what the tests assert and the chaos script reports.

In: the project (its champion mlp128, cnn_fast over the serving budget). Out: the facts
observed after each kill (pipeline/faults.py's points), as a dict.
"""

from __future__ import annotations

import itertools
import json

import httpx

from harness.project import Project
from harness.serve import bentoml_serve

MODEL = "mnist-classifier"


def client(project: Project):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")


def champion_and_history(project: Project):
    mlflow_client = client(project)
    champion = mlflow_client.get_model_version_by_alias(MODEL, "champion")
    return champion, json.loads(mlflow_client.get_registered_model(MODEL).tags["champion_history"])


def killed(project: Project, stage: str, fault: str):
    """Run one stage (and only it) with a fault; it must die as the fault says."""
    result = project.run(
        "dvc",
        "repro",
        "--force",
        "--single-item",
        stage,
        check=False,
        env={**project.env, "MNIST_FAULT": fault},
    )
    assert result.returncode != 0, f"{stage} survived {fault}"
    return result


def loadable(project: Project) -> bool:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
    return mlflow.pyfunc.load_model(f"models:/{MODEL}@champion") is not None


def promotion_under_kill(project: Project) -> dict:
    """Let cnn_fast (better on validation) fit the budget, then kill promote between
    registering it and moving the alias, then between moving the alias and recording it,
    then package before it builds; finally `dvc repro`."""
    facts = {"versions_before": len(client(project).search_model_versions(f"name = '{MODEL}'"))}
    params = project.params()
    params["promote"]["max_multiply_adds"] = None
    project.write_params(params)

    killed(project, "promote", "promote.registered:kill")
    champion, _ = champion_and_history(project)
    facts["after_register_kill"] = {
        "versions": len(client(project).search_model_versions(f"name = '{MODEL}'")),
        "champion": champion.tags["candidate"],
        "loadable": loadable(project),
    }

    previous_bento = json.loads((project.path / "reports/package/bento.json").read_text())
    killed(project, "promote", "registry.alias_moved:kill")
    champion, history = champion_and_history(project)
    facts["after_alias_kill"] = {
        "champion": champion.tags["candidate"],
        "recorded": history[-1]["version"] == champion.version,
        "loadable": loadable(project),
    }

    killed(project, "package", "package.stored:kill")
    with bentoml_serve(
        previous_bento["bento"],
        env=project.env,
        cwd=project.path,
        log_path=project.path / "serve.log",
    ) as served:
        facts["previous_bento_serves"] = (
            httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200
        )

    project.run("dvc", "repro")
    champion, history = champion_and_history(project)
    bento = json.loads((project.path / "reports/package/bento.json").read_text())
    facts["after_repro"] = {
        "versions": len(client(project).search_model_versions(f"name = '{MODEL}'")),
        "champion": champion.tags["candidate"],
        "no_gap": history[-1]["version"] == champion.version,
        "no_double": all(a["version"] != b["version"] for a, b in itertools.pairwise(history)),
        "bento_of_champion": bento["registry_version"] == str(champion.version),
    }
    return facts
