"""The fused optimisers reach exactly torch.optim's weights (fused=True), step for step."""

import pytest
import torch
from torch import nn

from pipeline import optim

CASES = {
    "sgd": (lambda p: optim.SGD(p, lr=0.4), lambda p: torch.optim.SGD(p, lr=0.4, fused=True)),
    "sgd momentum": (
        lambda p: optim.SGD(p, lr=0.4, momentum=0.5),
        lambda p: torch.optim.SGD(p, lr=0.4, momentum=0.5, fused=True),
    ),
    "sgd momentum decay": (
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, fused=True),
    ),
    "adam": (lambda p: optim.Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01, fused=True)),
    "adam l2": (
        lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, fused=True),
    ),
    "adamw": (
        lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1, decoupled=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True),
    ),
}


def trained(make_optimizer, steps: int = 30) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = make_optimizer(net.parameters())
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 20, generator=data), torch.randint(0, 3, (8,), generator=data)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [p.detach() for p in net.parameters()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_weights_as_torch_optim(case):
    ours, reference = CASES[case]
    start = trained(ours, steps=0)
    for a, b, s in zip(trained(ours), trained(reference), start, strict=True):
        assert not torch.equal(a, s), "the optimiser did not move the weights"
        assert torch.equal(a, b), f"largest difference {(a - b).abs().max():.2e}"
