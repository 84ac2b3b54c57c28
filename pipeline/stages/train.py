"""train: train one candidate from params.yaml and log the run to MLflow.

In: ``--candidate NAME``; the ``train`` and ``mlflow`` params; normalised ``train.npz``,
``val.npz`` and ``stats.json`` from normalise. Out, in ``--out``:
``weights.safetensors`` (the network's state_dict, no pickle), ``history.csv`` (train and
validation loss/accuracy per epoch), ``iterations.csv`` (loss per optimiser step),
``metrics.json`` (final validation metrics: deterministic for fixed params),
``calibration.json`` (the temperature fitted on the validation split, pipeline/calibration.py),
``curves.png``, ``iterations.png``, ``val_correct.png`` and ``run.json`` (the MLflow run id
and timings, which the record stage reads to add evaluation and robustness to the run).

On ``train.device`` (a GPU when there is one); with ``train.processes`` > 1 the stage
runs itself again under torchrun, data-parallel. Started by torchrun directly (several
processes or machines: docs/training.md), rank 0 writes the outputs and the MLflow run;
the other ranks only train.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors

from pipeline import (
    atomic,
    calibration,
    cli,
    distributed,
    faults,
    inference,
    models,
    plots,
    runtime,
    tracking,
    training,
)
from pipeline.errors import StageError
from pipeline.params import MlflowParams, TrainParams, load_section


def flat_params(name: str, candidate, seed: int, data: training.Data) -> dict:
    """The candidate's own settings as MLflow params (``augment.max_shift``, ...)."""
    flat = {"candidate": name, "seed": seed, "n_train": len(data.y_train), "n_val": len(data.y_val)}
    for key, value in candidate.model_dump().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def final_metrics(
    history: training.History, val_probs: torch.Tensor, y_val: torch.Tensor, net: torch.nn.Module
) -> dict:
    """What promotion compares: validation metrics of the final model (with its TTA)."""
    loss = F.nll_loss(torch.log(val_probs.clamp_min(1e-12)), y_val).item()
    return {
        "val_accuracy": int((val_probs.argmax(1) == y_val).sum()) / len(y_val),
        "val_loss": loss,
        "epochs": len(history.epochs),
        "parameters": models.parameter_count(net),
        "multiply_adds": models.multiply_adds(net),
    }


def write_outputs(
    out: Path,
    net: torch.nn.Module,
    history: training.History,
    final: dict,
    calibrated: dict,
    name: str,
    n_val: int,
) -> None:
    weights = save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()})
    atomic.write_bytes(out / "weights.safetensors", weights)
    atomic.write_csv(
        out / "history.csv", list(history.epochs[0]), [row.values() for row in history.epochs]
    )
    atomic.write_csv(
        out / "iterations.csv",
        ["step", "loss"],
        enumerate(history.steps, start=1) if history.steps else [(0, float("nan"))],
    )
    atomic.write_json(out / "metrics.json", final)
    atomic.write_json(out / "calibration.json", calibrated)
    plots.save_curves(history.epochs, out / "curves.png", name)
    plots.save_iteration_loss(history.steps, out / "iterations.png", name)
    plots.save_val_correct(history.epochs, out / "val_correct.png", name, n_val)


def argv_of(args) -> list[str]:
    return [
        "--params",
        str(args.params),
        "--candidate",
        args.candidate,
        "--data",
        str(args.data),
        "--out",
        str(args.out),
    ]


def main(args) -> None:
    params = load_section(args.params, "train", TrainParams)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    candidate = params.candidate(args.candidate)
    if candidate.is_torch and params.processes > 1 and not distributed.under_torchrun():
        relaunch(args, params.processes)
        return
    # logreg is scikit-learn's: on the CPU, in one process.
    context = (
        distributed.start(params.device, params.precision)
        if candidate.is_torch
        else distributed.Context(torch.device("cpu"))
    )
    try:
        train(args, params, mlflow_params, candidate, context)
    finally:
        distributed.finish(context)


def relaunch(args, processes: int) -> None:
    """This stage again as ``processes`` data-parallel ranks under torchrun."""
    code = distributed.relaunch(processes, "pipeline.stages.train", argv_of(args))
    if code:
        raise StageError(
            f"{processes} data-parallel processes under torchrun "
            f"failed (exit {code}); the failing rank's error is above"
        )


def train(
    args, params: TrainParams, mlflow_params: MlflowParams, candidate, context: distributed.Context
) -> None:
    faults.point("train.start")
    threads = runtime.set_threads(params.threads, candidate, processes=context.world_size)
    torch.manual_seed(params.seed)
    data = training.load_data(args.data, candidate, params.seed)
    net = models.build(candidate)  # every rank the same seeded initial weights
    if not context.is_main:  # another rank: only the training, no outputs, no MLflow run
        training.train_torch(net, candidate, data, params.seed, context=context)
        return
    stats = atomic.read_json(args.data / "stats.json")
    logged = run_params(args.candidate, candidate, params.seed, data, threads, context)
    with recorded_run(args, mlflow_params, candidate, logged, data) as recorder:
        history, clf = fit(net, candidate, data, params.seed, context, recorder.on_epoch)
        recorder.stop_clock(
            images=len(data.y_train) * (candidate.epochs if candidate.is_torch else 1)
        )
        # Back on the CPU, whatever trained it: the final validation, the weights, the
        # logged model and everything after are the same on every device.
        net = net.to(device="cpu", memory_format=torch.contiguous_format).eval()
        val_probs, val_logits = final_validation(candidate, net, stats, data)
        final = final_metrics(history, val_probs, data.y_val, net)
        calibrated = calibration.report(val_logits, data.y_val)
        recorder.log_final(final, calibrated)
        write_outputs(args.out, net, history, final, calibrated, args.candidate, len(data.y_val))
        # The logged model answers as evaluate and the service do: calibrated.
        temperature = calibrated["temperature"]
        predictor = inference.make_predictor(candidate, net, stats, temperature=temperature)
        clf = calibration.tempered(clf, temperature) if clf is not None else None
        recorder.log_outputs(args.out, candidate, stats, predictor, clf)
    # Last, once the run has ended: run.json holds its end time.
    atomic.write_json(args.out / "run.json", recorder.run_json(args.candidate, threads))
    print(
        f"train: {args.candidate}: val accuracy {final['val_accuracy']:.4f} in "
        f"{recorder.seconds:.1f} s ({recorder.images_per_s:.0f} images/s); "
        f"MLflow run {recorder.run_id}"
    )


def fit(
    net: torch.nn.Module,
    candidate,
    data: training.Data,
    seed: int,
    context: distributed.Context,
    on_epoch: Callable[[dict], None],
):
    """Train ``net`` in place: (its History, scikit-learn's fitted model for logreg or
    None)."""
    if candidate.is_torch:
        return training.train_torch(
            net, candidate, data, seed, on_epoch=on_epoch, context=context
        ), None
    clf, history, _ = training.train_logreg(candidate, data, seed, net=net)
    return history, clf


def final_validation(
    candidate, net: torch.nn.Module, stats: dict, data: training.Data
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final model's validation probabilities (N, 10), with its TTA, and the logits
    they come from (V, N, 10) for the calibration: CNNs in channels_last, on a copy, on
    one thread, for the same bytes on every run. On two, a CNN's validation loss has been
    seen to move in its last digits now and then from the same weights, the work split
    between the threads differently (while MLflow's system-metrics thread samples, it
    seems)."""
    checker = inference.make_predictor(candidate, copy.deepcopy(net), stats, channels_last=True)
    with runtime.one_thread():
        logits = inference.view_logits(checker, data.x_val, batch_size=256)
    return checker.from_views(logits), logits


def run_params(
    name: str, candidate, seed: int, data: training.Data, threads: int, context: distributed.Context
) -> dict:
    """The MLflow params of a run: the candidate's and where it trained."""
    return flat_params(name, candidate, seed, data) | {
        "threads": threads,
        "device": str(context.device),
        "processes": context.world_size,
        "precision": str(context.dtype).removeprefix("torch.") if context.dtype else "fp32",
    }


@dataclass
class RunRecorder:
    """What goes into the candidate's MLflow run while it trains and once it has: a row of
    metrics per epoch, then the final metrics, the outputs and the model; and the
    timings that run.json keeps."""

    run_id: str
    experiment_id: str
    started: float = field(default_factory=time.perf_counter)
    epoch_seconds: list[float] = field(default_factory=list)  # since the start, each epoch
    seconds: float = 0.0  # of training
    images_per_s: float = 0.0

    def on_epoch(self, row: dict) -> None:
        import mlflow

        self.epoch_seconds.append(round(time.perf_counter() - self.started, 3))
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        mlflow.log_metrics(metrics | {"seconds": self.epoch_seconds[-1]}, step=row["epoch"])

    def stop_clock(self, images: int) -> None:
        """The training has seen ``images`` (with repeats) since the start."""
        self.seconds = time.perf_counter() - self.started
        if not self.epoch_seconds:  # logistic regression: one fit
            self.epoch_seconds.append(round(self.seconds, 3))
        self.images_per_s = images / self.seconds

    def log_final(self, final: dict, calibrated: dict) -> None:
        """The final model's metrics, its calibration and the training's speed."""
        import mlflow

        mlflow.log_metrics(
            {
                "final_val_accuracy": final["val_accuracy"],
                "final_val_loss": final["val_loss"],
                "val_error_pct": tracking.error_pct(final["val_accuracy"]),
                "train_seconds": self.seconds,
                "train_images_per_s": self.images_per_s,
                "parameters": final["parameters"],
                "multiply_adds": final["multiply_adds"],
                "temperature": calibrated["temperature"],
                "val_ece_uncalibrated": calibrated["val_ece_before"],
                "val_ece": calibrated["val_ece_after"],
            }
        )

    def log_outputs(self, out: Path, candidate, stats: dict, predictor, clf=None) -> None:
        """The stage's outputs in ``out`` (as ``train/``) and the model."""
        import mlflow

        mlflow.log_artifacts(str(out), artifact_path="train")
        # With the weights, these rebuild the exact Predictor (package reads them back).
        mlflow.log_dict(candidate.model_dump(), "train/candidate.json")
        mlflow.log_dict(stats, "train/stats.json")
        tracking.log_model(predictor, clf)

    def run_json(self, candidate: str, threads: int) -> dict:
        """run.json: the run, its timings and when it ended (read once it has)."""
        import mlflow

        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "candidate": candidate,
            "train_seconds": round(self.seconds, 3),
            "epoch_seconds": self.epoch_seconds,
            "images_per_s": round(self.images_per_s, 1),
            "threads": threads,
            "ended_ms": mlflow.MlflowClient().get_run(self.run_id).info.end_time,
        }


@contextmanager
def recorded_run(
    args, mlflow_params: MlflowParams, candidate, params: dict, data: training.Data
) -> Iterator[RunRecorder]:
    """The candidate's MLflow run, tagged with its lineage, its ``params`` and datasets
    logged; it ends FINISHED, FAILED on an error or KILLED on SIGTERM or Ctrl-C
    (tracking.training_run). The recorder's clock starts once it is set up."""
    import mlflow

    experiment_id = tracking.setup(mlflow_params)
    lineage = tracking.lineage_tags(
        {n: args.data / f"{n}.npz" for n in ("train", "val")}, dvc_outs=(args.data,)
    )
    tags = {"candidate": args.candidate, "arch": candidate.arch, **lineage}
    with tracking.training_run(
        experiment_id, args.candidate, tags, mlflow_params.system_metrics
    ) as run:
        mlflow.log_params(params)
        log_datasets(data, lineage)
        yield RunRecorder(run.info.run_id, experiment_id)


def log_datasets(data: training.Data, lineage: dict) -> None:
    import mlflow

    for name, x in (("train", data.x_train), ("val", data.x_val)):
        dataset = mlflow.data.from_numpy(
            x[:1].numpy(), name=name, digest=lineage[f"data_sha256.{name}"][:16]
        )
        mlflow.log_input(dataset, context="training" if name == "train" else "validation")


def cli_main(argv=None) -> None:
    p = cli.parser("train", __doc__)
    p.add_argument("--candidate", required=True, help="a key of train.candidates")
    p.add_argument("--data", required=True, type=Path, help="folder of normalised arrays")
    p.add_argument("--out", required=True, type=Path, help="folder for this candidate's outputs")
    cli.run("train", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
