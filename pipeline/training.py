"""Training loops: mini-batch gradient descent for the torch candidates, scikit-learn's
fit for logistic regression.

In: a candidate, standardised tensors (``Data``) and a seed. Out: the trained network (in
place) and its ``History`` (a row per epoch, a loss per optimiser step). Training runs
from in-memory tensors, shuffled and augmented by one seeded generator, so the same
params give the same weights on the same machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import atomic, distributed, inference, models, optim
from pipeline import augment as augment_lib
from pipeline.dataset import stratified_take
from pipeline.errors import StageError
from pipeline.params import Augment, Candidate, LogReg, TorchCandidate

MEMBER_SEED_STRIDE = 1_000_003


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
    # x = (pixels - mean) / std, pixels in [0, 1]: what the training corruptions undo
    mean: float = 0.0
    std: float = 1.0


def load_data(folder: Path, candidate: Candidate, seed: int) -> Data:
    """The normalised train and val arrays, the training part cut to ``train_size``."""
    train, val = (atomic.read_npz(folder / f"{name}.npz") for name in ("train", "val"))
    x, y = train["images"], train["labels"]
    if candidate.train_size is not None:
        x, y = stratified_take(x, y, candidate.train_size, seed)
    stats = atomic.read_json(folder / "stats.json")
    return Data(
        torch.from_numpy(x),
        torch.from_numpy(y),
        torch.from_numpy(val["images"]),
        torch.from_numpy(val["labels"]),
        mean=stats["mean"],
        std=stats["std"],
    )


def augment(
    x: torch.Tensor, aug: Augment, generator: torch.Generator, scale: tuple[float, float]
) -> torch.Tensor:
    """Random rotation, scale and shift of each image in (B, 1, 28, 28), standardised
    with ``scale`` = (mean, std); then ``aug.corrupt`` of them spoilt (pipeline/augment.py)."""
    x = jitter(x, aug, generator) if aug.jitters else x
    if aug.corrupt:
        mean, std = scale
        pixels = augment_lib.spoil((x * std + mean).cpu(), aug.corrupt, generator)
        x = ((pixels - mean) / std).to(x.device)
    return x


def jitter(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift of each image in (B, 1, 28, 28)."""
    b = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1)
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(b) * math.radians(aug.max_rotate)
    scale = 1 + uniform(b) * aug.max_scale
    shift = uniform(b, 2) * aug.max_shift * 2  # affine_grid spans [-1, 1] over 28 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(x.device)  # (B, 2, 3), drawn on the CPU: the same numbers on every device
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # The border of an MNIST digit is background, so repeating it pads with background.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def make_optimizer(net: nn.Module, c: TorchCandidate, total_steps: int, scaled: bool = False):
    """(optimizer, scheduler or None) for candidate ``c``; ``scaled``: for fp16's gradient
    scaler, which needs torch.optim's interface."""
    if c.schedule == "constant" and not scaled:  # the same kernels, without torch.optim's costs
        if c.optimizer == "sgd":
            return optim.SGD(
                net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            ), None
        return optim.Adam(
            net.parameters(),
            lr=c.lr,
            weight_decay=c.weight_decay,
            decoupled=c.optimizer == "adamw",
        ), None
    # fused=True: one kernel per step instead of several per tensor.
    if c.optimizer == "sgd":
        opt = torch.optim.SGD(
            net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, fused=True
        )
    else:
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        opt = cls(net.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=True)
    if c.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=total_steps)
    elif c.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        sched = None
    return opt, sched


@torch.inference_mode()
def evaluate_logits(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000):
    """(mean cross-entropy, number correct) of ``net`` on standardised x."""
    logits = inference.in_batches(net, x, batch_size)
    return F.cross_entropy(logits, y).item(), int((logits.argmax(1) == y).sum())


def train_torch(
    net: nn.Module,
    c: TorchCandidate,
    data: Data,
    seed: int,
    on_epoch: Callable[[dict], None] | None = None,
    context: distributed.Context | None = None,
) -> History:
    """Mini-batch training on ``context``'s device (the CPU by default), data-parallel
    over its ranks when there are several; ``on_epoch(row)`` is called on rank 0 after
    each epoch's validation. The shuffling and augmentation are drawn on the CPU from one
    seeded generator, the same on every device and every rank."""
    context = context or distributed.Context(torch.device("cpu"))
    device = context.device
    # Subnormal floats take the CPU's slow path; R3's hidden softmax over 784 units makes
    # many of them. Flushing them to zero changes nothing a float32 model can tell.
    torch.set_flush_denormal(True)
    # One seeded generator draws the order and the jitter; with member_data "own" each
    # member k of an ensemble has its own, seeded seed + k * MEMBER_SEED_STRIDE, as if it
    # were trained alone (the stride keeps the members of different seeds apart).
    own = c.members > 1 and c.member_data == "own"
    generators = [
        torch.Generator().manual_seed(seed + k * MEMBER_SEED_STRIDE)
        for k in range(c.members if own else 1)
    ]
    fmt = torch.channels_last if c.is_cnn else torch.contiguous_format
    net = net.to(device=device, memory_format=fmt)
    # The whole training set moves to the device once, not a batch at a time.
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    scale = (data.mean, data.std)
    n = len(y_train)
    steps_per_epoch = math.ceil(n / c.batch_size)
    if 0 < n % c.batch_size < context.world_size:
        raise StageError(
            f"train.processes: {context.world_size} ranks cannot share the last "
            f"batch of {n % c.batch_size} of {n} images; change batch_size"
        )
    scaler = torch.amp.GradScaler("cuda") if context.dtype == torch.float16 else None
    opt, sched = make_optimizer(net, c, c.epochs * steps_per_epoch, scaled=scaler is not None)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
    # Only the architectures without batch norm have micro_batch.
    chunk = getattr(c, "micro_batch", None) or c.batch_size
    # An ensemble's members each learn from their own loss, as if trained alone.
    trainer = context.wrap(models.MemberLogits(net))
    history = History()
    bar = tqdm(
        total=c.epochs * steps_per_epoch,
        desc="train",
        unit="step",
        mininterval=0.5,
        disable=not context.is_main,
    )
    for epoch in range(1, c.epochs + 1):
        trainer.train()
        orders = [torch.randperm(n, generator=g) for g in generators]
        losses: list[list[torch.Tensor]] = []  # each step's parts' losses, read once an epoch
        correct = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, c.batch_size):
            size = len(orders[0][start : start + c.batch_size])  # the global batch
            drawn = [
                draw(x_train, y_train, order[start : start + c.batch_size], c, g, context, scale)
                for order, g in zip(orders, generators, strict=True)
            ]
            opt.zero_grad(set_to_none=True)
            parts = []
            for part in range(0, len(drawn[0][1]), chunk):  # one part unless micro_batch
                xs = [xb[part : part + chunk].contiguous(memory_format=fmt) for xb, _ in drawn]
                ys = [yb[part : part + chunk] for _, yb in drawn]
                with context.autocast():
                    if own:  # each member its own images
                        outputs = trainer(tuple(xs))
                        pairs = list(zip(outputs, ys, strict=True))
                    else:  # every member the same images
                        outputs = trainer(xs[0])
                        pairs = [(z, ys[0]) for z in outputs]
                    # Weighted by the part's share of the global batch, the parts' (and
                    # the ranks') gradients add up to the whole batch's: the weight is
                    # exactly 1.0 for one part in one process.
                    loss = sum(loss_fn(z, y) for z, y in pairs) / len(outputs) * (len(ys[0]) / size)
                # DistributedDataParallel averages the ranks' gradients; they must add.
                scaled = loss * context.world_size if context.distributed else loss
                (scaler.scale(scaled) if scaler else scaled).backward()
                parts.append(loss.detach())
                if own:  # the members' mean accuracy on their own images
                    correct += sum((z.argmax(1) == y).sum() for z, y in pairs) / len(pairs)
                else:  # the ensemble's accuracy on the shared images
                    correct += (sum(outputs).argmax(1) == ys[0]).sum()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if sched is not None:
                sched.step()
            losses.append(parts)
            bar.update()
            if len(losses) % 64 == 0:  # reading a loss waits for the device: rarely
                bar.set_postfix(epoch=epoch, loss=f"{float(sum(parts)):.4f}", refresh=False)
        step_losses = epoch_step_losses(losses, context)
        history.steps += step_losses
        loss_sum = sum(
            loss * len(part)
            for loss, part in zip(step_losses, batches(n, c.batch_size), strict=True)
        )
        correct_total = float(context.sum(correct.cpu().reshape(1))[0])
        if not context.is_main:
            continue
        val_loss, val_correct = evaluate_logits(net, x_val, y_val)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "train_accuracy": correct_total / n,
            "val_loss": val_loss,
            "val_accuracy": val_correct / len(y_val),
            "val_correct": val_correct,
        }
        history.epochs.append(row)
        bar.write(
            f"epoch {epoch}: train loss {row['train_loss']:.4f} acc "
            f"{row['train_accuracy']:.4f} | val loss {val_loss:.4f} acc "
            f"{row['val_accuracy']:.4f}"
        )
        if on_epoch:
            on_epoch(row)
    bar.close()
    return history


def draw(
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    c: TorchCandidate,
    generator: torch.Generator,
    context: distributed.Context,
    scale: tuple[float, float] = (0.0, 1.0),
):
    """The rows ``idx`` of (x, y), jittered (drawn for the whole batch, so that every rank
    draws the same) and cut to this rank's part of the batch."""
    # index_select, not x[idx]: the same rows, without advanced indexing's overhead.
    rows = idx.to(x.device)
    xb, yb = x.index_select(0, rows), y.index_select(0, rows)
    if c.augment.enabled:
        xb = augment(xb, c.augment, generator, scale)
    if context.distributed:
        mine = context.part(len(idx))
        xb, yb = xb[mine], yb[mine]
    return xb, yb


def batches(n: int, batch_size: int) -> list[range]:
    """The index ranges of an epoch's batches."""
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def epoch_step_losses(
    losses: list[list[torch.Tensor]], context: distributed.Context
) -> list[float]:
    """Each step's training loss over the global batch: its parts' losses added in order
    (as Python floats), then summed over the ranks."""
    flat = torch.stack([loss for parts in losses for loss in parts]).float().cpu().tolist()
    values, start = [], 0
    for parts in losses:
        total = 0.0
        for value in flat[start : start + len(parts)]:
            total += value
        values.append(total)
        start += len(parts)
    if not context.distributed:
        return values
    return context.sum(torch.tensor(values, dtype=torch.float64)).tolist()


def train_logreg(c: LogReg, data: Data, seed: int):
    """scikit-learn multinomial logistic regression; returns (fitted model, its History,
    the equivalent linear network)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c.C, max_iter=c.max_iter, random_state=seed)
    x_train = data.x_train.flatten(1).numpy()
    clf.fit(x_train, data.y_train.numpy())
    # Softmax of x @ coef.T + intercept is exactly predict_proba: one Linear layer.
    net = models.build(c)
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(clf.coef_).float())
        net[1].bias.copy_(torch.from_numpy(clf.intercept_).float())
    val_loss, val_correct = evaluate_logits(net, data.x_val, data.y_val)
    row = {
        "epoch": 1,
        "train_loss": float("nan"),
        "train_accuracy": clf.score(x_train, data.y_train.numpy()),
        "val_loss": val_loss,
        "val_accuracy": val_correct / len(data.y_val),
        "val_correct": val_correct,
    }
    return clf, History(epochs=[row]), net
