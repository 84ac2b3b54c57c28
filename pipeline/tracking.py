"""MLflow and lineage helpers shared by train, evaluate, promote and package.

The default store is a SQLite file at the project root, resolved to an absolute path so
that a queued or ``--temp`` DVC experiment (which runs in a copy under
``.dvc/tmp/exps``) logs into the workspace's store; MLFLOW_TRACKING_URI overrides it (a
tracking server, another file). Every run is tagged with where it came from: git
commit, DVC experiment, user and host, and the sha256 of the data it read.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import Terminated
from pipeline.params import Candidate, MlflowParams, candidate_from_logged

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# Seconds a writer waits for SQLite's lock before "database is locked": experiments
# queued with `dvc queue start -j N` write to one file at once.
SQLITE_LOCK_TIMEOUT_S = 120


def project_root() -> Path:
    """The workspace's root: DVC sets DVC_ROOT to it for every stage, also inside an
    experiment's temporary copy; outside DVC, the repository this code lives in."""
    return Path(os.environ.get("DVC_ROOT") or PACKAGE_ROOT).resolve()


def in_workspace() -> bool:
    """False inside a queued or ``--temp`` experiment's temporary copy of the repository,
    where nothing shared (the champion alias, the served Bento) may change."""
    root = os.environ.get("DVC_ROOT")
    return root is None or Path(root).resolve() == Path.cwd().resolve()


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment a stage runs in (DVC sets these for `dvc exp run`), or {}."""
    names = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_exp_baseline_rev"}
    return {tag: os.environ[env] for env, tag in names.items() if os.environ.get(env)}


def tracking_uri(params: MlflowParams) -> str:
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{project_root() / params.store}?timeout={SQLITE_LOCK_TIMEOUT_S}"


# The metrics the runs list compares, as percent error: candidates within a tenth of a
# point of each other differ in the first or second decimal, where an accuracy on a 0-1
# axis shows 1.00 for all of them.
COMPARED_METRICS = (
    "val_error_pct",
    "test_error_pct",
    "robustness_error_pct",
    "multiply_adds",
    "train_seconds",
)
# The runs-list view `make ui` opens: an experiment tag holding a view MLflow's UI shares
# by key (the link's ``viewStateShareKey``): these columns, best validation first.
COMPARE_VIEW = "candidates"
COMPARE_COLUMNS = ["tags.`promotion`", *(f"metrics.`{name}`" for name in COMPARED_METRICS)]
COMPARE_VIEW_STATE = {
    "selectedColumns": COMPARE_COLUMNS,
    "columnOrder": COMPARE_COLUMNS,  # these first, before Created and Duration
    "columnWidths": {"tags.`promotion`": 380},  # the whole note, not "champion: ..."
    "orderByKey": "metrics.`val_error_pct`",
    "orderByAsc": True,
    "runsHiddenMode": "SHOW_ALL",
    # The chart view opens on a section of these metrics' bars, a bar per run; MLflow adds
    # its own sections for every other metric below.
    "compareRunSections": [
        {
            "uuid": "compared",
            "name": "Which candidate is best",
            "display": True,
            "isReordered": False,
            "deleted": False,
            "isGenerated": False,
        }
    ],
    "compareRunCharts": [
        {
            "uuid": f"compared-{name}",
            "type": "BAR",
            "runsCountToCompare": 20,
            "metricSectionId": "compared",
            "deleted": False,
            "isGenerated": False,
            "metricKey": name,
            "displayName": name,
        }
        for name in COMPARED_METRICS
    ],
    "isAccordionReordered": True,
}


def error_pct(accuracy: float) -> float:
    """Percent of images misread: 0.9958 -> 0.42."""
    return round(100.0 * (1.0 - accuracy), 4)


# MLflow 3's UI opens an experiment in the view its kind names; without this tag it
# guesses, and shows an empty GenAI overview of traces. The primary metric is the first
# chart of its chart view.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.experiment.primaryMetric.name": "val_error_pct",
    f"mlflow.sharedViewState.{COMPARE_VIEW}": json.dumps(COMPARE_VIEW_STATE),
    "mlflow.note.content": (
        "MNIST digit classifiers, one run per candidate (its train, evaluate and robustness "
        "stages). Promotion compares validation error (`val_error_pct`, percent of the "
        "validation split misread) only, among the candidates within the serving budget "
        "(`multiply_adds` an image) and the robustness floor (`val_corruption_error_pct_*`, "
        "on corrupted validation digits); `test_error_pct` is read once, by evaluate, and "
        "plays no part. Each run's `promotion` tag says what promotion made of it: the "
        "champion that is served (the `champion` alias of the registered model "
        "`mnist-classifier`), eligible and how far behind, or over the budget or the floor. "
        "`robustness_error_pct` is "
        "the mean error over the photographed and scanned kinds of docs/robustness.md. "
        "Where a candidate trains with label smoothing or augmentation, its `train_loss` "
        "sits above `val_loss`: it is measured against the smoothed targets on shifted and "
        "rotated digits, `val_loss` on plain ones."
    ),
}


def setup(params: MlflowParams) -> str:
    """Point MLflow at the store and return the experiment id (created if new), tagged
    with EXPERIMENT_TAGS (existing stores get them on their next run)."""
    import mlflow

    # A server chooses its own artifact store; a local SQLite store keeps artifacts
    # beside it. (Decided before set_tracking_uri, which exports MLFLOW_TRACKING_URI.)
    local = "MLFLOW_TRACKING_URI" not in os.environ
    mlflow.set_tracking_uri(tracking_uri(params))
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is None:
        artifacts = (project_root() / "mlartifacts").as_uri() if local else None
        experiment_id = mlflow.create_experiment(params.experiment, artifact_location=artifacts)
        tags = {}
    else:
        experiment_id, tags = experiment.experiment_id, experiment.tags
    client = mlflow.MlflowClient()
    for key, value in EXPERIMENT_TAGS.items():
        if tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
    return experiment_id


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if there is none: with
    the pid, it tells a live process from a later one that reused the pid."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def end_orphans(experiment_id: str, candidate: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``candidate`` that a process on this host started
    and that no live process owns any more (killed by SIGKILL or a crash, which leave a
    run RUNNING forever), and FAILED the models they left PENDING; return their ids.

    A run's tags ``host``, ``pid`` and ``pid_started`` name its process: an orphan is a run
    of this host whose pid is gone or now belongs to a process started at another time.
    Runs of other hosts are left to their own host's next run of the candidate."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    client = MlflowClient()
    running = client.search_runs(
        [experiment_id],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.candidate = '{candidate}' "
            f"and tags.host = '{socket.gethostname()}'"
        ),
    )
    ended = []
    for run in running:
        pid, started = run.data.tags.get("pid"), run.data.tags.get("pid_started")
        if pid is None or started is None:
            continue
        alive = process_started(int(pid))
        if alive is not None and abs(alive - float(started)) < 1:
            continue  # its process is still working: a concurrent experiment, say
        for model in client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        ):
            if model.status == LoggedModelStatus.PENDING:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended


@contextmanager
def training_run(
    experiment_id: str, name: str, tags: dict[str, str], system_metrics: bool
) -> Iterator:
    """``mlflow.start_run`` that ends truthfully: FINISHED, FAILED on an error, KILLED on
    SIGTERM or Ctrl-C; its process's pid and start time are tagged, and the candidate's
    orphaned runs (see ``end_orphans``) are ended first."""
    import mlflow

    for run_id in end_orphans(experiment_id, tags["candidate"]):
        print(
            f"tracking: MLflow run {run_id} of {tags['candidate']} had lost its process; "
            "marked KILLED"
        )
    pid = os.getpid()
    tags = tags | {"pid": str(pid), "pid_started": str(process_started(pid))}
    if system_metrics:  # CPU, memory (GPU with one): a sample every second
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=name, tags=tags, log_system_metrics=system_metrics
    )
    try:
        yield run
    except (KeyboardInterrupt, Terminated):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def add_to_run(
    run_id: str, metrics: dict[str, float], folders: dict[str, Path], tag: str, digest: str
) -> bool:
    """Add ``metrics`` and each folder (as artifacts under its key) to run ``run_id``,
    leaving its status and end time as its stage left them; then tag the run ``tag`` =
    ``digest``, last, so that an interrupted addition is made again. A run already tagged
    with ``digest`` is left alone; return whether anything was added."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    if client.get_run(run_id).data.tags.get(tag) == digest:
        return False
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for artifact_path, folder in folders.items():
        client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
    client.set_tag(run_id, tag, digest)
    return True


# Tableau's ten categorical colours: the chart view draws each candidate in its own.
RUN_COLOURS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
PROMOTION_TAG = "promotion"


def tag_candidates(experiment_id: str, notes: dict[str, tuple[str, str]]) -> None:
    """Tag each candidate's run with what promotion made of it and a colour of its own:
    ``notes`` maps candidate -> (run id, note). Earlier runs lose their ``promotion`` tag,
    so the runs list marks only the runs the current decision compared."""
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    client = MlflowClient()
    current = {run_id for run_id, _ in notes.values()}
    for run in client.search_runs([experiment_id], f"tags.{PROMOTION_TAG} LIKE '%'"):
        if run.info.run_id not in current:
            client.delete_tag(run.info.run_id, PROMOTION_TAG)
    for index, candidate in enumerate(sorted(notes)):
        run_id, note = notes[candidate]
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        client.log_batch(
            run_id, tags=[RunTag(PROMOTION_TAG, note), RunTag("mlflow.runColor", colour)]
        )


MAX_LISTED_CHANGES = 10  # paths a tag names; a tag value stays short


def git_lineage(cwd: Path = PACKAGE_ROOT) -> dict[str, str]:
    """The commit a run came from and what differs from it, told apart:

    - ``git_commit``: HEAD (``unknown`` outside git);
    - ``git_source_changed``: ``true`` when a tracked file other than DVC's outputs differs
      (code, params.yaml, dvc.yaml): the run's code or params are not the commit's;
    - ``git_changed_source``: those paths (the first ten);
    - ``git_changed_outputs``: how many tracked files DVC writes (dvc.lock, metrics, run
      records) differ; every rerun rewrites them, so they say nothing about the code.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [
            line[3:]
            for line in git(
                "status", "--porcelain", "--untracked-files=no", "--no-renames"
            ).splitlines()
        ]
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git_commit": "unknown"}
    outputs = dvc_outputs(cwd / "dvc.lock")
    source = [path for path in changed if not is_output(path, outputs)]
    return {
        "git_commit": commit,
        "git_source_changed": str(bool(source)).lower(),
        "git_changed_source": ", ".join(source[:MAX_LISTED_CHANGES])
        + (
            f", and {len(source) - MAX_LISTED_CHANGES} more"
            if len(source) > MAX_LISTED_CHANGES
            else ""
        ),
        "git_changed_outputs": str(len(changed) - len(source)),
    }


def dvc_outputs(lock: Path) -> set[str]:
    """dvc.lock and every output path it records (files and folders)."""
    stages = _lock_stages(lock)
    return {"dvc.lock"} | {
        os.path.normpath(out["path"]) for stage in stages.values() for out in stage.get("outs", [])
    }


def is_output(path: str, outputs: set[str]) -> bool:
    path = os.path.normpath(path)
    return any(path == out or path.startswith(out + os.sep) for out in outputs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _lock_stages(lock: Path) -> dict:
    """The stages a dvc.lock records, {} if it is missing or unreadable."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a large lock, parsed fast
    try:
        return yaml.load(lock.read_text(), Loader=loader).get("stages", {})
    except (OSError, AttributeError, yaml.YAMLError):
        return {}


def dvc_md5(path: Path, lock: Path = Path("dvc.lock")) -> str | None:
    """The hash DVC recorded in ``lock`` for the output ``path`` (a folder's ends in
    ``.dir``), which names its content in any DVC cache or remote; None if not tracked."""
    stages = _lock_stages(lock)
    wanted = os.path.normpath(path)
    for stage in stages.values():
        for out in stage.get("outs", []):
            if os.path.normpath(out["path"]) == wanted:
                return out.get("md5")
    return None


def lineage_tags(files: dict[str, Path], dvc_outs: tuple[Path, ...] = ()) -> dict[str, str]:
    """Tags that tie a run to its code, its data and who ran it where: git commit, DVC
    experiment, user, host, one sha256 per file and DVC's hash of each of ``dvc_outs``."""
    tags = git_lineage() | {"user": getpass.getuser(), "host": socket.gethostname()}
    tags |= dvc_experiment()
    tags |= {f"data_sha256.{name}": sha256_file(path) for name, path in files.items()}
    for out in dvc_outs:
        if md5 := dvc_md5(out):
            tags[f"dvc_md5.{out.as_posix()}"] = md5
    return tags


def requirements(*packages: str) -> list[str]:
    """Pinned pip requirements of a logged model; given explicitly, MLflow does not infer
    them (which imports and traces the model)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def log_model(predictor, clf=None) -> None:
    """Log the model as ``model``, pickle-free: torch.export (pt2) of the Predictor for a
    torch network, skops for a scikit-learn ``clf``."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    example = torch.zeros(2, 1, 28, 28)  # (B, 1, 28, 28) pixels in [0, 1]
    if clf is not None:
        flat = example.flatten(1).numpy()
        mlflow.sklearn.log_model(
            clf,
            name="model",
            serialization_format="skops",
            signature=infer_signature(flat, clf.predict_proba(flat)),
            input_example=flat,
            pip_requirements=requirements("scikit-learn", "skops", "numpy"),
        )
        return
    signature = infer_signature(example.numpy(), predictor(example).detach().numpy())
    mlflow.pytorch.log_model(
        predictor,
        name="model",
        serialization_format="pt2",
        signature=signature,
        input_example=example.numpy(),
        pip_requirements=requirements("torch", "numpy"),
    )


UNCALIBRATED = {"temperature": 1.0, "thresholds": []}  # a run trained before calibration


def trained_files(run_id: str, folder: Path) -> tuple[Candidate, dict, Path, dict]:
    """Download into ``folder`` what a run's train stage logged (its ``train/`` artifacts):
    the candidate, the normalisation stats, the weights' path and the calibration (a
    temperature of 1 and no thresholds for a run trained before calibration was fitted).
    With them ``inference.load_predictor`` rebuilds the exact model that run trained."""
    import mlflow

    train_dir = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="train", dst_path=str(folder)
        )
    )
    candidate = candidate_from_logged(json.loads((train_dir / "candidate.json").read_text()))
    stats = json.loads((train_dir / "stats.json").read_text())
    calibrated = train_dir / "calibration.json"
    calibration = json.loads(calibrated.read_text()) if calibrated.exists() else UNCALIBRATED
    return candidate, stats, train_dir / "weights.safetensors", calibration
