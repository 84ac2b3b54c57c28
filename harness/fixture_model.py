"""A small stand-in `mnist-classifier` model for tests, benchmarks and trying the service.

In: the MNIST mirror (harness/mnist.py). Out: a BentoML model in the store that
BENTOML_HOME points at, laid out as serving/contract.py says: a tiny MLP trained for a
few seconds on 10,000 images, exported to ONNX with normalisation and softmax inside the
graph, plus an info.json. The real model comes from the pipeline's package stage.

    python -m harness.fixture_model
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import bentoml
import numpy as np
import torch
from torch import nn

from harness.mnist import load_mnist
from serving.contract import INPUT_NAME, MODEL_FILE, MODEL_NAME, OUTPUT_NAME, store_model

MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics after /255


class TinyMLP(nn.Module):
    """(N, 1, 28, 28) pixels in [0, 1] -> (N, 10) probabilities."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - MEAN) / STD)  # (N, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(images), dim=1)  # (N, 10)


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1], as the contract says."""
    return torch.from_numpy(images.astype(np.float32) / np.float32(255)).unsqueeze(1)


def train(images: np.ndarray, labels: np.ndarray, *, epochs: int = 4, seed: int = 0) -> TinyMLP:
    """A few epochs of Adam on shuffled mini-batches; the same seed gives the same weights.

    One torch thread: for a model this small, a second thread only adds synchronisation,
    which on shared cores makes training several times slower.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyMLP()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = to_model_input(images), torch.from_numpy(labels.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(128):
                loss = nn.functional.cross_entropy(model.logits(x[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(model: TinyMLP, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(to_model_input(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def export_onnx(model: TinyMLP, path: Path) -> None:
    """ONNX with a dynamic batch dimension and the contract's tensor names.

    The TorchScript exporter (dynamo=False) is many times faster to run than the dynamo
    one; torch marks it deprecated, which is fine for a test stand-in.
    """
    example = torch.zeros(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            dynamo=False,
        )


def build(*, train_count: int = 10_000, seed: int = 0) -> bentoml.Model:
    """Train, export and store the stand-in model; return the stored BentoML model."""
    train_images, train_labels = load_mnist("train", train_count)
    test_images, test_labels = load_mnist("t10k")
    model = train(train_images, train_labels, seed=seed)
    info = {
        "registry_model": MODEL_NAME,
        "registry_version": "0",
        "alias": "fixture",
        "candidate": "tiny_mlp",
        "metrics": {"test_accuracy": accuracy(model, test_images, test_labels)},
        "git_commit": "none",
        "normalisation": {"mean": MEAN, "std": STD},
        # Higher than params.yaml's serve.unsure_below: the stand-in is not calibrated, and
        # overconfident on a scribble.
        "unsure_below": 0.9,
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        export_onnx(model, onnx_path)
        return store_model(onnx_path.read_bytes(), info, labels={"source": "harness.fixture_model"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-count", type=int, default=10_000)
    args = parser.parse_args()
    model_ref = build(train_count=args.train_count)
    print(f"stored {model_ref.tag} in {model_ref.path}")


if __name__ == "__main__":
    main()
