"""The model zoo: every network is built here from its candidate's params.

In: a candidate (pipeline.params: ``Mlp``, ``Conv1Dense``, ``Conv3Linear``,
``Conv3Dense`` or ``LogReg``). Out: an ``nn.Module`` mapping standardised images
(B, 1, 28, 28) to logits (B, 10); an ``Ensemble`` of several when ``members`` > 1.
A ``LogReg`` candidate gets the linear layer that scikit-learn's fitted model becomes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.params import Candidate, Conv1Dense, Conv3, LogReg, Mlp

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    # R3 wrote "softmax" for its hidden layer; we take it literally, over the features.
    "softmax": lambda: nn.Softmax(dim=1),
}


def mlp(c: Mlp) -> nn.Sequential:
    """784 -> c.hidden... -> 10, each hidden layer followed by c.activation."""
    layers: list[nn.Module] = [nn.Flatten()]  # (B, 784)
    width = 28 * 28
    for size in c.hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[c.activation]()]
        if c.dropout:
            layers.append(nn.Dropout(c.dropout))
        width = size
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def conv1_dense(c: Conv1Dense) -> nn.Sequential:
    """R2: conv 28@3x3 valid -> ReLU -> maxpool 2 -> FC 128 -> ReLU -> FC 10.

    Pooling runs before the ReLU: the same function (max and ReLU commute), with the
    ReLU and its backward on a quarter of the pixels.
    """
    return nn.Sequential(
        nn.Conv2d(1, 28, 3),  # (B, 28, 26, 26)
        nn.MaxPool2d(2, 2),  # (B, 28, 13, 13)
        nn.ReLU(),
        nn.Flatten(),  # (B, 4732)
        nn.Linear(28 * 13 * 13, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def conv3_stages(c: Conv3, ceil_last: bool) -> tuple[list[nn.Module], int]:
    """Three conv stages of widths ``c.channels`` (w1, w2, w3), each pooled before its
    batch norm (the first, with ``c.first_layer`` "stride", strided instead), then
    flattened: (B, 1, 28, 28) -> (B, features); returns the layers and the number of
    features, w3 x 3 x 3 (w3 x 4 x 4 with ``ceil_last``).

    Pooling straight after each convolution runs batch norm and ReLU on a quarter of the
    pixels; on a CPU those elementwise ops cost about as much as the convolutions.
    """
    w1, w2, w3 = c.channels
    side = 4 if ceil_last else 3
    if c.first_layer == "pool":  # (B, w1, 28, 28), then pooled
        first = [nn.Conv2d(1, w1, 5, padding=2, bias=False), nn.MaxPool2d(2)]
    else:  # 1 input channel at 28x28 is ONNX Runtime's least efficient convolution
        first = [nn.Conv2d(1, w1, 5, stride=2, padding=2, bias=False)]
    layers = [
        *first,
        nn.BatchNorm2d(w1),
        nn.ReLU(),  # (B, w1, 14, 14)
        nn.Conv2d(w1, w2, 3, padding=1, bias=False),  # (B, w2, 14, 14)
        nn.MaxPool2d(2),
        nn.BatchNorm2d(w2),
        nn.ReLU(),  # (B, w2, 7, 7)
        nn.Conv2d(w2, w3, 3, padding=1, bias=False),  # (B, w3, 7, 7): receptive field 20 px
        # (B, w3, side, side): floor drops the last row and column, ceil pools them alone
        nn.MaxPool2d(2, ceil_mode=ceil_last),
        nn.BatchNorm2d(w3),
        nn.ReLU(),
        nn.Flatten(),  # (B, w3 * side * side)
    ]
    return layers, w3 * side * side


def conv3_linear(c: Conv3) -> nn.Sequential:
    """Three pooled conv stages and a linear read-out: the cheapest to train."""
    convs, features = conv3_stages(c, ceil_last=False)
    return nn.Sequential(
        *convs,
        *([nn.Dropout(c.dropout)] if c.dropout else []),
        nn.Linear(features, 10),
    )


def conv3_dense(c: Conv3) -> nn.Sequential:
    """The same three stages (the last pooled with ceil, 4x4) and a dense head of 128.

    Its accuracy comes from training (augmentation, label smoothing, a one-cycle
    schedule); its size from inference cost, which promotion's serving budget bounds.
    """
    convs, features = conv3_stages(c, ceil_last=True)
    return nn.Sequential(
        *convs,
        # No batch norm here: on (B, 128) it would fail on a last batch of one image.
        nn.Linear(features, 128),
        nn.ReLU(),  # (B, 128)
        nn.Dropout(c.dropout),
        nn.Linear(128, 10),
    )


def logreg(_c: LogReg) -> nn.Sequential:
    """The linear layer whose softmax is scikit-learn's predict_proba: x @ coef.T + b."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


class PerImageContrast(nn.Module):
    """Each image's grey levels stretched so that its background (the median pixel: most
    of an MNIST frame is background) is 0 and its brightest pixel 1, clipped to [0, 1],
    then standardised with MNIST's pixel mean and deviation. A flat grey offset, a lower
    contrast or an exposure of any kind comes out as the digit on black. Invariant to
    any increasing affine change of its input, so it reads raw pixels and standardised
    ones alike. (B, 1, 28, 28) -> (B, 1, 28, 28)."""

    MEAN, STD = 0.1307, 0.3081  # MNIST's training pixels, as the network's input scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)  # (B, 784)
        # The lower median, by a sort (exports to ONNX as TopK): pixel 392 of 784.
        background = flat.sort(dim=1).values[:, flat.shape[1] // 2 - 1 : flat.shape[1] // 2]
        ink = flat.amax(dim=1, keepdim=True)
        stretched = ((flat - background) / (ink - background).clamp_min(1e-6)).clamp(0, 1)
        return ((stretched - self.MEAN) / self.STD).view_as(x)


class Ensemble(nn.Module):
    """Copies of one network, each from its own initial weights: (B, 1, 28, 28) -> the log
    of their averaged probabilities (B, 10), so that softmax gives back that average."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(net(x), dim=1) for net in self.nets])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.nets))


def members(net: nn.Module) -> list[nn.Module]:
    """An ensemble's networks, or ``[net]`` for a single one."""
    return list(net.nets) if isinstance(net, Ensemble) else [net]


class MemberLogits(nn.Module):
    """What training needs of a network: each member's logits, (B, 1, 28, 28) -> a tuple
    of (B, 10), one per member (one for a single network); given a tuple of inputs, one
    each. A module of its own, so that DistributedDataParallel sees the whole forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if isinstance(x, tuple):
            return tuple(m(xi) for m, xi in zip(members(self.net), x, strict=True))
        return tuple(member(x) for member in members(self.net))


BUILDERS = {
    "mlp": mlp,
    "conv1_dense": conv1_dense,
    "conv3_linear": conv3_linear,
    "conv3_dense": conv3_dense,
    "logreg": logreg,
}


def build(c: Candidate) -> nn.Module:
    """The network for candidate ``c`` (logits out; an ``Ensemble`` of ``c.members`` if
    more than one), initialised as ``c.init`` says; the caller seeds torch's generator."""
    if not c.is_torch:
        return BUILDERS[c.arch](c)
    nets = [BUILDERS[c.arch](c) for _ in range(c.members)]
    if c.input_norm == "per_image":
        # One flat Sequential, the stretch its first layer: the layers after it (and the
        # penultimate features, net[:-1]) are where they are without it.
        nets = [nn.Sequential(PerImageContrast(), *member) for member in nets]
    net = nets[0] if c.members == 1 else Ensemble(nets)
    if c.init == "glorot":  # Keras's defaults for Dense and Conv2D
        for layer in net.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return net


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: nn.Module) -> int:
    """Multiply-adds of the convolutions and linear layers for one image: what inference
    costs, and what ``promote.max_multiply_adds`` budgets."""
    total = 0

    def count(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):  # each output value: in/groups x kh x kw
            k_h, k_w = layer.kernel_size
            total += output.numel() * layer.in_channels // layer.groups * k_h * k_w
        else:
            total += layer.in_features * layer.out_features

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 1, 28, 28))
    finally:
        for hook in hooks:
            hook.remove()
    return total
