"""Where a stage's torch work runs: the device, and data-parallel training over processes
and machines with torch.distributed, as torchrun starts it.

In: ``train.device`` (auto | cpu | cuda | mps), ``train.precision`` and the variables
torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Out: a
``Context``: the device, this process's rank among ``world_size`` (1 without torchrun),
and what the training loop needs to split a batch over the ranks and average their
gradients (DistributedDataParallel: gloo on the CPU, NCCL on CUDA).

Every rank draws the same seeded order and augmentation for the whole batch and takes
its own contiguous part of it, so the global batch stays the candidate's ``batch_size``
and its learning rate means the same at any number of processes. Only rank 0 writes
outputs and logs to MLflow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.params import ParamsError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; a device that is requested
    and absent stops the stage with a message naming the key."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError(
                "train.device: 'cuda' requested, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use 'auto' or 'cpu'"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise ParamsError(
                "train.device: 'mps' requested, but torch sees no Apple GPU; use 'auto' or 'cpu'"
            )
        return torch.device("mps")
    return torch.device("cpu")


def exact_float32(device: torch.device) -> None:
    """No TensorFloat-32 on CUDA: evaluation must match the CPU's float32 (and ONNX
    Runtime's) to 1e-5, which TF32's 10-bit mantissa does not."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``, None for float32.
    ``auto`` is bf16 on a GPU that has it (fp16 on one that does not) and float32 on the
    CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ParamsError(
            f"train.precision: 'fp16' needs a CUDA GPU; this stage runs on "
            f"{device.type} (use 'bf16' or 'fp32')"
        )
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dtype: torch.dtype | None = None  # autocast's, or None for float32

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def part(self, n: int) -> slice:
        """This rank's contiguous part of a batch of ``n`` rows (sizes differ by at most 1)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` when there are several ranks; on CUDA
        its batch norms become SyncBatchNorm, so statistics come from the global batch as
        in one process (gloo on the CPU has no SyncBatchNorm: each rank uses its part's)."""
        if not self.distributed:
            return module
        if self.device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return nn.parallel.DistributedDataParallel(module, device_ids=[self.device.index])
        return nn.parallel.DistributedDataParallel(module)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (itself with one)."""
        if not self.distributed:
            return values
        total = values.to(self.device).clone()
        torch.distributed.all_reduce(total)
        return total.cpu()


def start(device: str, precision: str) -> Context:
    """The stage's context: from torchrun's variables when it started this process, with
    the process group joined (NCCL on CUDA, gloo otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        torch.distributed.init_process_group(backend=backend)
    return Context(resolved, rank, world_size, local_rank, autocast_dtype(precision, resolved))


def finish(context: Context) -> None:
    if context.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def relaunch(processes: int, module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` again as ``processes`` ranks on this machine under
    torchrun (what ``train.processes`` > 1 asks of `dvc repro`); its exit code, non-zero
    if any rank failed."""
    torchrun = shutil.which(
        "torchrun", path=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
    )
    if torchrun is None:
        raise ParamsError("train.processes: torchrun is not installed beside this Python")
    command = [
        torchrun,
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(processes),
        "-m",
        module,
        *argv,
    ]
    return subprocess.run(command).returncode
