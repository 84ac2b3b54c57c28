"""The record of what was served (serving/served_log.py), from a real `bentoml serve`: each
answered digit as the model saw it with its answer, bounded by its cap, kept across a
restart, and nothing at all with the switch off."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.mnist import REPO
from harness.serve import bentoml_serve
from serving import served_log
from tests.serving.images import render

pytestmark = pytest.mark.slow


def serve(model_tag: str, bentoml_home: Path, folder: Path, log_path: Path, **env: str):
    return bentoml_serve(
        "serving.service:MNISTClassifier",
        env={
            **os.environ,
            "MNIST_WORKERS": "1",
            "BENTOML_HOME": str(bentoml_home),
            "MNIST_MODEL_TAG": model_tag,
            "MNIST_SERVED_LOG_DIR": str(folder),
            **env,
        },
        cwd=REPO,
        log_path=log_path,
        timeout=90,
    )


def test_the_served_log_keeps_what_was_answered_under_its_cap_across_a_restart(
    model_tag: str, bentoml_home: Path, tmp_path: Path, test_digits
) -> None:
    digits = test_digits[0]  # (N, 28, 28) uint8
    folder = tmp_path / "served"
    cap = 2**20
    with serve(
        model_tag, bentoml_home, folder, tmp_path / "a.log", MNIST_SERVED_LOG_MAX_MB="1"
    ) as s:
        five = httpx.post(f"{s.url}/predict", json={"images": digits[:5].tolist()}).json()
        image = httpx.post(
            f"{s.url}/predict_image",
            content=render(digits[5]),
            headers={"Content-Type": "image/png"},
        ).json()
    frame = served_log.read(folder)  # the server stopped: its writer wrote what it queued
    assert frame["endpoint"].tolist() == ["/predict"] * 5 + ["/predict_image"]
    assert set(frame["model"]) == {model_tag}
    assert frame["label"].tolist() == five["labels"] + [image["label"]]
    np.testing.assert_array_equal(served_log.pixels_of(frame)[:5], digits[:5])
    np.testing.assert_array_equal(served_log.pixels_of(frame)[5], image["preprocessed"])
    np.testing.assert_allclose(
        served_log.probabilities_of(frame),
        five["probabilities"] + [image["probabilities"]],
        atol=1e-6,
    )
    assert frame["time"].is_monotonic_increasing

    # A restarted server appends; a flood of digits rotates the files within the cap.
    many = np.concatenate([digits] * (4000 // len(digits) + 1))[:4000]
    with (
        serve(
            model_tag, bentoml_home, folder, tmp_path / "b.log", MNIST_SERVED_LOG_MAX_MB="1"
        ) as s,
        httpx.Client(base_url=s.url) as http,
    ):
        for part in np.split(many, 80):  # 80 answers of 50 digits, about 4 MiB of lines
            assert http.post("/predict", json={"images": part.tolist()}).is_success
    files = served_log.files(folder)
    assert 1 < len(files) <= served_log.ROTATED_FILES + 1
    answer = 1.4 * many.nbytes / 80  # a line: base64 of one answer's pixels and more
    assert sum(path.stat().st_size for path in files) <= cap + answer
    frame = served_log.read(folder)
    assert 500 < len(frame) < len(many)  # the oldest lines went, the newest stayed
    np.testing.assert_array_equal(served_log.pixels_of(frame)[-100:], many[-100:])


def test_the_switch_turns_the_record_off(service, served_log_dir: Path, test_digits) -> None:
    import serving.service

    def size() -> int:
        service.served.write()  # what it keeps, now rather than at its next turn
        return sum(path.stat().st_size for path in served_log.files(served_log_dir))

    before = size()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serving.service, "SERVED_LOG", False)
        asyncio.run(service.predict(images=test_digits[0][:3].tolist()))
    assert size() == before
    asyncio.run(service.predict(images=test_digits[0][:1].tolist()))  # on: the record grows
    assert 0 < size() - before < 2000  # one digit's line
