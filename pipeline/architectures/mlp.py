"""Fully connected networks (R1, R3, R4, R5): 784 -> hidden... -> 10."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from pipeline.architectures import register
from pipeline.params import Fraction, PosInt, TorchCandidate

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    # R3 wrote "softmax" for its hidden layer; we take it literally, over the features.
    "softmax": lambda: nn.Softmax(dim=1),
}


class Mlp(TorchCandidate):
    arch: Literal["mlp"]
    hidden: list[PosInt] = Field(min_length=1)
    activation: Literal["relu", "tanh", "sigmoid", "softmax"]
    dropout: Fraction = 0.0
    # Forward and backward each batch in parts of at most this many images: the same
    # update, with each part's activations in cache. null = the whole batch at once.
    micro_batch: PosInt | None = None


@register(Mlp)
def mlp(candidate: Mlp) -> nn.Sequential:
    """784 -> candidate.hidden... -> 10, each hidden layer followed by its activation."""
    layers: list[nn.Module] = [nn.Flatten()]  # (B, 784)
    width = 28 * 28
    for size in candidate.hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[candidate.activation]()]
        if candidate.dropout:
            layers.append(nn.Dropout(candidate.dropout))
        width = size
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)
