"""Temperature scaling and the calibration error, against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import calibration, inference


def sampled(rng, n: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, n, 10) and labels drawn from softmax(logits / temperature): the
    temperature that calibrates them is ``temperature``."""
    logits = torch.from_numpy(rng.normal(0, 4, (n, 10)))
    probs = torch.softmax(logits / temperature, 1).numpy()
    labels = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)  # one draw per row
    return logits[None], torch.from_numpy(labels)


@pytest.mark.parametrize("truth", [0.5, 2.0])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(rng, truth) -> None:
    logits, labels = sampled(rng, 20_000, truth)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(truth, rel=0.05)
    at = calibration.nll(logits, labels, fitted)
    assert at <= calibration.nll(logits, labels, fitted * 1.1)
    assert at <= calibration.nll(logits, labels, fitted / 1.1)


def test_calibration_error_is_zero_when_confidence_is_the_hit_rate(rng) -> None:
    logits, labels = sampled(rng, 20_000, 1.0)
    calibrated = torch.softmax(logits[0], 1).numpy()
    overconfident = torch.softmax(logits[0] * 3, 1).numpy()
    y = labels.numpy()
    assert calibration.expected_calibration_error(calibrated, y) < 0.02
    assert calibration.expected_calibration_error(overconfident, y) > 0.1
    assert calibration.expected_calibration_error(np.eye(10)[y], y) == 0.0


def test_report_lowers_validation_nll_and_lists_thresholds(rng) -> None:
    logits, labels = sampled(rng, 5_000, 2.0)
    report = calibration.report(logits, labels)
    assert report["val_nll_after"] < report["val_nll_before"]
    assert report["val_ece_after"] < report["val_ece_before"]
    shares = [row["unsure_share"] for row in report["thresholds"]]
    assert shares == sorted(shares) and 0 < shares[-1] <= 1
    assert [row["threshold"] for row in report["thresholds"]] == list(calibration.THRESHOLDS)


def test_the_predictor_divides_each_views_logits_by_its_temperature() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    pixels = torch.rand(8, 1, 28, 28)
    plain = inference.Predictor(net, 0.0, 1.0)
    warm = inference.Predictor(net, 0.0, 1.0, temperature=2.5)
    with torch.inference_mode():
        logits = net(pixels)
        assert torch.equal(plain(pixels), torch.softmax(logits, 1))  # 1: unchanged, bit for bit
        torch.testing.assert_close(warm(pixels), torch.softmax(logits / 2.5, 1))
        assert torch.equal(warm(pixels).argmax(1), plain(pixels).argmax(1))


def test_a_tempered_logistic_regression_answers_softmax_of_its_logits_over_t(rng) -> None:
    from sklearn.linear_model import LogisticRegression

    x = rng.normal(size=(300, 5))
    y = (x[:, 0] * 3 + rng.normal(size=300)).round().clip(-2, 2).astype(int) + 2
    clf = LogisticRegression(max_iter=200).fit(x, y)
    warm = calibration.tempered(clf, 2.0)
    logits = torch.from_numpy(clf.decision_function(x))
    np.testing.assert_allclose(warm.predict_proba(x), torch.softmax(logits / 2.0, 1).numpy())
    assert (warm.predict(x) == clf.predict(x)).all() and clf.coef_ is not warm.coef_
