"""Probabilities that mean what they say: temperature scaling and how well it worked.

In: a network's logits on the validation split, (V, N, 10) for V views of each image (1,
or more with test-time shifts, whose probabilities are averaged), and their labels (N,).
Out: the temperature T that minimises the negative log-likelihood of the mean over views
of softmax(logits / T) (Guo et al., 2017, "On Calibration of Modern Neural Networks"),
fitted on validation only; the expected calibration error of any probabilities; and, for
a range of confidence thresholds, how many answers fall below each and how often those
below and above are right, from which the service's "unsure" threshold is chosen.

One scalar keeps every prediction's ranking (the label never changes), so accuracy is
exactly as before; only the confidence moves. Label smoothing, for one, leaves a network
under-confident (T < 1 sharpens it back).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15  # the usual number for ECE on 10-class image tasks
THRESHOLDS = tuple(round(0.3 + 0.05 * k, 2) for k in range(14))  # 0.30 .. 0.95
SEARCH = (0.05, 20.0)  # the temperatures searched, log-spaced ends


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(V, N, 10) logits -> (N, 10) float64: softmax(logits / T), averaged over views."""
    return torch.softmax(logits.double() / temperature, dim=-1).mean(0)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under ``probabilities``."""
    probs = probabilities(logits, temperature).clamp_min(1e-300)
    return F.nll_loss(probs.log(), labels.long()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising validation NLL, by golden-section search on log T (the
    NLL is convex in 1/T, so unimodal along log T): deterministic, no optimiser state."""
    low, high = math.log(SEARCH[0]), math.log(SEARCH[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(48):  # 0.618x a step: the interval ends far below a float32's resolution
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, labels, math.exp(b))
    return round(math.exp((low + high) / 2), 6)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by
    the bin's share of the answers: 0 when "90 % sure" is right 90 % of the time."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    right = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(right[members].mean() - confidence[members].mean())
    return float(error)


def thresholds(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """For each of THRESHOLDS: the share of answers whose top probability is below it
    ("unsure"), and the accuracy of those below and of those at or above it."""
    confidence, right = probs.max(1), probs.argmax(1) == labels
    rows = []
    for threshold in THRESHOLDS:
        below = confidence < threshold
        rows.append(
            {
                "threshold": threshold,
                "unsure_share": float(below.mean()),
                "unsure_accuracy": float(right[below].mean()) if below.any() else None,
                "sure_accuracy": float(right[~below].mean()) if (~below).any() else None,
            }
        )
    return rows


def tempered(clf: Any, temperature: float) -> Any:
    """A copy of a fitted multinomial logistic regression whose predict_proba is
    softmax(logits / temperature): its weights and intercepts divided by it."""
    scaled = copy.deepcopy(clf)
    scaled.coef_ = clf.coef_ / temperature
    scaled.intercept_ = clf.intercept_ / temperature
    return scaled


def report(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """calibration.json: the fitted temperature, validation NLL and ECE before and after,
    and the thresholds table of the calibrated probabilities."""
    temperature = fit_temperature(logits, labels)
    before = probabilities(logits, 1.0).numpy()
    after = probabilities(logits, temperature).numpy()
    y = labels.numpy()
    return {
        "temperature": temperature,
        "fitted_on": "validation",
        "val_nll_before": nll(logits, labels, 1.0),
        "val_nll_after": nll(logits, labels, temperature),
        "val_ece_before": expected_calibration_error(before, y),
        "val_ece_after": expected_calibration_error(after, y),
        "thresholds": thresholds(after, y),
    }
