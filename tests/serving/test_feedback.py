"""POST /feedback through the service's ASGI app: a correction is stored, on disk, as sent;
a bad one (a label of 12, a digit of the wrong shape or values, a body too large, not
JSON) gets a 4xx with a JSON body and a flood gets 429, and none of them touches what is
stored."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pipeline.stages import feedback as feedback_stage
from serving import feedback, served_log


def stored(folder: Path) -> list[dict]:
    return feedback.read(folder)


def test_a_correction_is_stored_as_sent_and_bad_ones_change_nothing(
    client, feedback_dir: Path, test_digits
) -> None:
    digit = test_digits[0][0]  # (28, 28) uint8
    before = len(stored(feedback_dir))
    answer = client.post("/feedback", json={"label": 3, "digit": digit.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] is True
    items = stored(feedback_dir)
    assert len(items) == before + 1
    (item,) = [item for item in items if item["id"] == answer.json()["id"]]
    assert item["label"] == 3
    np.testing.assert_array_equal(item["pixels"], digit)

    bad = {
        "a label of 12": ({"label": 12, "digit": digit.tolist()}, 400, "label"),
        "no label": ({"digit": digit.tolist()}, 400, "label"),
        "27 rows": ({"label": 1, "digit": digit[:27].tolist()}, 400, "digit"),
        "a grey level of 300": (
            {"label": 1, "digit": [[300] * 28, *digit[1:].tolist()]},
            400,
            "digit",
        ),
    }
    for what, (body, status, field) in bad.items():
        answer = client.post("/feedback", json=body)
        assert answer.status_code == status, (what, answer.text)
        assert field in answer.text, (what, answer.json())
    too_big = client.post(
        "/feedback",
        content=b"[" + b"0," * 20_000 + b"0]",
        headers={"Content-Type": "application/json"},
    )
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    png = client.post("/feedback", content=b"\x89PNG\r\n", headers={"Content-Type": "image/png"})
    assert png.status_code == 415 and "error" in png.json()
    assert len(stored(feedback_dir)) == before + 1


def test_a_correction_by_answer_id_is_stored_and_bad_ones_are_refused(
    client, feedback_dir: Path, test_digits
) -> None:
    digits = test_digits[0][:3]
    answer = client.post("/predict", json={"images": digits.tolist()}).json()
    assert len(answer["answer_id"]) == 16
    image = client.post("/predict_image", content=b"", headers={"Content-Type": "image/png"})
    assert image.status_code == 400  # refused: no answer, so no id
    before = len(stored(feedback_dir))
    sent = client.post("/feedback", json={"label": 5, "answer_id": answer["answer_id"], "index": 2})
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"stored": True, "id": answer["answer_id"]}
    (item,) = [item for item in stored(feedback_dir) if item.get("answer") == answer["answer_id"]]
    assert (item["index"], item["label"], item["pixels"]) == (2, 5, None)
    bad = {
        "not an id": {"label": 5, "answer_id": "../../etc/passwd"},
        "an index past the limit": {"label": 5, "answer_id": "0" * 16, "index": 10_000},
        "both the digit and an id": {
            "label": 5, "answer_id": "0" * 16, "digit": digits[0].tolist(),
        },
        "neither": {"label": 5},
    }  # fmt: skip
    for what, body in bad.items():
        refused = client.post("/feedback", json=body)
        assert refused.status_code == 400, (what, refused.text)
    assert len(stored(feedback_dir)) == before + 1


def test_the_feedback_stage_finds_a_corrected_answers_digit_in_the_served_log(
    tmp_path: Path, test_digits
) -> None:
    digits = test_digits[0][:3]  # (3, 28, 28) uint8
    log = served_log.ServedLog("mnist-classifier:t", tmp_path / "served", max_bytes=2**20)
    pixels = digits[:, None].astype(np.float32) / 255  # (3, 1, 28, 28), as the service has it
    answer = log.record("/predict", pixels, np.eye(10, dtype=np.float32)[:3])
    log.close()
    store = feedback.FeedbackStore(tmp_path / "store", max_bytes=2**20)
    store.add_by_answer(7, answer, 2)
    store.add_by_answer(1, answer, 5)  # no such digit in that answer
    store.add_by_answer(1, "0" * 16, 0)  # no such answer
    store.add(4, digits[0])
    found, unresolved = feedback_stage.stored(tmp_path / "store", tmp_path / "served")
    assert unresolved == 2 and [label for _, label in found] == [7, 4]
    np.testing.assert_array_equal(found[0][0], digits[2])


def test_a_flood_of_corrections_gets_429_and_loses_nothing_accepted(
    client, feedback_dir: Path, test_digits
) -> None:
    per_minute = sys.modules["serving.service"].FEEDBACK_PER_MINUTE  # the fixture's reload
    time.sleep(2 * 60 / per_minute)  # the tests before spent the bucket: two tokens back
    before = len(stored(feedback_dir))
    statuses = [
        client.post("/feedback", json={"label": 7, "digit": d.tolist()}).status_code
        for d in test_digits[0][:40]
    ]
    assert set(statuses) == {200, 429}, statuses
    assert statuses[0] == 200 and statuses[-1] == 429
    refused = client.post("/feedback", json={"label": 7, "digit": test_digits[0][0].tolist()})
    assert refused.status_code == 429 and "wait" in refused.json()["error"]
    assert len(stored(feedback_dir)) == before + statuses.count(200)
