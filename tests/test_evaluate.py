"""The evaluate stage's scores, against scikit-learn's definitions of the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline import inference, models
from pipeline.params import TrainParams, load_section
from pipeline.stages.evaluate import (
    confusion,
    penultimate,
    principal_components,
    score,
    write_pictures,
)


def test_per_class_scores_and_confusion_are_scikit_learns(rng) -> None:
    labels = rng.integers(0, 10, 3000)
    pred = np.where(rng.random(3000) < 0.8, labels, rng.integers(0, 10, 3000))
    pred[pred == 3] = 4  # a digit never predicted: precision 0, not a division by zero
    scored = score(np.eye(10)[pred], labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=range(10), zero_division=0
    )
    for d in range(10):
        assert scored["per_class"][str(d)] == {
            "precision": precision[d],
            "recall": recall[d],
            "f1": f1[d],
            "support": support[d],
        }
    assert scored["test_errors"] == int((pred != labels).sum())
    assert (confusion(labels, pred) == confusion_matrix(labels, pred, labels=range(10))).all()


def test_the_embedding_is_the_first_two_principal_components(rng) -> None:
    features = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    ours, theirs = principal_components(features), PCA(2).fit_transform(features)
    assert np.allclose(np.abs(ours), np.abs(theirs), atol=1e-8)  # the same axes, up to sign
    assert np.array_equal(ours, principal_components(features.copy()))


@pytest.mark.parametrize("name", ["cnn_compact", "cnn_sturdy"])
def test_pictures_for_a_network_with_and_without_its_own_input_stretch(name, tmp_path) -> None:
    """The embedding reads the features before the last layer and the weight picture the
    first layer, also when the network starts with the per-image stretch."""
    candidate = load_section(Path("params.yaml"), "train", TrainParams).candidate(name)
    torch.manual_seed(0)
    predictor = inference.Predictor(models.build(candidate), 0.1307, 0.3081)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    out = tmp_path / "out"
    out.mkdir()
    pixels = inference.to_pixels(images)
    assert penultimate(predictor, pixels).shape == (40, 128)  # the dense layer's units
    write_pictures(name, out, predictor, pixels, images, labels, labels, 16, 0)
    assert {p.name for p in out.iterdir()} >= {"weights.png", "embedding.png", "confusion.png"}
