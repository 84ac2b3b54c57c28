"""One epoch of a small SGD MLP on 1,000 digits, in one process or as one rank of several
(torchrun starts it): rank 0 writes the weights, which the tests compare.

    python -m harness.ddp_steps OUT.safetensors
    torchrun --standalone --nproc-per-node 2 -m harness.ddp_steps OUT.safetensors
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from harness.mnist import load_mnist
from pipeline import distributed, models, training
from pipeline.params import validate_candidate

# No dropout, no augmentation, no batch norm: nothing that differs between a rank's part
# of a batch and the whole; batches of 125 split 63/62 over two ranks.
CANDIDATE = {
    "arch": "mlp",
    "description": "ddp check",
    "hidden": [32],
    "activation": "tanh",
    "optimizer": "sgd",
    "lr": 0.2,
    "momentum": 0.5,
    "epochs": 1,
    "batch_size": 125,
}


def main(out: str) -> None:
    torch.set_num_threads(1)
    context = distributed.start("cpu", "fp32")
    images, labels = load_mnist("train", 1100)
    x = torch.from_numpy(images).float().unsqueeze(1) / 255
    y = torch.from_numpy(labels.astype("int64"))
    data = training.Data(x[:1000], y[:1000], x[1000:], y[1000:])
    candidate = validate_candidate(CANDIDATE)
    torch.manual_seed(0)
    net = models.build(candidate)
    training.train_torch(net, candidate, data, seed=0, context=context)
    if context.is_main:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out)
    distributed.finish(context)


if __name__ == "__main__":
    main(sys.argv[1])
