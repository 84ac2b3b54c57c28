"""One prediction function for evaluate, MLflow, ONNX and the service.

In: a trained network and the normalisation stats of its training data. Out: a
``Predictor``, pixels in [0, 1] (B, 1, 28, 28) -> probabilities (B, 10), with
standardisation and test-time augmentation inside, so every consumer feeds the same raw
pixels. ``load_predictor`` rebuilds one from a candidate and its safetensors weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline import dataset, models
from pipeline.params import Candidate


class Predictor(nn.Module):
    """Pixels in [0, 1] (B, 1, 28, 28) -> probabilities (B, 10).

    ``tta`` > 0 averages the probabilities over the image and ``tta`` one-pixel shifts.
    ``temperature`` divides the logits before each softmax (pipeline/calibration.py fits
    it on validation; 1 leaves them as the network gives them).
    """

    SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))

    def __init__(
        self, net: nn.Module, mean: float, std: float, tta: int = 0, temperature: float = 1.0
    ):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))
        self.shifts = self.SHIFTS[:tta]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.from_standardised((pixels - self.mean) / self.std)

    def from_standardised(self, x: torch.Tensor) -> torch.Tensor:
        """The same probabilities from input already standardised (the training arrays)."""
        return self.from_views(self.views(x))

    def from_views(self, views: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, 10) from the views' logits (1 + tta, B, 10): each divided by
        the temperature, softmaxed, and averaged over the views."""
        return torch.softmax(views / self.temperature, dim=-1).mean(0)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits for the image and each of its shifts: (1 + tta, B, 10)."""
        shifted = [torch.roll(x, (dy, dx), dims=(2, 3)) for dy, dx in self.shifts]
        return torch.stack([self.net(view) for view in (x, *shifted)])


@torch.inference_mode()
def in_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``fn`` (a module, put in eval mode, or a method of one) over (N, ...) in batches:
    whatever ``fn`` returns (logits from a bare network, probabilities from a Predictor),
    concatenated on the CPU. Each batch moves to ``device`` (default: x's) first."""
    if isinstance(fn, nn.Module):
        fn.eval()
    device = device or x.device
    return torch.cat(
        [fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )


@torch.inference_mode()
def view_logits(predictor: Predictor, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """(V, N, 10): the network's logits for each view of standardised ``x`` (N, 1, 28, 28),
    the image and then its test-time shifts: what pipeline/calibration.py fits."""
    predictor.eval()
    batches = [predictor.views(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(batches, dim=1)


def make_predictor(
    candidate: Candidate,
    net: nn.Module,
    stats: dict,
    channels_last: bool = False,
    temperature: float = 1.0,
) -> Predictor:
    """The candidate's Predictor around ``net``; ``channels_last`` puts a CNN on oneDNN's
    fast path for batched CPU inference (the same function)."""
    if channels_last and candidate.is_cnn:
        net = net.to(memory_format=torch.channels_last)
    tta = candidate.tta if candidate.is_torch else 0
    return Predictor(net, stats["mean"], stats["std"], tta, temperature).eval()


def load_predictor(
    candidate: Candidate,
    weights: Path,
    stats: dict,
    channels_last: bool = False,
    temperature: float = 1.0,
) -> Predictor:
    """The Predictor of ``candidate`` with the weights a train stage wrote (and the
    temperature it fitted, from its calibration.json, for calibrated probabilities)."""
    net = models.build(candidate)
    net.load_state_dict(load_file(weights))
    return make_predictor(candidate, net, stats, channels_last, temperature)


def accuracy(
    predictor: Predictor, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> float:
    """The share of (N, 28, 28) uint8 ``images`` the predictor labels as ``labels``."""
    probs = in_batches(predictor, to_pixels(images), batch_size)
    return float((probs.argmax(1).numpy() == labels).mean())


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1]: what the service feeds."""
    return torch.from_numpy(dataset.unit_pixels(images)).unsqueeze(1)
