"""int8 quantization as package does it: a QDQ graph calibrated on training images, and a
check against the float model that stops the stage when labels or accuracy move."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from harness.fixture_model import to_model_input, train
from harness.mnist import load_mnist
from pipeline import export
from pipeline.errors import StageError


class Pixels(torch.nn.Module):
    """The export's input name: pixels."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


@pytest.fixture(scope="module")
def models() -> dict:
    images, labels = load_mnist("train", 6000)
    test_images, test_labels = load_mnist("t10k", 2000)
    float_bytes = export.export_onnx(Pixels(train(images[:5000], labels[:5000]).eval()))
    calibration = to_model_input(images[5000:]).numpy()
    return {
        "float": float_bytes,
        "int8": export.quantize_int8(float_bytes, calibration),
        "pixels": to_model_input(test_images).numpy(),
        "labels": test_labels,
    }


def test_the_quantized_graph_is_int8_and_close_to_the_float_one(models: dict) -> None:
    graph = onnx.load_from_string(models["int8"]).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights  # the weights are stored as int8
    quantized = export.run(models["int8"], models["pixels"])
    reference = export.run(models["float"], models["pixels"])
    assert np.abs(quantized - reference).max() < 0.2
    assert np.mean(quantized.argmax(1) == reference.argmax(1)) > 0.98


def test_a_model_that_keeps_its_labels_passes(models: dict) -> None:
    check = export.check_quantized(
        models["float"], models["float"], models["pixels"], models["labels"]
    )
    assert check == {"images": 2000, "label_agreement": 1.0, "accuracy_loss": 0.0}


def test_a_tiny_mlp_loses_too_many_labels_and_the_check_stops_packaging(models: dict) -> None:
    # A 64-unit MLP's int8 form changes about 0.6 % of its labels: over the 0.1 % allowed.
    with pytest.raises(
        StageError, match=r"agrees with the float one on 9\d\.\d\d% .*quantize: none"
    ):
        export.check_quantized(models["int8"], models["float"], models["pixels"], models["labels"])
