"""Every network is built here from its candidate's params, whatever its architecture.

In: a candidate (its architecture's params, pipeline/architectures/). Out: an
``nn.Module`` mapping standardised images (B, 1, 28, 28) to logits (B, 10): the
architecture's network, behind the per-image stretch if ``input_norm`` says so, an
``Ensemble`` of several when ``members`` > 1, initialised as ``init`` says. A ``LogReg``
candidate gets the linear layer that scikit-learn's fitted model becomes. Also: the
network's size and cost (``parameter_count``, ``multiply_adds``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline import architectures
from pipeline.params import Candidate


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


def build(candidate: Candidate) -> nn.Module:
    """The network for ``candidate`` (logits out; an ``Ensemble`` of ``members`` if more
    than one), initialised as ``init`` says; the caller seeds torch's generator."""
    network = architectures.get(candidate.arch).build
    if not candidate.is_torch:
        return network(candidate)
    nets = [network(candidate) for _ in range(candidate.members)]
    if candidate.input_norm == "per_image":
        # One flat Sequential, the stretch its first layer: the layers after it (and the
        # penultimate features, net[:-1]) are where they are without it.
        nets = [nn.Sequential(PerImageContrast(), *member) for member in nets]
    net = nets[0] if candidate.members == 1 else Ensemble(nets)
    if candidate.init == "glorot":  # Keras's defaults for Dense and Conv2D
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
