"""record: every enabled candidate's evaluation and robustness, added to its MLflow run.

In: the ``train.enabled`` list and the ``mlflow`` params; each candidate's ``run.json``
from train (which run its weights came from), its evaluate folder (``metrics.json`` and
the pictures) and its robustness folder (``metrics.json``, ``corruptions.json``, the
tables and the picture). Out: ``--out`` (``recorded.json``): per candidate, the run id and
the sha256 of what was added.

Stages hand off through their files; MLflow is where runs are recorded. Train owns a
run's lifecycle (it starts the run and ends it FINISHED, FAILED or KILLED); this stage only
adds to it, under one rule: the metrics (``test_accuracy``, ``test_error_pct``,
``robustness_<kind>``, ``corruption_error_pct_<path>``, ...) and the two folders as
artifacts (``evaluate/``, ``robustness/``), never the run's status or end time. A run that
already holds what its candidate's files say (its ``recorded_sha256`` tag) is left as it
is, so a rerun that changed nothing logs nothing twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline import atomic, cli, faults, tracking
from pipeline.errors import StageError
from pipeline.params import EnabledParams, MlflowParams, load_section

RECORDED_TAG = "recorded_sha256"


def evaluation_metrics(tested: dict) -> dict[str, float]:
    """Evaluate's scalars (``test_accuracy``, ``test_loss``, ...; not the feedback hold-out's
    accuracy while it is empty), and the error in percent."""
    scalars = {k: float(v) for k, v in tested.items() if v is not None and not isinstance(v, dict)}
    return scalars | {"test_error_pct": tracking.error_pct(tested["test_accuracy"])}


def robustness_metrics(photos: dict, corrupted: dict) -> dict[str, float]:
    """The photo kinds' accuracies, their mean, and the corruption report in percent error:
    the mean over families per serving path (test; ``val_`` for validation) and each
    family's on test."""
    metrics = {f"robustness_{kind}": value for kind, value in photos["accuracy"].items()} | {
        "robustness_reference": photos["reference_accuracy"],
        "robustness_mean": photos["mean_accuracy"],
        "robustness_error_pct": tracking.error_pct(photos["mean_accuracy"]),
    }
    for path, report in corrupted["test"].items():
        metrics[f"corruption_error_pct_{path}"] = 100 * report["mean_error"]
        metrics[f"val_corruption_error_pct_{path}"] = 100 * corrupted["val"][path]["mean_error"]
        for family, error in report["families"].items():
            metrics[f"corruption_{family}_error_pct_{path}"] = 100 * error
    return metrics


def digest(folders: list[Path]) -> str:
    """sha256 over the folders' files, names and bytes, in a fixed order."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(f"{folder.name}/{path.relative_to(folder)}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def gather(name: str, models: Path, reports: Path, robustness: Path) -> dict:
    """What to add to candidate ``name``'s run, read from its stages' files."""
    try:
        run = atomic.read_json(models / name / "run.json")
        tested = atomic.read_json(reports / name / "metrics.json")
        photos = atomic.read_json(robustness / name / "metrics.json")
        corrupted = atomic.read_json(robustness / name / "corruptions.json")
    except FileNotFoundError as error:
        raise StageError(f"candidate {name} has not been evaluated and scored: {error}") from None
    if photos["run_id"] != run["run_id"]:
        raise StageError(
            f"candidate {name}: its robustness report scored run {photos['run_id']}, its "
            f"weights are from run {run['run_id']}; run `dvc repro` to bring them together"
        )
    folders = {"evaluate": reports / name, "robustness": robustness / name}
    return {
        "run_id": run["run_id"],
        "metrics": evaluation_metrics(tested) | robustness_metrics(photos, corrupted),
        "folders": folders,
        "sha256": digest(list(folders.values())),
    }


def main(args) -> None:
    params = load_section(args.params, "train", EnabledParams)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    gathered = {
        name: gather(name, args.models, args.reports, args.robustness) for name in params.enabled
    }
    tracking.setup(mlflow_params)
    recorded = {}
    for name, item in gathered.items():
        faults.point("record.candidate")
        added = tracking.add_to_run(
            item["run_id"], item["metrics"], item["folders"], RECORDED_TAG, item["sha256"]
        )
        recorded[name] = {"run_id": item["run_id"], "sha256": item["sha256"]}
        state = "added" if added else "already there"
        print(f"record: {name}: {len(item['metrics'])} metrics, evaluate/ and robustness/ {state}")
    atomic.write_json(args.out, recorded)


def cli_main(argv=None) -> None:
    p = cli.parser("record", __doc__)
    p.add_argument("--models", required=True, type=Path, help="folder of train outputs")
    p.add_argument("--reports", required=True, type=Path, help="folder of evaluate outputs")
    p.add_argument("--robustness", required=True, type=Path, help="folder of robustness outputs")
    p.add_argument("--out", required=True, type=Path, help="recorded.json: what went where")
    cli.run("record", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
