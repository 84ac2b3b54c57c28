"""Depth 1: the service class called as plain Python (model loading, predict paths,
model_info, refusals), checked against ONNX Runtime run directly on the same model; and
/predict_image against /predict on the same digits, sent plainly or as photos on paper."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness.mnist import load_mnist
from pipeline import photos
from serving.contract import INFO_FILE
from tests.serving.fixtures import direct_onnx
from tests.serving.images import image_variants, render


def test_predict_is_accurate_and_equals_onnx_runtime_exactly(
    service: Any, model_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digits, labels = test_digits
    result = asyncio.run(service.predict(images=digits.tolist()))
    probabilities = np.array(result.probabilities, dtype=np.float32)
    assert probabilities.shape == (300, 10)
    np.testing.assert_array_equal(probabilities, direct_onnx(model_path, digits))
    np.testing.assert_array_equal(result.labels, probabilities.argmax(axis=1))
    assert np.mean(np.array(result.labels) == labels) > 0.85  # chance is 0.1
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_bulk_request_runs_on_all_cores_with_the_same_answers(
    service: Any,
    model_path: Path,
    test_digits: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = service.runner.session
    cores = os.cpu_count() or 1
    together = threading.Barrier(cores, timeout=30)  # breaks unless all parts run at once
    rows_run: list[int] = []

    class Spy:
        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            rows = len(next(iter(feeds.values())))
            rows_run.append(rows)
            if rows > 5:
                together.wait()
            return session.run(outputs, feeds)

    monkeypatch.setattr(service.runner, "session", Spy())
    asyncio.run(service.predict(images=test_digits[0][:5].tolist()))
    assert rows_run == [5]  # a small request runs whole
    digits = np.resize(
        test_digits[0], (service.runner.bulk_rows, 28, 28)
    )  # the 300 digits, repeated
    result = asyncio.run(service.predict(images_b64=base64.b64encode(digits.tobytes()).decode()))
    assert sorted(rows_run[1:]) == sorted(len(part) for part in np.array_split(digits, cores))
    probabilities = np.array(result.probabilities, dtype=np.float32)
    # Parts of other sizes than one whole run may differ in a float's last bits.
    np.testing.assert_allclose(probabilities, direct_onnx(model_path, digits), atol=1e-6)
    np.testing.assert_array_equal(result.labels, probabilities.argmax(axis=1))


def test_every_encoding_of_the_same_digits_gives_the_same_answer(
    service: Any, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digits = test_digits[0][:50]
    answers = [
        asyncio.run(service.predict(images=digits.tolist())),
        asyncio.run(service.predict(images=digits.reshape(50, 784).tolist())),
        asyncio.run(service.predict(images=(digits / 255).tolist(), dtype="float32")),
        asyncio.run(service.predict(images_b64=base64.b64encode(digits.tobytes()).decode())),
        asyncio.run(
            service.predict(
                images_b64=base64.b64encode((digits / 255).astype("<f4").tobytes()).decode(),
                dtype="float32",
            )
        ),
    ]
    assert len({answer.answer_id for answer in answers}) == len(answers)  # each its own id
    for answer in answers[1:]:
        assert answer.model_copy(update={"answer_id": None}) == answers[0].model_copy(
            update={"answer_id": None}
        )


def test_predict_image_reads_digits_as_people_send_them(
    service: Any, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    digits, labels = test_digits
    right = total = 0
    for digit, label in zip(digits[:20], labels[:20], strict=True):
        for data in image_variants(digit).values():
            result = asyncio.run(service.predict_image(data))
            assert len(result.probabilities) == 10 and result.label == int(
                np.argmax(result.probabilities)
            )
            preprocessed = np.array(result.preprocessed)
            assert (
                preprocessed.shape == (28, 28)
                and preprocessed.min() >= 0
                and preprocessed.max() == 255
            )
            right += result.label == label
            total += 1
    assert right / total > 0.8


def labels_of(service: Any, images: list[bytes]) -> np.ndarray:
    return np.array([asyncio.run(service.predict_image(data)).label for data in images])


def png_of(digit: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_image_on_plain_mnist_pngs_stays_at_the_models_accuracy(service: Any) -> None:
    """Differential: 500 test digits through /predict_image, as their own 28x28 PNG and
    drawn larger on white paper, against /predict on the same arrays. Finding the digit
    on a page must not cost accuracy on clean images."""
    digits, labels = load_mnist("t10k", 500)
    as_arrays = np.mean(
        np.array(asyncio.run(service.predict(images=digits.tolist())).labels) == labels
    )
    for encode in (png_of, render):
        as_images = np.mean(labels_of(service, [encode(digit) for digit in digits]) == labels)
        assert as_images >= as_arrays - 0.01, (encode.__name__, as_images, as_arrays)


@pytest.mark.parametrize("kind", ["photo", "ruled", "squared", "gradient", "noise"])
def test_photos_of_digits_on_paper_are_read_about_as_well_as_the_arrays(
    service: Any, test_digits: tuple[np.ndarray, np.ndarray], kind: str
) -> None:
    """A digit on lined or squared paper, under uneven light, noisy, or all of it in a
    phone photo (pipeline/photos.py): found on the page and recognised."""
    digits, labels = test_digits[0][:100], test_digits[1][:100]
    as_arrays = np.mean(
        np.array(asyncio.run(service.predict(images=digits.tolist())).labels) == labels
    )
    as_photos = np.mean(labels_of(service, photos.render(kind, digits, seed=0)) == labels)
    assert as_photos >= as_arrays - 0.1, (as_photos, as_arrays)


def test_model_info_passes_info_json_through(
    service: Any, model_path: Path, model_tag: str
) -> None:
    info = asyncio.run(service.model_info())
    stored = json.loads((model_path / INFO_FILE).read_text())
    assert {key: info[key] for key in stored} == stored
    assert info["bentoml_tag"] == model_tag
    assert info["limits"]["max_images_per_request"] == 10_000


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "exactly one of"),
        ({"images": [[0] * 784], "images_b64": "AAAA"}, "exactly one of"),
        ({"images": [[0] * 783]}, "expected [N, 28, 28] or [N, 784]"),
        ({"images_b64": "%%%"}, "not valid base64"),
    ],
)
def test_bad_input_raises_a_validation_error_naming_the_problem(
    service: Any, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        asyncio.run(service.predict(**arguments))


def test_what_the_worker_loaded_is_frozen_out_of_garbage_collection(service: Any) -> None:
    # A full collection over these pauses the event loop for every request in flight.
    assert gc.get_freeze_count() > 10_000
