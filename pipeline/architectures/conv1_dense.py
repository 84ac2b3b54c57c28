"""R2's network: one 3x3 convolution of 28 maps, max-pool, a dense layer of 128."""

from __future__ import annotations

from typing import Literal

from torch import nn

from pipeline.architectures import register
from pipeline.params import PosInt, TorchCandidate


class Conv1Dense(TorchCandidate):
    arch: Literal["conv1_dense"]
    micro_batch: PosInt | None = None  # as for an MLP; there is no batch norm to disturb


@register(Conv1Dense, cnn=True)
def conv1_dense(_candidate: Conv1Dense) -> nn.Sequential:
    """Conv 28@3x3 valid -> ReLU -> maxpool 2 -> FC 128 -> ReLU -> FC 10.

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
