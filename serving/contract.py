"""What the pipeline's `package` stage hands to the service, in one place.

A BentoML model named MODEL_NAME whose folder holds:
- MODEL_FILE: ONNX graph, input INPUT_NAME float32 (N, 1, 28, 28) with pixels/255 in
  [0, 1] (light ink on dark, as MNIST); normalisation is inside the graph. Output
  OUTPUT_NAME float32 (N, 10), already softmaxed. N is dynamic.
- INFO_FILE: JSON metadata (registry version, alias, metrics, git commit...), passed
  through to the `model_info` endpoint untouched.
"""

from __future__ import annotations

MODEL_NAME = "mnist-classifier"
MODEL_FILE = "model.onnx"
INFO_FILE = "info.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
IMAGE_SIDE = 28
NUM_CLASSES = 10
