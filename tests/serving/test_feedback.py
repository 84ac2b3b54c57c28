"""POST /feedback through the service's ASGI app: a correction is stored, on disk, as sent;
a bad one (a label of 12, a digit of the wrong shape or values, a body too large, not
JSON) gets a 4xx with a JSON body and a flood gets 429, and none of them touches what is
stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving import feedback


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


def test_a_flood_of_corrections_gets_429_and_loses_nothing_accepted(
    client, feedback_dir: Path, test_digits
) -> None:
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
