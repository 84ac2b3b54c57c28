"""train: train one candidate from params.yaml and log the run to MLflow.

In: ``--candidate NAME``; the ``train`` and ``mlflow`` params; normalised ``train.npz``,
``val.npz`` and ``stats.json`` from normalise. Out, in ``--out``:
``weights.safetensors`` (the network's state_dict, no pickle), ``history.csv`` (train and
validation loss/accuracy per epoch), ``iterations.csv`` (loss per optimiser step),
``metrics.json`` (final validation metrics: deterministic for fixed params) and
``run.json`` (the MLflow run id and timings, which evaluate reuses to log into the same
run). Training runs from in-memory tensors, shuffled by a seeded generator on every
device alike.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm import tqdm

from pipeline import atomic, cli, models, optim, plots, tracking
from pipeline.params import Augment, Candidate, MlflowParams, TrainParams, load_section
from pipeline.split import stratified_take


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one row per epoch
    steps: list[float] = field(default_factory=list)  # loss per optimiser step


@dataclass
class Data:
    """Standardised tensors: x (N, 1, 28, 28) float32, y (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def set_threads(threads: int, arch: str = "cnn_fast") -> int:
    """Torch intra-op threads: ``threads`` if set, else 1 for the small dense models and
    every core for the CNNs. An MLP step is a few tiny ops that a second thread barely
    speeds up (R4: 2.3 -> 1.7 ms a step on an idle machine) but that slow down many
    times over when another process holds a core and the threads wait on each other."""
    n = threads_for(threads, arch)
    torch.set_num_threads(n)
    return n


def threads_for(threads: int, arch: str) -> int:
    """The thread count ``set_threads`` picks, without setting it."""
    return threads or (os.cpu_count() or 1 if arch in models.CNNS else 1)


def load_data(folder: Path, candidate: Candidate, seed: int) -> Data:
    train, val = (atomic.read_npz(folder / f"{name}.npz") for name in ("train", "val"))
    x, y = train["images"], train["labels"]
    if candidate.train_size is not None:
        x, y = stratified_take(x, y, candidate.train_size, seed)
    return Data(torch.from_numpy(x), torch.from_numpy(y),
                torch.from_numpy(val["images"]), torch.from_numpy(val["labels"]))


def augment(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift of each image in (B, 1, 28, 28)."""
    b = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1)
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(b) * math.radians(aug.max_rotate)
    scale = 1 + uniform(b) * aug.max_scale
    shift = uniform(b, 2) * aug.max_shift * 2  # affine_grid spans [-1, 1] over 28 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # The border of an MNIST digit is background, so repeating it pads with background.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def make_optimizer(net: nn.Module, c: Candidate, total_steps: int):
    """(optimizer, scheduler or None) for candidate ``c``."""
    if c.schedule == "constant":  # the same kernels as below, without torch.optim's costs
        if c.optimizer == "sgd":
            return optim.SGD(net.parameters(), lr=c.lr, momentum=c.momentum,
                             weight_decay=c.weight_decay), None
        return optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                          decoupled=c.optimizer == "adamw"), None
    # fused=True: one kernel per step instead of several per tensor.
    if c.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=c.lr, momentum=c.momentum,
                              weight_decay=c.weight_decay, fused=True)
    else:
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        opt = cls(net.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=True)
    if c.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=total_steps)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, sched


@torch.inference_mode()
def evaluate_logits(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000):
    """(mean cross-entropy, number correct) of ``net`` on standardised x."""
    logits = models.predict_proba(net, x, batch_size)
    return F.cross_entropy(logits, y).item(), int((logits.argmax(1) == y).sum())


def train_torch(net: nn.Module, c: Candidate, data: Data, seed: int, on_epoch=None) -> History:
    """Mini-batch training; ``on_epoch(row)`` is called after each epoch's validation."""
    # Subnormal floats (below 1.2e-38) take the CPU's slow path. R3's hidden softmax over
    # 784 units makes many of them: flushing them to zero cut its epoch from 4.8 to 3.1 s.
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(seed)
    is_cnn = c.arch in models.CNNS
    fmt = torch.channels_last if is_cnn else torch.contiguous_format
    net = net.to(memory_format=fmt)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / c.batch_size)
    opt, sched = make_optimizer(net, c, c.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
    augmenting = any((c.augment.max_shift, c.augment.max_rotate, c.augment.max_scale))
    chunk = c.micro_batch or c.batch_size
    # An ensemble's members each learn from their own loss, as if trained alone.
    nets = models.members(net)
    history = History()
    bar = tqdm(total=c.epochs * steps_per_epoch, desc="train", unit="step", mininterval=0.5)
    for epoch in range(1, c.epochs + 1):
        net.train()
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, c.batch_size):
            idx = order[start : start + c.batch_size]
            # index_select, not x[idx]: the same rows at a third of the cost (~30 us).
            xb, yb = data.x_train.index_select(0, idx), data.y_train.index_select(0, idx)
            if augmenting:
                xb = augment(xb, c.augment, generator)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for part in range(0, len(idx), chunk):  # one part unless micro_batch is set
                xc, yc = xb[part : part + chunk], yb[part : part + chunk]
                xc = xc.contiguous(memory_format=fmt)
                outputs = [member(xc) for member in nets]
                logits = sum(outputs)
                # Weighted by the part's share of the batch, the parts' gradients add
                # up to the whole batch's (the weight is exactly 1.0 for one part).
                loss = (sum(loss_fn(z, yc) for z in outputs) / len(outputs)
                        * (len(yc) / len(yb)))
                loss.backward()
                step_loss += loss.item()
                correct += int((logits.argmax(1) == yc).sum())
            opt.step()
            if sched is not None:
                sched.step()
            history.steps.append(step_loss)
            loss_sum += step_loss * len(idx)
            bar.update()
            if len(history.steps) % 64 == 0:  # formatting every step costs ~10 us
                bar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}", refresh=False)
        val_loss, val_correct = evaluate_logits(net, data.x_val, data.y_val)
        row = {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy": correct / n,
               "val_loss": val_loss, "val_accuracy": val_correct / len(data.y_val),
               "val_correct": val_correct}
        history.epochs.append(row)
        bar.write(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc "
                  f"{row['train_accuracy']:.4f} | val loss {val_loss:.4f} acc "
                  f"{row['val_accuracy']:.4f}")
        if on_epoch:
            on_epoch(row)
    bar.close()
    return history


def train_logreg(c: Candidate, data: Data, seed: int):
    """scikit-learn multinomial logistic regression; returns (model, equivalent Linear net)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c.C, max_iter=c.max_iter, random_state=seed)
    clf.fit(data.x_train.flatten(1).numpy(), data.y_train.numpy())
    # Softmax of x @ coef.T + intercept is exactly predict_proba: one Linear layer.
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(clf.coef_).float())
        net[1].bias.copy_(torch.from_numpy(clf.intercept_).float())
    return clf, net


def build_net(c: Candidate) -> nn.Module:
    """The network for c (a Linear layer stands for logreg, filled in after fitting)."""
    if c.arch == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    return models.build(c)


def flat_params(name: str, c: Candidate, seed: int, data: Data) -> dict:
    flat = {"candidate": name, "seed": seed, "n_train": len(data.y_train), "n_val": len(data.y_val)}
    for key, value in c.model_dump().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def main(args) -> None:
    params = load_section(args.params, "train", TrainParams)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    if args.candidate not in params.candidates:
        raise cli.StageError(f"train.candidates: no candidate named {args.candidate!r}; "
                             f"known: {sorted(params.candidates)}")
    c = params.candidates[args.candidate]
    threads = set_threads(params.threads, c.arch)
    torch.manual_seed(params.seed)
    data = load_data(args.data, c, params.seed)
    stats = atomic.read_json(args.data / "stats.json")
    out: Path = args.out

    import mlflow

    experiment_id = tracking.setup(mlflow_params)
    lineage = tracking.lineage_tags({n: args.data / f"{n}.npz" for n in ("train", "val")})
    with mlflow.start_run(experiment_id=experiment_id, run_name=args.candidate,
                          tags={"candidate": args.candidate, "arch": c.arch, **lineage}) as run:
        mlflow.log_params(flat_params(args.candidate, c, params.seed, data) | {"threads": threads})
        log_datasets(data, lineage)
        started = time.perf_counter()
        if c.arch == "logreg":
            clf, net = train_logreg(c, data, params.seed)
            val_loss, val_correct = evaluate_logits(net, data.x_val, data.y_val)
            history = History(epochs=[{"epoch": 1, "train_loss": float("nan"),
                                       "train_accuracy": clf.score(data.x_train.flatten(1).numpy(),
                                                                   data.y_train.numpy()),
                                       "val_loss": val_loss,
                                       "val_accuracy": val_correct / len(data.y_val),
                                       "val_correct": val_correct}])
        else:
            net = build_net(c)
            history = train_torch(net, c, data, params.seed,
                                  on_epoch=lambda row: mlflow.log_metrics(
                                      {k: v for k, v in row.items() if k != "epoch"},
                                      step=row["epoch"]))
        seconds = time.perf_counter() - started
        net = net.to(memory_format=torch.contiguous_format).eval()
        predictor = models.Predictor(net, stats["mean"], stats["std"], tta=c.tta)
        val_probs = models.predict_proba(predictor.eval().from_standardised, data.x_val)
        final = final_metrics(history, val_probs, data.y_val, net)
        images_per_s = len(data.y_train) * c.epochs / seconds
        mlflow.log_metrics({"final_val_accuracy": final["val_accuracy"],
                            "final_val_loss": final["val_loss"],
                            "train_seconds": seconds, "train_images_per_s": images_per_s})

        weights = save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()})
        atomic.write_bytes(out / "weights.safetensors", weights)
        atomic.write_csv(out / "history.csv", list(history.epochs[0]),
                         [row.values() for row in history.epochs])
        atomic.write_csv(out / "iterations.csv", ["step", "loss"],
                         enumerate(history.steps, start=1) if history.steps
                         else [(0, float("nan"))])
        atomic.write_json(out / "metrics.json", final)
        plots.save_curves(history.epochs, out / "curves.png", args.candidate)
        mlflow.log_artifacts(str(out), artifact_path="train")
        # With the weights, these rebuild the exact Predictor (package reads them back).
        mlflow.log_dict(c.model_dump(), "train/candidate.json")
        mlflow.log_dict(stats, "train/stats.json")
        log_model(predictor, c, clf if c.arch == "logreg" else None)
        atomic.write_json(out / "run.json", {
            "run_id": run.info.run_id, "experiment_id": experiment_id,
            "candidate": args.candidate, "train_seconds": round(seconds, 3),
            "images_per_s": round(images_per_s, 1), "threads": threads})
    print(f"train: {args.candidate}: val accuracy {final['val_accuracy']:.4f} "
          f"in {seconds:.1f} s ({images_per_s:.0f} images/s); MLflow run {run.info.run_id}")


def final_metrics(history: History, val_probs: torch.Tensor, y_val: torch.Tensor,
                  net: nn.Module) -> dict:
    """What promotion compares: validation metrics of the final model (with its TTA)."""
    loss = F.nll_loss(torch.log(val_probs.clamp_min(1e-12)), y_val).item()
    return {"val_accuracy": int((val_probs.argmax(1) == y_val).sum()) / len(y_val),
            "val_loss": loss, "epochs": len(history.epochs),
            "parameters": models.parameter_count(net),
            "multiply_adds": models.multiply_adds(net)}


def log_datasets(data: Data, lineage: dict) -> None:
    import mlflow

    for name, x in (("train", data.x_train), ("val", data.x_val)):
        dataset = mlflow.data.from_numpy(x[:1].numpy(), name=name,
                                         digest=lineage[f"data_sha256.{name}"][:16])
        mlflow.log_input(dataset, context="training" if name == "train" else "validation")


def requirements(*packages: str) -> list[str]:
    """Pinned pip requirements; given explicitly, MLflow skips a ~10 s inference."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def log_model(predictor: models.Predictor, c: Candidate, clf=None) -> None:
    """Log the model pickle-free: torch.export (pt2) for torch, skops for scikit-learn."""
    import mlflow
    from mlflow.models import infer_signature

    example = torch.zeros(2, 1, 28, 28)
    signature = infer_signature(example.numpy(), predictor(example).detach().numpy())
    if clf is not None:
        flat = example.flatten(1).numpy()
        mlflow.sklearn.log_model(clf, name="model", serialization_format="skops",
                                 signature=infer_signature(flat, clf.predict_proba(flat)),
                                 input_example=flat,
                                 pip_requirements=requirements("scikit-learn", "skops", "numpy"))
        return
    mlflow.pytorch.log_model(predictor, name="model", serialization_format="pt2",
                             signature=signature, input_example=example.numpy(),
                             pip_requirements=requirements("torch", "numpy"))


def cli_main(argv=None) -> None:
    p = cli.parser("train", __doc__)
    p.add_argument("--candidate", required=True, help="a key of train.candidates")
    p.add_argument("--data", required=True, type=Path, help="folder of normalised arrays")
    p.add_argument("--out", required=True, type=Path, help="folder for this candidate's outputs")
    cli.run("train", main, cli.parse(p, argv))


if __name__ == "__main__":
    cli_main()
