"""train: train one candidate from params.yaml and log the run to MLflow.

In: ``--candidate NAME``; the ``train`` and ``mlflow`` params; normalised ``train.npz``,
``val.npz`` and ``stats.json`` from normalise. Out, in ``--out``:
``weights.safetensors`` (the network's state_dict, no pickle), ``history.csv`` (train and
validation loss/accuracy per epoch), ``iterations.csv`` (loss per optimiser step),
``metrics.json`` (final validation metrics: deterministic for fixed params),
``curves.png`` and ``run.json`` (the MLflow run id and timings, which evaluate reuses to
log into the same run).

On ``train.device`` (a GPU when there is one); with ``train.processes`` > 1 the stage
runs itself again under torchrun, data-parallel. Started by torchrun directly (several
processes or machines: docs/training.md), rank 0 writes the outputs and the MLflow run;
the other ranks only train.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors

from pipeline import (
    atomic,
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


def flat_params(name: str, c, seed: int, data: training.Data) -> dict:
    """The candidate's own settings as MLflow params (``augment.max_shift``, ...)."""
    flat = {"candidate": name, "seed": seed, "n_train": len(data.y_train), "n_val": len(data.y_val)}
    for key, value in c.model_dump().items():
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


def log_datasets(data: training.Data, lineage: dict) -> None:
    import mlflow

    for name, x in (("train", data.x_train), ("val", data.x_val)):
        dataset = mlflow.data.from_numpy(
            x[:1].numpy(), name=name, digest=lineage[f"data_sha256.{name}"][:16]
        )
        mlflow.log_input(dataset, context="training" if name == "train" else "validation")


def write_outputs(
    out: Path, net: torch.nn.Module, history: training.History, final: dict, name: str
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
    plots.save_curves(history.epochs, out / "curves.png", name)


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
    c = params.candidate(args.candidate)
    if c.is_torch and params.processes > 1 and not distributed.under_torchrun():
        code = distributed.relaunch(params.processes, "pipeline.stages.train", argv_of(args))
        if code:
            raise StageError(
                f"{params.processes} data-parallel processes under torchrun "
                f"failed (exit {code}); the failing rank's error is above"
            )
        return
    # logreg is scikit-learn's: on the CPU, in one process.
    context = (
        distributed.start(params.device, params.precision)
        if c.is_torch
        else distributed.Context(torch.device("cpu"))
    )
    try:
        train(args, params, mlflow_params, c, context)
    finally:
        distributed.finish(context)


def train(
    args, params: TrainParams, mlflow_params: MlflowParams, c, context: distributed.Context
) -> None:
    faults.point("train.start")
    threads = runtime.set_threads(params.threads, c, processes=context.world_size)
    torch.manual_seed(params.seed)
    data = training.load_data(args.data, c, params.seed)
    if not context.is_main:  # another rank: only the training, no outputs, no MLflow run
        training.train_torch(models.build(c), c, data, params.seed, context=context)
        return
    stats = atomic.read_json(args.data / "stats.json")
    out: Path = args.out

    import mlflow

    experiment_id = tracking.setup(mlflow_params)
    lineage = tracking.lineage_tags(
        {n: args.data / f"{n}.npz" for n in ("train", "val")}, dvc_outs=(args.data,)
    )
    tags = {"candidate": args.candidate, "arch": c.arch, **lineage}
    with tracking.training_run(
        experiment_id, args.candidate, tags, mlflow_params.system_metrics
    ) as run:
        mlflow.log_params(
            flat_params(args.candidate, c, params.seed, data)
            | {
                "threads": threads,
                "device": str(context.device),
                "processes": context.world_size,
                "precision": str(context.dtype).removeprefix("torch.") if context.dtype else "fp32",
            }
        )
        log_datasets(data, lineage)
        started = time.perf_counter()
        epoch_seconds: list[float] = []  # since the start, at each epoch's end

        def on_epoch(row: dict) -> None:
            epoch_seconds.append(round(time.perf_counter() - started, 3))
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            mlflow.log_metrics(metrics | {"seconds": epoch_seconds[-1]}, step=row["epoch"])

        clf = None
        if c.is_torch:
            net = models.build(c)
            history = training.train_torch(
                net, c, data, params.seed, on_epoch=on_epoch, context=context
            )
        else:
            clf, history, net = training.train_logreg(c, data, params.seed)
        seconds = time.perf_counter() - started
        if not epoch_seconds:  # logistic regression: one fit
            epoch_seconds.append(round(seconds, 3))
        # Back on the CPU, whatever trained it: the final validation, the weights, the
        # logged model and everything after are the same on every device.
        net = net.to(device="cpu", memory_format=torch.contiguous_format).eval()
        predictor = inference.make_predictor(c, net, stats)
        # The final validation (CNNs in channels_last, on a copy), on one thread: the same
        # bytes on every run. On two, a CNN's validation loss has been seen to move in its
        # 6th digit now and then from the same weights, the work split between the threads
        # differently (while MLflow's system-metrics thread samples, it seems).
        checker = inference.make_predictor(c, copy.deepcopy(net), stats, channels_last=True)
        with runtime.one_thread():
            val_probs = inference.in_batches(checker.from_standardised, data.x_val)
        final = final_metrics(history, val_probs, data.y_val, net)
        epochs = c.epochs if c.is_torch else 1
        images_per_s = len(data.y_train) * epochs / seconds
        mlflow.log_metrics(
            {
                "final_val_accuracy": final["val_accuracy"],
                "final_val_loss": final["val_loss"],
                "val_error_pct": tracking.error_pct(final["val_accuracy"]),
                "train_seconds": seconds,
                "train_images_per_s": images_per_s,
                "parameters": final["parameters"],
                "multiply_adds": final["multiply_adds"],
            }
        )
        write_outputs(out, net, history, final, args.candidate)
        mlflow.log_artifacts(str(out), artifact_path="train")
        # With the weights, these rebuild the exact Predictor (package reads them back).
        mlflow.log_dict(c.model_dump(), "train/candidate.json")
        mlflow.log_dict(stats, "train/stats.json")
        tracking.log_model(predictor, clf)
    # Last, once the run has ended: evaluate logs into the run and sets its end from here.
    atomic.write_json(
        out / "run.json",
        {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "candidate": args.candidate,
            "train_seconds": round(seconds, 3),
            "epoch_seconds": epoch_seconds,
            "images_per_s": round(images_per_s, 1),
            "threads": threads,
            "ended_ms": mlflow.MlflowClient().get_run(run.info.run_id).info.end_time,
        },
    )
    print(
        f"train: {args.candidate}: val accuracy {final['val_accuracy']:.4f} "
        f"in {seconds:.1f} s ({images_per_s:.0f} images/s); MLflow run {run.info.run_id}"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("train", __doc__)
    p.add_argument("--candidate", required=True, help="a key of train.candidates")
    p.add_argument("--data", required=True, type=Path, help="folder of normalised arrays")
    p.add_argument("--out", required=True, type=Path, help="folder for this candidate's outputs")
    cli.run("train", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
