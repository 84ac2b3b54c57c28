"""The ONNX model the service runs: one ONNX Runtime session per worker.

In: the folder of a BentoML model laid out as serving/contract.py says. Out: ``run``,
(N, 1, 28, 28) float32 pixels in [0, 1] -> (N, 10) float32 probabilities. The session
is checked against the contract when it loads, so a wrong model fails at start-up, not
on the first request.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.contract import (
    IMAGE_SIDE,
    INFO_FILE,
    INPUT_NAME,
    MODEL_FILE,
    NUM_CLASSES,
    OUTPUT_NAME,
)


def make_session(model_path: Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for small requests: parallelism comes from the
    workers and from batching, so each session keeps to ``threads`` and never spins."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def check_contract(session: ort.InferenceSession) -> None:
    """Raise RuntimeError if the ONNX graph's inputs and outputs are not the contract's."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    found = (
        [(i.name, i.type, i.shape[1:]) for i in inputs],
        [(o.name, o.type, o.shape[1:]) for o in outputs],
    )
    expected = (
        [(INPUT_NAME, "tensor(float)", [1, IMAGE_SIDE, IMAGE_SIDE])],
        [(OUTPUT_NAME, "tensor(float)", [NUM_CLASSES])],
    )
    if found != expected:
        raise RuntimeError(f"{MODEL_FILE} has inputs/outputs {found}, expected {expected}")
    if isinstance(inputs[0].shape[0], int):
        raise RuntimeError(
            f"{MODEL_FILE} has a fixed batch size {inputs[0].shape[0]}; export it dynamic"
        )


class Runner:
    """The model of one worker. A run of at least ``bulk_rows`` digits is split into a
    part per core, run side by side (ONNX Runtime releases the GIL), so that one big
    request does not run on one core while the others idle."""

    def __init__(self, folder: Path, *, threads: int, bulk_rows: int) -> None:
        self.info: dict[str, Any] = json.loads((folder / INFO_FILE).read_text())
        self.session = make_session(folder / MODEL_FILE, threads)
        check_contract(self.session)
        self.bulk_rows = bulk_rows
        self.parts = os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.parts, thread_name_prefix="bulk")
        self.run(np.zeros((1, 1, IMAGE_SIDE, IMAGE_SIDE), np.float32))  # warm up

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, 1, 28, 28) float32 in [0, 1] -> (N, 10) float32 probabilities."""
        if len(images) < self.bulk_rows:
            return self.run_part(images)
        parts = np.array_split(images, self.parts)
        return np.concatenate(list(self.pool.map(self.run_part, parts)))

    def run_part(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
