"""Have the digits the service answers drifted from what the model was made for?

In: a reference (validation digits and the served model's probabilities for them) and a
window of served digits (pixels and probabilities, from the served-input log). Out: a
`Comparison`: two tests, each with its statistic, p-value and verdict, and the overall
verdict (drift if either test rejects at ``alpha``).

- Outputs, per class: the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) of
  the probability of each digit, window against reference; ten tests, so each is held to
  ``alpha / 10`` (Bonferroni); the reported p-value is the smallest, times ten.
- Inputs, all pixels at once: the energy-distance two-sample test (hyppo.ksample.Energy,
  Székely & Rizzo) on the digits projected onto the reference's first principal
  components (scikit-learn's PCA, fitted on the reference alone). hyppo's fast p-value
  (a chi-square approximation of the permutation null) stays quick for thousands of
  digits, where the permutation test itself is far too slow for a routine check.

Why hyppo (docs/drift.md): alibi-detect requires numpy < 2 and frouros numpy < 2.2,
scipy < 1.15 and matplotlib < 3.10, none of which installs beside this project's torch
2.13 stack; Evidently's multivariate (embedding) drift answers yes or no from a bootstrap
quantile with no p-value, and brings a web server and 27 packages. hyppo is a maintained
library of multivariate two-sample tests with p-values, on numpy and scipy.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np

NUM_CLASSES = 10


@dataclass(frozen=True)
class Test:
    name: str
    statistic: float
    p_value: float
    drift: bool


@dataclass(frozen=True)
class Comparison:
    alpha: float
    outputs: Test
    outputs_per_class: list[dict]  # per digit: KS statistic, p-value, mean probability
    inputs: Test
    reference_digits: int
    window_digits: int

    @property
    def drift(self) -> bool:
        return self.outputs.drift or self.inputs.drift

    def as_dict(self) -> dict:
        return asdict(self) | {"drift": self.drift}


def compare_outputs(
    reference: np.ndarray, window: np.ndarray, alpha: float
) -> tuple[Test, list[dict]]:
    """KS test per class on (N, 10) probabilities, Bonferroni-corrected over the ten."""
    from scipy import stats

    per_class = []
    for digit in range(NUM_CLASSES):
        result = stats.ks_2samp(reference[:, digit], window[:, digit])
        per_class.append(
            {
                "digit": digit,
                "statistic": float(result.statistic),
                "p_value": float(result.pvalue),
                "reference_mean": float(reference[:, digit].mean()),
                "window_mean": float(window[:, digit].mean()),
            }
        )
    worst = min(per_class, key=lambda row: row["p_value"])
    p_value = min(1.0, worst["p_value"] * NUM_CLASSES)
    test = Test(
        name="Kolmogorov-Smirnov per class on the output probabilities (Bonferroni over 10)",
        statistic=worst["statistic"],
        p_value=p_value,
        drift=p_value < alpha,
    )
    return test, per_class


def project(reference: np.ndarray, window: np.ndarray, components: int, seed: int):
    """Both sets of (N, 28, 28) uint8 digits on the reference's principal components."""
    from sklearn.decomposition import PCA

    flat_reference = reference.reshape(len(reference), -1).astype(np.float32) / 255
    flat_window = window.reshape(len(window), -1).astype(np.float32) / 255
    pca = PCA(n_components=components, random_state=seed).fit(flat_reference)
    return pca.transform(flat_reference), pca.transform(flat_window)


def compare_inputs(
    reference: np.ndarray, window: np.ndarray, alpha: float, components: int, seed: int
) -> Test:
    """Energy-distance two-sample test on the digits' principal components."""
    # hyppo's fast p-value is numpy throughout; numba would first compile its helpers, a
    # long pause on the first check in a fresh environment, for no gain at these sizes and
    # the same results: run them as plain Python.
    os.environ.setdefault("NUMBA_DISABLE_JIT", "1")
    from hyppo.ksample import Energy

    x, y = project(reference, window, components, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # hyppo's note on few replications
        statistic, p_value = Energy().test(x, y, auto=True, random_state=seed)[:2]
    return Test(
        name=f"energy distance on {components} principal components of the pixels (hyppo)",
        statistic=float(statistic),
        p_value=float(p_value),
        drift=float(p_value) < alpha,
    )


def compare(
    reference_pixels: np.ndarray,
    reference_probabilities: np.ndarray,
    window_pixels: np.ndarray,
    window_probabilities: np.ndarray,
    *,
    alpha: float,
    components: int,
    seed: int,
) -> Comparison:
    """Both tests, window against reference: pixels (N, 28, 28) uint8, probabilities
    (N, 10)."""
    outputs, per_class = compare_outputs(reference_probabilities, window_probabilities, alpha)
    inputs = compare_inputs(reference_pixels, window_pixels, alpha, components, seed)
    return Comparison(
        alpha=alpha,
        outputs=outputs,
        outputs_per_class=per_class,
        inputs=inputs,
        reference_digits=len(reference_pixels),
        window_digits=len(window_pixels),
    )
