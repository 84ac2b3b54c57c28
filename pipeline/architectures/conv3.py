"""Our networks: three convolution stages with batch norm, then a linear read-out
(conv3_linear) or a dense layer of 128 (conv3_dense)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from pipeline.architectures import register
from pipeline.params import Fraction, PosInt, TorchCandidate


class Conv3(TorchCandidate):
    """The three stages' settings (no micro_batch: batch norm's statistics must come from
    the whole batch)."""

    channels: Annotated[list[PosInt], Field(min_length=3, max_length=3)]  # widths w1-w2-w3
    # "pool": the first 5x5 convolution runs at 28x28 and is max-pooled to 14x14;
    # "stride": it runs at stride 2 straight to 14x14, a quarter of the work.
    first_layer: Literal["pool", "stride"]
    dropout: Fraction = 0.0


class Conv3Linear(Conv3):
    arch: Literal["conv3_linear"]


class Conv3Dense(Conv3):
    arch: Literal["conv3_dense"]


def conv3_stages(candidate: Conv3, ceil_last: bool) -> tuple[list[nn.Module], int]:
    """Three conv stages of widths ``candidate.channels`` (w1, w2, w3), each pooled before
    its batch norm (the first, with ``first_layer`` "stride", strided instead), then
    flattened: (B, 1, 28, 28) -> (B, features); returns the layers and the number of
    features, w3 x 3 x 3 (w3 x 4 x 4 with ``ceil_last``).

    Pooling straight after each convolution runs batch norm and ReLU on a quarter of the
    pixels; on a CPU those elementwise ops cost about as much as the convolutions.
    """
    w1, w2, w3 = candidate.channels
    side = 4 if ceil_last else 3
    if candidate.first_layer == "pool":  # (B, w1, 28, 28), then pooled
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


@register(Conv3Linear, cnn=True)
def conv3_linear(candidate: Conv3Linear) -> nn.Sequential:
    """Three pooled conv stages and a linear read-out: the cheapest to train."""
    convs, features = conv3_stages(candidate, ceil_last=False)
    return nn.Sequential(
        *convs,
        *([nn.Dropout(candidate.dropout)] if candidate.dropout else []),
        nn.Linear(features, 10),
    )


@register(Conv3Dense, cnn=True)
def conv3_dense(candidate: Conv3Dense) -> nn.Sequential:
    """The same three stages (the last pooled with ceil, 4x4) and a dense head of 128.

    Its accuracy comes from training (augmentation, label smoothing, a one-cycle
    schedule); its size from inference cost, which promotion's serving budget bounds.
    """
    convs, features = conv3_stages(candidate, ceil_last=True)
    return nn.Sequential(
        *convs,
        # No batch norm here: on (B, 128) it would fail on a last batch of one image.
        nn.Linear(features, 128),
        nn.ReLU(),  # (B, 128)
        nn.Dropout(candidate.dropout),
        nn.Linear(128, 10),
    )
