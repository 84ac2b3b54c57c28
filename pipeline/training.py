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

from pipeline import atomic, inference, models, optim
from pipeline.dataset import stratified_take
from pipeline.params import Augment, Candidate, LogReg, TorchCandidate


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


def load_data(folder: Path, candidate: Candidate, seed: int) -> Data:
    """The normalised train and val arrays, the training part cut to ``train_size``."""
    train, val = (atomic.read_npz(folder / f"{name}.npz") for name in ("train", "val"))
    x, y = train["images"], train["labels"]
    if candidate.train_size is not None:
        x, y = stratified_take(x, y, candidate.train_size, seed)
    return Data(
        torch.from_numpy(x),
        torch.from_numpy(y),
        torch.from_numpy(val["images"]),
        torch.from_numpy(val["labels"]),
    )


def augment(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
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
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # The border of an MNIST digit is background, so repeating it pads with background.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def make_optimizer(net: nn.Module, c: TorchCandidate, total_steps: int):
    """(optimizer, scheduler or None) for candidate ``c``."""
    if c.schedule == "constant":  # the same kernels as below, without torch.optim's costs
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
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
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
) -> History:
    """Mini-batch training; ``on_epoch(row)`` is called after each epoch's validation."""
    # Subnormal floats take the CPU's slow path; R3's hidden softmax over 784 units makes
    # many of them. Flushing them to zero changes nothing a float32 model can tell.
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if c.is_cnn else torch.contiguous_format
    net = net.to(memory_format=fmt)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / c.batch_size)
    opt, sched = make_optimizer(net, c, c.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
    # Only the architectures without batch norm have micro_batch.
    chunk = getattr(c, "micro_batch", None) or c.batch_size
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
            # index_select, not x[idx]: the same rows, without advanced indexing's overhead.
            xb, yb = data.x_train.index_select(0, idx), data.y_train.index_select(0, idx)
            if c.augment.enabled:
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
                loss = sum(loss_fn(z, yc) for z in outputs) / len(outputs) * (len(yc) / len(yb))
                loss.backward()
                step_loss += loss.item()
                correct += int((logits.argmax(1) == yc).sum())
            opt.step()
            if sched is not None:
                sched.step()
            history.steps.append(step_loss)
            loss_sum += step_loss * len(idx)
            bar.update()
            if len(history.steps) % 64 == 0:  # formatting the postfix every step is costly
                bar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}", refresh=False)
        val_loss, val_correct = evaluate_logits(net, data.x_val, data.y_val)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "val_loss": val_loss,
            "val_accuracy": val_correct / len(data.y_val),
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
