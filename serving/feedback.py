"""Corrections from the people the service answers: a digit, and what it really was.

In: what `POST /feedback` accepted (serving/service.py validates it first): a label 0-9
and either the 28x28 grey levels the model saw (the ``preprocessed`` image of a
/predict_image answer; light ink on black, as MNIST) or the ``answer_id`` of an answer
and the digit's ``index`` in it (the pixels are in the served-input log,
serving/served_log.py, where the feedback stage finds them). Out: one JSON line per
correction, appended to ``feedback-w<worker>.jsonl`` in a folder and flushed to disk
(fsync) before the answer, so an acknowledged correction survives a crash:

    {"time": "YYYY-MM-DDTHH:MM:SS.ffffff+00:00",   # when it arrived (UTC)
     "label": 3,                                    # what the digit really is
     "model": "mnist-classifier:abc123",            # the model that was corrected
     "id": "9f2c...",                               # sha256 of the pixels, 16 hex digits
     "pixels": "..."}                               # base64 of the 784 grey levels (uint8)

or, for a correction by answer id, ``"answer": "5f0c...", "index": 0`` in place of
``id`` and ``pixels``.

Nothing about the sender is kept. FeedbackGate, an ASGI middleware in front of the API,
bounds what reaches the store: each worker takes at most ``per_minute`` corrections (a
token bucket, bursts of a sixth of that), more get 429, and once a worker's file is at
its cap every correction gets 507 until the pipeline has imported and cleared it; both
with a JSON body, neither touching what is stored.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import threading
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.guard import drain, reply
from serving.served_log import json_lines

FILE_STEM = "feedback-w"


class TokenBucket:
    """``per_minute`` events a minute on average, at most ``burst`` at once."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class FeedbackStore:
    """One worker's corrections file in ``folder``, at most ``max_bytes`` long."""

    LINE_BYTES = 1300  # a correction's line, about

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.model = ""  # set by the service once its model is loaded
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path(self) -> Path:
        from serving.bentoml_adapter import worker_index  # BentoML: only in the service

        return self.folder / f"{FILE_STEM}{worker_index()}.jsonl"

    def full(self) -> bool:
        """Whether this worker's file has no room for another correction."""
        path = self.path()
        return path.exists() and path.stat().st_size + self.LINE_BYTES > self.max_bytes

    def add(self, label: int, digit: np.ndarray) -> str:
        """Store one correction (``digit`` (28, 28) uint8), on disk when this returns; its
        id."""
        pixels = np.ascontiguousarray(digit, dtype=np.uint8)
        identity = hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
        self._append(label, {"id": identity, "pixels": base64.b64encode(pixels.tobytes()).decode()})
        return identity

    def add_by_answer(self, label: int, answer: str, index: int) -> str:
        """Store one correction of the ``index``-th digit of served answer ``answer``, on
        disk when this returns; the answer's id."""
        self._append(label, {"answer": answer, "index": int(index)})
        return answer

    def _append(self, label: int, digit: dict) -> None:
        line = json.dumps(
            {
                "time": datetime.datetime.now(datetime.UTC).isoformat(),
                "label": int(label),
                "model": self.model,
                **digit,
            }
        )
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.path().open("a", encoding="ascii") as file:
                file.write(line + "\n")
                file.flush()
                os.fsync(file.fileno())


class FeedbackGate:
    """ASGI middleware: POST ``path`` gets 429 over ``per_minute`` (a token bucket per
    worker) and 507 while ``store`` is full, each with a JSON body, before the API reads
    the request; every other request passes untouched."""

    def __init__(self, app: ASGIApp, *, path: str, store: FeedbackStore, per_minute: int):
        self.app = app
        self.path = path
        self.store = store
        self.bucket = TokenBucket(per_minute, burst=max(1, per_minute // 6))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            if not self.bucket.take():
                await drain(receive)
                await reply(
                    send,
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "too many corrections at once: wait a few seconds and send again",
                    "rate_limited",
                )
                return
            if self.store.full():
                await drain(receive)
                await reply(
                    send,
                    HTTPStatus.INSUFFICIENT_STORAGE,
                    "the feedback store is full until the pipeline imports it",
                    "store_full",
                )
                return
        await self.app(scope, receive, send)


def read(folder: str | Path) -> list[dict]:
    """Every correction in the store at ``folder``, file by file (a line cut short by a
    crash, only ever a file's last, is left out); ``pixels`` decoded to (28, 28) uint8,
    or None for a correction by answer id (``answer``, ``index``)."""
    items = []
    for path in sorted(Path(folder).glob(f"{FILE_STEM}*.jsonl")):
        for item in json_lines(path, "the feedback store"):
            if "answer" in item:
                item["pixels"] = None
            else:
                raw = base64.b64decode(item["pixels"])
                item["pixels"] = np.frombuffer(raw, dtype=np.uint8).reshape(28, 28)
            items.append(item)
    return items
