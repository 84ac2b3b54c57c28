"""A record of what was served: every answered digit, as the model saw it, with its answer.

In: what the service's APIs answered (serving/service.py hands each answer to its
worker's ServedLog). Out: JSON Lines files in a folder, one file per worker
(``answers-w<worker>.jsonl``), each rotated by size (``.jsonl.1`` ... ``.jsonl.3``, the
oldest dropped), so the whole log stays under a cap, and appended to by the next worker
after a restart. One line per answer (a request of N digits is one line):

    {"time": "YYYY-MM-DDTHH:MM:SS.ffffff+00:00",  # when it was answered (UTC)
     "id": "5f0c3a9e1b7d2c44",                     # the answer's id (random, 16 hex digits)
     "endpoint": "/predict",                       # or "/predict_image"
     "model": "mnist-classifier:abc123",           # the BentoML model that answered
     "count": 2,                                   # N, the digits in the answer
     "labels": [7, 2],                             # the N answers
     "probabilities": "...",  # base64 of N x 10 float32 (little-endian): calibrated
     "pixels": "..."}         # base64 of N x 28 x 28 uint8: the grey levels the model saw
                              # (row-major, light ink on black; float inputs rounded)

Nothing that identifies the sender (no address, header or request id) is written. The
answer's id is random, returned to the caller as ``answer_id`` so that ``POST /feedback``
can correct a digit by it (``index``: its place in the answer); the feedback stage finds
the digit here.
``pandas.read_json(path, lines=True)`` reads a file, one row per answer; ``read(folder)``
reads every file into one row per digit, and ``pixels_of``/``probabilities_of`` turn
its columns into arrays.

Why arrays as base64 and one line per answer: the record is made on the event loop and
must cost a small share of a single-digit request; a JSON list of 784 numbers per digit
costs more than the model run, and base64 of a whole answer is one call. Why not
BentoML's monitoring API (`bentoml.monitor`): its default monitor formats every column
as JSON through a logger into files rotated daily with no size cap, and the API itself
(a context manager and a `log` call per column) costs, before anything is written, about
as much CPU as this whole record. A write that fails (a full disk, a folder that cannot
be written) turns the record off, says so once in the server's log and counts the digits
not written (``mnist_served_log_dropped_digits_total``); the answers never fail for it.
The standard library's RotatingFileHandler renames the files.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import concurrent.futures
import datetime
import json
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import prometheus_client

from serving.contract import IMAGE_SIDE, NUM_CLASSES, PIXEL_LEVELS

LOG = logging.getLogger(__name__)

FILE_STEM = "answers-w"
ROTATED_FILES = 3  # besides the current one
PENDING_ANSWERS = 64  # answers kept before their lines are written
WRITE_AFTER = 1.0  # seconds: the longest an answer is kept unwritten
THREAD_DIGITS = 1024  # kept answers of at least this many digits are written in a thread
COLUMNS = ["time", "answer", "index", "endpoint", "model", "label", "probabilities", "pixels"]

DROPPED = prometheus_client.Counter(
    "mnist_served_log_dropped_digits",
    "Answered digits not written to the served-input log (it could not be written)",
)


class ServedLog:
    """One worker's record in ``folder``: at most ``max_bytes`` of files (plus one
    answer), opened on the first answer.

    ``record`` only keeps a reference to the answer's arrays; the lines are made and
    written for PENDING_ANSWERS answers at a time, or WRITE_AFTER s after the first one
    kept, and at exit. Done in one go, that work stays in the processor's caches; done
    per request, between model runs, it costs several times as much. A killed worker
    loses what it had kept (at most PENDING_ANSWERS answers or WRITE_AFTER s)."""

    def __init__(self, model: str, folder: str | Path, max_bytes: int) -> None:
        self.model = json.dumps(model)
        self.folder = Path(folder)
        self.file_bytes = max(int(max_bytes) // (ROTATED_FILES + 1), 1)
        self._files: logging.handlers.RotatingFileHandler | None = None
        self._written = 0  # bytes in the current file
        self._broken = False
        self._pending: list[tuple[float, str, np.ndarray, np.ndarray, str]] = []
        self._lock = threading.Lock()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="served-log")
        atexit.register(self.close)

    def record(self, endpoint: str, pixels: np.ndarray, probabilities: np.ndarray) -> str:
        """Keep one answer of ``endpoint``, answered now: ``pixels`` (N, 1, 28, 28)
        float32 in [0, 1], what the model read; ``probabilities`` (N, 10). Returns the
        answer's id."""
        answer_id = os.urandom(8).hex()
        self._pending.append((time.time(), endpoint, pixels, probabilities, answer_id))
        if len(self._pending) >= PENDING_ANSWERS:
            self.write()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(WRITE_AFTER, self.write)
            except RuntimeError:  # called outside an event loop: write at once
                self.write()
        return answer_id

    def write(self) -> None:
        """Write the kept answers, one line each: on the event loop when they are a few
        digits; in this log's own thread when they are many (a bulk answer's line takes
        long enough to make that other requests should not wait for it)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        if sum(len(answer[2]) for answer in pending) >= THREAD_DIGITS:
            try:
                asyncio.get_running_loop().run_in_executor(self._thread, self._write, pending)
                return
            except RuntimeError:  # outside an event loop: write here
                pass
        self._write(pending)

    def _write(self, pending: list) -> None:
        if not pending:
            return
        with self._lock:  # the event loop's writes and the thread's, one at a time
            if self._broken or (self._files is None and not self._open()):
                DROPPED.inc(sum(len(answer[2]) for answer in pending))
                return
            try:
                # logging closes every handler it knows of, this one too, at exit and on
                # each logging.config.dictConfig (BentoML configures its logging so): reopen.
                if self._files.stream is None:
                    self._files.stream = self._files._open()
                stream = self._files.stream
                for line in self.lines(pending):
                    if self._written and self._written + len(line) > self.file_bytes:
                        self._files.doRollover()  # the standard library's renaming
                        stream, self._written = self._files.stream, 0
                    stream.write(line)
                    self._written += len(line)
                stream.flush()
            except OSError as error:
                self._broken = True
                DROPPED.inc(sum(len(answer[2]) for answer in pending))
                LOG.error("served-input log off: a write failed (%s); the answers go on", error)

    def lines(self, pending: list) -> Iterator[bytes]:
        """The kept answers' JSON lines (see the module's docstring), their arrays
        converted together: a few numpy calls for the batch, not a few per answer."""
        pixels = np.concatenate([answer[2].reshape(len(answer[2]), -1) for answer in pending])
        grey = np.rint(pixels * PIXEL_LEVELS).astype(np.uint8)  # (D, 784)
        probabilities = np.concatenate([answer[3] for answer in pending]).astype("<f4")  # (D, 10)
        labels = probabilities.argmax(axis=1).tolist()
        start = 0
        for when, endpoint, answer_pixels, _, answer_id in pending:
            stop = start + len(answer_pixels)
            now = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat()
            head = (
                f'{{"time": "{now}", "id": "{answer_id}", "endpoint": "{endpoint}", '
                f'"model": {self.model}, '
                f'"count": {stop - start}, "labels": {labels[start:stop]}, "probabilities": "'
            )
            yield b"".join(
                (
                    head.encode(),
                    b64(probabilities[start:stop]),
                    b'", "pixels": "',
                    b64(grey[start:stop]),
                    b'"}\n',
                )
            )
            start = stop

    def _open(self) -> bool:
        from serving.bentoml_adapter import worker_index  # BentoML: only in the service

        path = self.folder / f"{FILE_STEM}{worker_index()}.jsonl"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            files = logging.handlers.RotatingFileHandler(path, mode="ab", backupCount=ROTATED_FILES)
            self._written = path.stat().st_size
        except OSError as error:
            self._broken = True
            LOG.error(
                "served-input log off: cannot write %s (%s); set MNIST_SERVED_LOG_DIR to a "
                "writable folder, or MNIST_SERVED_LOG=0",
                path,
                error,
            )
            return False
        self._files = files
        return True

    def close(self) -> None:
        """Write what is kept and close the file (at the worker's exit)."""
        self._thread.shutdown(wait=True)  # its writes first, in order
        self._write(self._pending)
        self._pending = []
        if self._files is not None:
            self._files.close()
            self._files = None  # an answer recorded after this opens the file again


def b64(array: np.ndarray) -> bytes:
    """Base64 of an array's bytes (C order), without a copy."""
    return binascii.b2a_base64(np.ascontiguousarray(array), newline=False)


def files(folder: Path) -> list[Path]:
    """The log's files in `folder`, oldest first within each worker's set."""

    def age(path: Path) -> tuple[str, int]:
        stem, _, rotation = path.name.partition(".jsonl")
        return stem, -int(rotation.lstrip(".") or 0)

    return sorted(Path(folder).glob(f"{FILE_STEM}*.jsonl*"), key=age)


def read(folder: Path):
    """Every digit in the log at `folder` as a pandas DataFrame, one row per digit, in the
    order each worker wrote them: time (UTC), answer (the answer's id; None in lines
    written before answers had one), index (the digit's place in its answer), endpoint,
    model, label, probabilities ((10,) float32) and pixels ((28, 28) uint8). A line cut
    short by a killed worker (only a file's last line can be) is left out."""
    import pandas as pd

    rows = []
    for path in files(folder):
        for answer in json_lines(path, "the served log"):
            count = answer["count"]
            probabilities = unpack(answer["probabilities"], np.float32, (count, NUM_CLASSES))
            pixels = unpack(answer["pixels"], np.uint8, (count, IMAGE_SIDE, IMAGE_SIDE))
            digits = zip(answer["labels"], probabilities, pixels, strict=True)
            head = (answer["time"], answer.get("id"))
            tail = (answer["endpoint"], answer["model"])
            for index, (label, row, digit) in enumerate(digits):
                rows.append((*head, index, *tail, label, row, digit))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def json_lines(path: Path, what: str) -> Iterator[dict]:
    """The JSON objects of a file written a line at a time. A line that does not parse is
    an error naming ``what``, except the file's last, which a killed writer may have cut
    short: that one is left out."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a line of {what}") from None


def unpack(text: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<")).reshape(
        shape
    )


def pixels_of(frame) -> np.ndarray:
    """The DataFrame's pixel column as one (N, 28, 28) uint8 array."""
    return np.stack(frame["pixels"].tolist()) if len(frame) else np.zeros((0, 28, 28), np.uint8)


def probabilities_of(frame) -> np.ndarray:
    """The DataFrame's probabilities as one (N, 10) float32 array."""
    if not len(frame):
        return np.zeros((0, NUM_CLASSES), np.float32)
    return np.stack(frame["probabilities"].tolist()).astype(np.float32)
