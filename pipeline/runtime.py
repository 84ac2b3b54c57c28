"""How wide torch runs on the CPU: the intra-op thread count for a candidate.

In: ``train.threads``, a candidate and the number of processes on this machine. Out:
the count, set on torch. The same rule for
train, evaluate and the benchmarks, so that a candidate is timed as the pipeline runs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from pipeline.params import Candidate


def threads_for(threads: int, candidate: Candidate, processes: int = 1) -> int:
    """``threads`` if set; else, for a CNN, the cores shared among this machine's
    ``processes`` (data-parallel ranks), and 1 for the dense models. A dense model's step
    is a few small matrix products: a second thread gains little even on R3's 784-wide
    layer, and it can slow a whole run down many times over, the threads waiting on each
    other whenever anything else holds a core."""
    if threads:
        return threads
    return max(1, (os.cpu_count() or 1) // processes) if candidate.is_cnn else 1


def set_threads(threads: int, candidate: Candidate, processes: int = 1) -> int:
    """Set torch's intra-op threads as ``threads_for`` picks; return the count."""
    n = threads_for(threads, candidate, processes)
    torch.set_num_threads(n)
    return n


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block: results that do not depend on how
    the work was split between threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
