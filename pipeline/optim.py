"""SGD and Adam(W) without torch.optim's start-up and per-step overhead.

Each class calls the same fused kernel that ``torch.optim``'s ``fused=True`` path calls
(``torch._fused_sgd_``, ``torch._fused_adam_``, ``torch._fused_adamw_``), so the weights
are bit for bit the same (tests/test_optim.py checks it against torch.optim). What they
leave out is torch.optim's wrapping, which the small reference models notice:
- creating any torch.optim optimiser imports ``torch._dynamo``, seconds of every train
  stage's start-up;
- each ``step()`` and ``zero_grad()`` adds bookkeeping (profiling hooks, grouping tensors
  by device and dtype) of the order of a small MLP's whole step, and R3 makes tens of
  thousands of steps.
They hold one learning rate and no schedule; train.py uses torch.optim when a candidate
has a schedule (the CNNs, whose steps are long).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class _Fused:
    def __init__(self, params: Iterable[torch.Tensor]):
        self.params = [p for p in params if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params]


class SGD(_Fused):
    """torch.optim.SGD(lr, momentum, weight_decay, fused=True); no dampening or Nesterov."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self) -> None:
        first = self.momentum and self.buffers is None
        if first:  # the kernel fills them from the first gradients
            self.buffers = [torch.empty_like(p) for p in self.params]
        torch._fused_sgd_(
            self.params,
            self.grads(),
            self.buffers if self.momentum else [],
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=bool(first),
        )


class Adam(_Fused):
    """torch.optim.Adam(..., fused=True), or AdamW with ``decoupled=True``."""

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # On the parameters' device: the fused CUDA kernel reads the step count there.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_add_(self.steps, 1)
        self.kernel(
            self.params,
            self.grads(),
            self.exp_avg,
            self.exp_avg_sq,
            [],
            self.steps,
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
