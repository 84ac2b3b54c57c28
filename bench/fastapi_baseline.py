"""The yardstick for the service's request path: the least a Python server can do for one
digit, a FastAPI app with ONNX Runtime and no BentoML.

    MNIST_ONNX=model.onnx uvicorn bench.fastapi_baseline:app --workers 2 --host 127.0.0.1

In: POST /predict with the service's own body, {"images_b64": "<base64 of N x 784 uint8>"}.
Out: {"labels": [...], "probabilities": [[...], ...]}, from the same ONNX file, one
ONNX Runtime thread per worker as the service runs it. No validation beyond what NumPy
and base64 do, no batching, no metrics, no logging: bench/serving_bench.py serves it
beside the Bento and loads both with wrk.
"""

from __future__ import annotations

import base64
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

from serving.contract import INPUT_NAME, OUTPUT_NAME


def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        os.environ["MNIST_ONNX"], options, providers=["CPUExecutionProvider"]
    )


class Digits(BaseModel):
    images_b64: str


app = FastAPI()
model = session()


@app.post("/predict")
async def predict(body: Digits) -> dict:  # on the event loop: no thread hop for one digit
    pixels = np.frombuffer(base64.b64decode(body.images_b64), np.uint8).reshape(-1, 1, 28, 28)
    probabilities = model.run([OUTPUT_NAME], {INPUT_NAME: pixels.astype(np.float32) / 255})[0]
    return {"labels": probabilities.argmax(1).tolist(), "probabilities": probabilities.tolist()}
