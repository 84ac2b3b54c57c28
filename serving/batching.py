"""Adaptive batching: concurrent requests share one model run.

In: (n, ...) arrays from concurrent callers on one event loop. Out: each caller's rows
of the model's (N, ...) output. While a batch runs (in a thread, so the event loop keeps
accepting requests), newcomers queue; the next run takes everything queued, up to
`max_batch` rows. There is no timer: a lone request runs at once, and the batch size
grows with the load by itself.

Why not BentoML's `batchable=True`: its batching applies only to requests that arrive
over HTTP at the batchable endpoint. Calling a batchable method from another endpoint of
the same service goes through an in-process HTTP client that re-serialises the arrays as
JSON, which costs more than the MNIST model itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        on_batch: Callable[[int], None] = lambda size: None,
        inline_rows: int = 0,
    ) -> None:
        self._run = run
        self._inline_rows = inline_rows  # runs of at most this many rows block the loop
        self._max_batch = max_batch
        self._on_batch = on_batch  # called with each run's row count (for metrics)
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, inputs: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((inputs, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _take_batch(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        batch = [self._queue.popleft()]  # always at least one, however large
        rows = len(batch[0][0])
        while self._queue and rows + len(self._queue[0][0]) <= self._max_batch:
            rows += len(self._queue[0][0])
            batch.append(self._queue.popleft())
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = [
                (x, f) for x, f in self._take_batch() if not f.done()
            ]  # skip cancelled callers
            if not batch:
                continue
            inputs = np.concatenate([x for x, _ in batch]) if len(batch) > 1 else batch[0][0]
            self._on_batch(len(inputs))
            try:
                if len(inputs) <= self._inline_rows:  # cheaper than the hop to a thread
                    outputs = self._run(inputs)
                else:
                    outputs = await asyncio.to_thread(self._run, inputs)
            except Exception as exc:  # every caller in the batch sees the model's error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in batch:
                if not future.done():
                    future.set_result(outputs[start : start + len(x)])
                start += len(x)
