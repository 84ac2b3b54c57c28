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


STACK_TRACE = "pkg.torch.onnx.stack_trace"  # a node's metadata: where torch built it


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
    model = program.model_proto
    # The exporter records each node's Python stack trace, with the absolute paths of this
    # checkout's files: the same network exported in two clones would differ in its bytes.
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        kept = [prop for prop in node.metadata_props if prop.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model.SerializeToString()


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


# The quantized model may disagree with the float one on at most this share of the test
# digits' labels, and lose at most this much accuracy; more stops the package stage.
MIN_LABEL_AGREEMENT = 0.999
MAX_ACCURACY_LOSS = 0.0005


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights), with activation ranges
    calibrated on ``calibration`` (N, 1, 28, 28) float32 pixels of training images. Int8
    convolutions and matrix products run on the CPU's integer units (VNNI, AMX)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 256] for i in range(0, len(calibration), 256))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "float.onnx").write_bytes(onnx_bytes)
        # Shape inference and graph clean-up first, as ONNX Runtime advises; an ensemble's
        # graph defeats the symbolic shape inference, which the ONNX one then replaces.
        quant_pre_process(folder / "float.onnx", folder / "ready.onnx", skip_symbolic_shape=True)
        quantize_static(
            folder / "ready.onnx",
            folder / "int8.onnx",
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return (folder / "int8.onnx").read_bytes()


def run(onnx_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    """ONNX Runtime's probabilities for (N, 1, 28, 28) pixels, in batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run(None, {INPUT_NAME: pixels[i : i + 2000]})[0]
            for i in range(0, len(pixels), 2000)
        ]
    )


def check_quantized(int8: bytes, float32: bytes, pixels: np.ndarray, labels: np.ndarray) -> dict:
    """Compare the int8 model with the float one on the test digits; raise StageError if
    their labels agree on less than MIN_LABEL_AGREEMENT or int8 loses more than
    MAX_ACCURACY_LOSS of accuracy."""
    quantized, reference = run(int8, pixels).argmax(1), run(float32, pixels).argmax(1)
    agreement = float((quantized == reference).mean())
    loss = float((reference == labels).mean() - (quantized == labels).mean())
    if agreement < MIN_LABEL_AGREEMENT or loss > MAX_ACCURACY_LOSS:
        raise StageError(
            f"the int8 model agrees with the float one on {agreement:.2%} of {len(labels)} test "
            f"digits (at least {MIN_LABEL_AGREEMENT:.1%} needed) and changes the accuracy by "
            f"{-loss:+.2%} (a loss of at most {MAX_ACCURACY_LOSS:.2%} allowed); not packaged "
            "(promote.quantize: none serves the float model)"
        )
    return {"images": len(labels), "label_agreement": agreement, "accuracy_loss": loss}
