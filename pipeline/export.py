"""The Predictor as ONNX, and the check that ONNX Runtime computes what torch does.

In: a ``Predictor`` (pixels in [0, 1] (N, 1, 28, 28) -> probabilities (N, 10)). Out: the
bytes of an ONNX graph with a dynamic batch dimension and the tensor names
serving/contract.py names; ``check_onnx`` raises StageError on any disagreement.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import inference
from pipeline.errors import StageError
from serving.contract import INPUT_NAME, OUTPUT_NAME

MAX_PROB_DIFF = 1e-5


def export_onnx(predictor: torch.nn.Module) -> bytes:
    """ONNX (opset from torch's dynamo exporter) with a dynamic batch dimension."""
    example = torch.zeros(2, 1, 28, 28)
    program = torch.onnx.export(
        predictor.eval(),
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
        dynamo=True,
        verbose=False,
    )
    program.optimize()
    return program.model_proto.SerializeToString()


def check_onnx(onnx_bytes: bytes, predictor: torch.nn.Module, pixels: torch.Tensor) -> dict:
    """Compare ONNX Runtime with torch on ``pixels``; raise StageError on any mismatch."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    ours = np.concatenate(
        [
            session.run(None, {INPUT_NAME: pixels[i : i + 2000].numpy()})[0]
            for i in range(0, len(pixels), 2000)
        ]
    )
    reference = inference.in_batches(predictor, pixels).numpy()
    max_diff = float(np.abs(ours - reference).max())
    disagree = int((ours.argmax(1) != reference.argmax(1)).sum())
    if disagree or max_diff >= MAX_PROB_DIFF:
        raise StageError(
            f"ONNX Runtime and torch disagree on {len(pixels)} test images: "
            f"{disagree} different labels, max probability difference "
            f"{max_diff:.2e} (limit {MAX_PROB_DIFF:.0e}); not packaged"
        )
    return {"images": len(pixels), "label_disagreements": 0, "max_probability_diff": max_diff}
