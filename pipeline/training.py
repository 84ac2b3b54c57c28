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


def make_optimizer(
    net: nn.Module, candidate: TorchCandidate, total_steps: int, scaled: bool = False
):
    """(optimizer, scheduler or None) for candidate ``candidate``; ``scaled``: for fp16's gradient
    scaler, which needs torch.optim's interface."""
    if (
        candidate.schedule == "constant" and not scaled
    ):  # the same kernels, without torch.optim's costs
        if candidate.optimizer == "sgd":
            return optim.SGD(
                net.parameters(),
                lr=candidate.lr,
                momentum=candidate.momentum,
                weight_decay=candidate.weight_decay,
            ), None
        return optim.Adam(
            net.parameters(),
            lr=candidate.lr,
            weight_decay=candidate.weight_decay,
            decoupled=candidate.optimizer == "adamw",
        ), None
    # fused=True: one kernel per step instead of several per tensor.
    if candidate.optimizer == "sgd":
        opt = torch.optim.SGD(
            net.parameters(),
            lr=candidate.lr,
            momentum=candidate.momentum,
            weight_decay=candidate.weight_decay,
            fused=True,
        )
    else:
        cls = torch.optim.Adam if candidate.optimizer == "adam" else torch.optim.AdamW
        opt = cls(
            net.parameters(), lr=candidate.lr, weight_decay=candidate.weight_decay, fused=True
        )
    if candidate.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=candidate.lr, total_steps=total_steps
        )
    elif candidate.schedule == "cosine":
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
    candidate: TorchCandidate,
    data: Data,
    seed: int,
    on_epoch: Callable[[dict], None] | None = None,
    context: distributed.Context | None = None,
) -> History:
    """Mini-batch training on ``context``'s device (the CPU by default), data-parallel
    over its ranks when there are several; ``on_epoch(row)`` is called on rank 0 after
    each epoch's validation. The shuffling and augmentation are drawn on the CPU from
    seeded generators, the same on every device and every rank."""
    context = context or distributed.Context(torch.device("cpu"))
    device = context.device
    # Subnormal floats take the CPU's slow path; R3's hidden softmax over 784 units makes
    # many of them. Flushing them to zero changes nothing a float32 model can tell.
    torch.set_flush_denormal(True)
    members = Members.seeded(candidate, seed)
    fmt = torch.channels_last if candidate.is_cnn else torch.contiguous_format
    net = net.to(device=device, memory_format=fmt)
    # The whole training set moves to the device once, not a batch at a time.
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    scale = (data.mean, data.std)
    n = len(y_train)
    check_last_batch(n, candidate.batch_size, context)
    steps_per_epoch = math.ceil(n / candidate.batch_size)
    updater = Updater.make(net, candidate, candidate.epochs * steps_per_epoch, context)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=candidate.label_smoothing)
    # Only the architectures without batch norm have micro_batch.
    chunk = getattr(candidate, "micro_batch", None) or candidate.batch_size
    # An ensemble's members each learn from their own loss, as if trained alone.
    trainer = context.wrap(models.MemberLogits(net))
    history = History()
    bar = progress_bar(candidate.epochs * steps_per_epoch, context)
    for epoch in range(1, candidate.epochs + 1):
        trainer.train()
        orders = members.orders(n)  # (n,) each: the epoch's order of the images
        losses: list[list[torch.Tensor]] = []  # each step's parts' losses, read once an epoch
        correct = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, candidate.batch_size):
            idx = [order[start : start + candidate.batch_size] for order in orders]  # (B,) each
            drawn = members.draw(x_train, y_train, idx, candidate, context, scale)
            updater.zero_grad()
            parts = []
            for xs, ys, share in micro_batches(drawn, len(idx[0]), chunk, fmt):
                with context.autocast():
                    pairs = members.forward(trainer, xs, ys)  # (logits (b, 10), labels (b,))
                    loss = members.loss(loss_fn, pairs) * share  # see micro_batches
                updater.backward(loss)
                parts.append(loss.detach())
                correct += members.correct(pairs)
            updater.step()
            losses.append(parts)
            bar.update()
            if len(losses) % 64 == 0:  # reading a loss waits for the device: rarely
                bar.set_postfix(epoch=epoch, loss=f"{float(sum(parts)):.4f}", refresh=False)
        step_losses, train_loss, train_accuracy = epoch_summary(
            losses, correct, n, candidate, context
        )
        history.steps += step_losses
        if not context.is_main:
            continue
        row = epoch_row(epoch, train_loss, train_accuracy, net, x_val, y_val)
        history.epochs.append(row)
        bar.write(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
        )
        if on_epoch:
            on_epoch(row)
    bar.close()
    return history


@dataclass
class Members:
    """Which images each member of an ensemble sees, how the members' losses combine and
    how their accuracy counts (a single network is an ensemble of one).

    One seeded generator draws the order and the jitter; with member_data "own" each
    member k of an ensemble has its own, seeded seed + k * MEMBER_SEED_STRIDE, as if it
    were trained alone (the stride keeps the members of different seeds apart)."""

    own: bool  # each member its own images; else every member the same ones
    generators: list[torch.Generator]  # one per member when own, else one

    @classmethod
    def seeded(cls, candidate: TorchCandidate, seed: int) -> Members:
        own = candidate.members > 1 and candidate.member_data == "own"
        generators = [
            torch.Generator().manual_seed(seed + k * MEMBER_SEED_STRIDE)
            for k in range(candidate.members if own else 1)
        ]
        return cls(own, generators)

    def orders(self, n: int) -> list[torch.Tensor]:
        """An epoch's order of the ``n`` images, (n,), from each generator in turn."""
        return [torch.randperm(n, generator=g) for g in self.generators]

    def draw(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: list[torch.Tensor],
        candidate: TorchCandidate,
        context: distributed.Context,
        scale: tuple[float, float],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(images (b, 1, 28, 28), labels (b,)) of this rank's part of the batch, one pair
        per generator: the rows ``idx[k]``, jittered by generator k (in turn)."""
        return [
            draw(x, y, rows, candidate, g, context, scale)
            for rows, g in zip(idx, self.generators, strict=True)
        ]

    def forward(
        self, trainer: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits (b, 10), labels (b,)) of each member, from ``trainer`` (MemberLogits)."""
        if self.own:  # each member its own images
            return list(zip(trainer(tuple(xs)), ys, strict=True))
        return [(z, ys[0]) for z in trainer(xs[0])]  # every member the same images

    @staticmethod
    def loss(loss_fn: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The members' mean loss: each member's gradient is its own loss's, / members."""
        return sum(loss_fn(z, y) for z, y in pairs) / len(pairs)

    def correct(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The images read right: the members' mean count on their own images; for shared
        images, the ensemble's (the argmax of the members' summed logits)."""
        if self.own:
            return sum((z.argmax(1) == y).sum() for z, y in pairs) / len(pairs)
        return (sum(z for z, _ in pairs).argmax(1) == pairs[0][1]).sum()


def micro_batches(
    drawn: list[tuple[torch.Tensor, torch.Tensor]],
    size: int,
    chunk: int,
    fmt: torch.memory_format,
):
    """This rank's part of a global batch of ``size`` images in parts of at most ``chunk``
    (one part without micro_batch): (images, labels, share) per part, a list of one
    (b, 1, 28, 28) and one (b,) per generator. Each part's loss is weighted by its share
    of the global batch, so the parts' (and the ranks') gradients add up to the whole
    batch's: the weight is exactly 1.0 for one part in one process."""
    for part in range(0, len(drawn[0][1]), chunk):
        xs = [xb[part : part + chunk].contiguous(memory_format=fmt) for xb, _ in drawn]
        ys = [yb[part : part + chunk] for _, yb in drawn]
        yield xs, ys, len(ys[0]) / size


@dataclass
class Updater:
    """The optimiser step: the backward pass (the ranks' gradients added; fp16's scaled by
    its GradScaler so that small ones do not underflow), then the optimiser's and the
    schedule's step."""

    opt: torch.optim.Optimizer | optim.SGD | optim.Adam
    sched: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None  # fp16 only
    context: distributed.Context

    @classmethod
    def make(
        cls,
        net: nn.Module,
        candidate: TorchCandidate,
        total_steps: int,
        context: distributed.Context,
    ) -> Updater:
        scaler = torch.amp.GradScaler("cuda") if context.dtype == torch.float16 else None
        opt, sched = make_optimizer(net, candidate, total_steps, scaled=scaler is not None)
        return cls(opt, sched, scaler, context)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        # DistributedDataParallel averages the ranks' gradients; they must add.
        scaled = loss * self.context.world_size if self.context.distributed else loss
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()

    def step(self) -> None:
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.sched is not None:
            self.sched.step()


def check_last_batch(n: int, batch_size: int, context: distributed.Context) -> None:
    """Every rank needs at least one image of the epoch's last batch."""
    if 0 < n % batch_size < context.world_size:
        raise StageError(
            f"train.processes: {context.world_size} ranks cannot share the last "
            f"batch of {n % batch_size} of {n} images; change batch_size"
        )


def progress_bar(steps: int, context: distributed.Context) -> tqdm:
    return tqdm(
        total=steps, desc="train", unit="step", mininterval=0.5, disable=not context.is_main
    )


def epoch_summary(
    losses: list[list[torch.Tensor]],
    correct: torch.Tensor,
    n: int,
    candidate: TorchCandidate,
    context: distributed.Context,
) -> tuple[list[float], float, float]:
    """(each step's loss, the mean training loss, the training accuracy) of an epoch of
    ``n`` images, summed over the ranks: every rank calls it."""
    step_losses = epoch_step_losses(losses, context)
    loss_sum = sum(
        loss * len(part)
        for loss, part in zip(step_losses, batches(n, candidate.batch_size), strict=True)
    )
    correct_total = float(context.sum(correct.cpu().reshape(1))[0])
    return step_losses, loss_sum / n, correct_total / n


def epoch_row(
    epoch: int,
    train_loss: float,
    train_accuracy: float,
    net: nn.Module,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
) -> dict:
    """The epoch's History row, with the validation of ``net`` as it stands."""
    val_loss, val_correct = evaluate_logits(net, x_val, y_val)
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_correct / len(y_val),
        "val_correct": val_correct,
    }


def draw(
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    candidate: TorchCandidate,
    generator: torch.Generator,
    context: distributed.Context,
    scale: tuple[float, float] = (0.0, 1.0),
):
    """The rows ``idx`` of (x, y), jittered (drawn for the whole batch, so that every rank
    draws the same) and cut to this rank's part of the batch."""
    # index_select, not x[idx]: the same rows, without advanced indexing's overhead.
    rows = idx.to(x.device)
    xb, yb = x.index_select(0, rows), y.index_select(0, rows)
    if candidate.augment.enabled:
        xb = augment(xb, candidate.augment, generator, scale)
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


def train_logreg(candidate: LogReg, data: Data, seed: int, net: nn.Module | None = None):
    """scikit-learn multinomial logistic regression; returns (fitted model, its History,
    the equivalent linear network: ``net``, models.build's for ``candidate``, filled in, or a new
    one)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=candidate.C, max_iter=candidate.max_iter, random_state=seed)
    x_train = data.x_train.flatten(1).numpy()
    clf.fit(x_train, data.y_train.numpy())
    # Softmax of x @ coef.T + intercept is exactly predict_proba: one Linear layer.
    net = net if net is not None else models.build(candidate)
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
