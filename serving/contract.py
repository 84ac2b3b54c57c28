"""What the pipeline's `package` stage hands to the service, in one place.

A BentoML model named MODEL_NAME whose folder holds:
- MODEL_FILE: ONNX graph, input INPUT_NAME float32 (N, 1, 28, 28) with pixels /
  PIXEL_LEVELS in [0, 1] (light ink on dark, as MNIST); normalisation is inside the graph. Output
  OUTPUT_NAME float32 (N, 10), already softmaxed. N is dynamic.
- INFO_FILE: JSON metadata (registry version, alias, metrics, git commit...), passed
  through to the `model_info` endpoint untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_NAME = "mnist-classifier"
MODEL_FILE = "model.onnx"
INFO_FILE = "info.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
IMAGE_SIDE = 28
PIXEL_LEVELS = 255  # a uint8 pixel's grey levels; the model reads pixels / PIXEL_LEVELS
NUM_CLASSES = 10


def store_model(onnx_bytes: bytes, info: dict, labels: dict[str, str] | None = None):
    """Create the BentoML model MODEL_NAME (in BENTOML_HOME's store) from an ONNX graph
    and its info; returns the stored model (its ``tag`` names the new version)."""
    import bentoml

    with bentoml.models.create(name=MODEL_NAME, labels=labels or {}, metadata=info) as ref:
        Path(ref.path, MODEL_FILE).write_bytes(onnx_bytes)
        Path(ref.path, INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return bentoml.models.get(ref.tag)  # the stored copy (``ref`` was the staging folder)
