"""Drift, both ways: held-back MNIST digits raise no alarm; the same digits inverted, noisy,
rotated or on a grey background do. First the tests themselves (pipeline/drift.py) on a
real classifier's probabilities, then the DVC stage on a served-input log written in the
service's own format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from pipeline import drift

ALPHA = 0.001  # params.yaml's drift.alpha

SHIFTS = {
    "inverted": lambda d: 255 - d,
    "noisy": lambda d: np.clip(d + np.random.default_rng(3).normal(0, 40, d.shape), 0, 255),
    "rotated 30 degrees": lambda d: np.stack(
        [ndimage.rotate(x, 30, reshape=False, order=1) for x in d]
    ),
    "grey background": lambda d: np.maximum(d, 60),
}


@pytest.fixture(scope="module")
def classifier(mnist):
    """A real digit classifier (logistic regression on 3,000 training digits) and 1,000
    other training digits, drawn at random, as the reference: not the model the pipeline
    serves, but a model, whose probabilities move as a served one's do."""
    from sklearn.linear_model import LogisticRegression

    images, labels = mnist[0], mnist[1]
    model = LogisticRegression(max_iter=200).fit(
        images[:3000].reshape(3000, -1) / 255, labels[:3000]
    )

    def probabilities(digits: np.ndarray) -> np.ndarray:
        return model.predict_proba(digits.reshape(len(digits), -1) / 255)

    reference = images[
        3000 + np.random.default_rng(0).choice(len(images) - 3000, 1000, replace=False)
    ]
    return probabilities, reference, probabilities(reference)


def held_back(mnist, seed: int, size: int = 500) -> np.ndarray:
    """Test digits drawn at random: the test file's two halves come from different groups
    of writers, so a run of consecutive digits is itself a shifted stream."""
    test = mnist[2]
    return test[np.random.default_rng(seed).choice(len(test), size, replace=False)]


def compare(classifier, window: np.ndarray) -> drift.Comparison:
    probabilities, reference, reference_probabilities = classifier
    return drift.compare(
        reference,
        reference_probabilities,
        window,
        probabilities(window),
        alpha=ALPHA,
        components=20,
        seed=0,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_back_digits_raise_no_alarm(classifier, mnist, seed: int) -> None:
    result = compare(classifier, held_back(mnist, seed))
    assert not result.drift, result
    assert result.outputs.p_value >= ALPHA and result.inputs.p_value >= ALPHA
    assert result.window_digits == 500 and result.reference_digits == 1000


@pytest.mark.parametrize("shift", SHIFTS)
def test_shifted_digits_raise_the_alarm(classifier, mnist, shift: str) -> None:
    window = SHIFTS[shift](held_back(mnist, 1).astype(np.float64)).astype(np.uint8)
    result = compare(classifier, window)
    assert result.drift, result
    assert result.inputs.drift  # the pixels moved, whatever the model makes of them


@pytest.mark.slow
def test_the_stage_reads_the_served_log_and_gives_its_verdict(
    pipeline_project, pipeline_store
) -> None:
    """In the pipeline project: no log is no verdict; 400 held-back digits served by the
    packaged model are no drift; the same digits inverted are drift, a report and a
    Prometheus verdict, and exit 3 with --fail-on-drift."""
    from serving.served_log import ServedLog

    project = pipeline_project
    out = pipeline_store / "reports/drift"
    first = json.loads((out / "drift.json").read_text())
    assert first["drift"] is None and "no digits" in first["reason"]

    import onnxruntime

    model = pipeline_store / "reports/package/model.onnx"
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    served_by = json.loads((pipeline_store / "reports/package/bento.json").read_text())["model"]
    test = np.load(pipeline_store / "data/split/test.npz")["images"]
    digits = test[np.random.default_rng(0).permutation(len(test))[:400]]

    def clear() -> None:
        for old in (pipeline_store / "served_log").glob("answers-*"):
            old.unlink()

    def serve(window: np.ndarray) -> None:
        clear()
        log = ServedLog(served_by, pipeline_store / "served_log", 2**26)
        pixels = (window.astype(np.float32) / 255)[:, None]
        for part in np.array_split(pixels, 40):  # 40 answers of 10 digits
            log.record("/predict", part, session.run(None, {"images": part})[0])
        log.write()

    serve(digits)
    project.run("dvc", "repro", "drift")
    clean = json.loads((out / "drift.json").read_text())
    assert clean["drift"] is False and clean["window_digits"] == 400
    assert "mnist_drift_detected 0" in (out / "drift.prom").read_text()

    serve(255 - digits)
    project.run("dvc", "repro", "drift")
    shifted = json.loads((out / "drift.json").read_text())
    assert shifted["drift"] is True and shifted["outputs"]["drift"] and shifted["inputs"]["drift"]
    assert "**Drift**" in (out / "report.md").read_text()
    assert "mnist_drift_detected 1" in (out / "drift.prom").read_text()
    command = [
        sys.executable, "-m", "pipeline.stages.drift", "--served", "served_log",
        "--model", "reports/package/model.onnx", "--bento", "reports/package/bento.json",
        "--val", "data/split/val.npz", "--out", "reports/drift", "--fail-on-drift",
    ]  # fmt: skip
    failed = subprocess.run(command, cwd=pipeline_store, env=project.env, capture_output=True)
    assert failed.returncode == 3, failed.stderr
    clear()  # leave the project's log as the other tests found it: empty
    project.run("dvc", "repro", "drift")
