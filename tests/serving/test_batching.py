"""serving/batching.py: concurrent callers share model runs and each gets its own rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching import MicroBatcher


class RecordingModel:
    """Doubles its input and records the batch sizes it was called with."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        if self.fail:
            raise RuntimeError("model exploded")
        return x * 2


async def call_concurrently(batcher: MicroBatcher, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return list(await asyncio.gather(*(batcher(x) for x in inputs)))


def test_concurrent_callers_share_runs_and_get_their_own_rows() -> None:
    model, observed = RecordingModel(), []
    batcher = MicroBatcher(model, max_batch=8, on_batch=observed.append)
    inputs = [
        np.full((n, 3), i, np.float32) for i, n in enumerate([1, 1, 2, 1, 5, 1, 1])
    ]  # 12 rows
    outputs = asyncio.run(call_concurrently(batcher, inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert model.batches == [5, 7]  # 1+1+2+1 fit in 8, then 5+1+1; arrival order kept
    assert observed == model.batches


def test_a_request_bigger_than_max_batch_runs_alone() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=4)
    outputs = asyncio.run(call_concurrently(batcher, [np.ones((10, 2)), np.ones((1, 2))]))
    assert model.batches == [10, 1] and [len(y) for y in outputs] == [10, 1]


def test_a_lone_request_runs_at_once_and_the_batcher_survives_new_event_loops() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=8)
    for _ in range(3):  # each asyncio.run is a fresh event loop, as in direct calls
        np.testing.assert_array_equal(asyncio.run(batcher(np.ones((1, 2)))), np.full((1, 2), 2.0))
    assert model.batches == [1, 1, 1]


def test_a_model_error_reaches_every_caller_in_the_batch() -> None:
    batcher = MicroBatcher(RecordingModel(fail=True), max_batch=8)

    async def both() -> list[object]:
        return await asyncio.gather(
            batcher(np.ones((1, 2))), batcher(np.ones((1, 2))), return_exceptions=True
        )

    results = asyncio.run(both())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_a_cancelled_caller_is_skipped() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=8)

    async def scenario() -> np.ndarray:
        doomed = asyncio.ensure_future(batcher(np.ones((3, 2))))
        kept = asyncio.ensure_future(batcher(np.ones((1, 2))))
        await asyncio.sleep(0)  # both queued
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await kept

    assert len(asyncio.run(scenario())) == 1
    assert model.batches == [1]


def test_small_runs_stay_on_the_event_loop_and_big_ones_go_to_a_thread() -> None:
    import threading

    threads: list[tuple[int, int]] = []  # (rows, thread id)

    def model(x: np.ndarray) -> np.ndarray:
        threads.append((len(x), threading.get_ident()))
        return x * 2

    batcher = MicroBatcher(model, max_batch=64, inline_rows=4)

    async def both() -> int:
        small = await batcher(np.ones((4, 3), np.float32))
        big = await batcher(np.ones((5, 3), np.float32))
        np.testing.assert_array_equal(small, 2)
        np.testing.assert_array_equal(big, 2)
        return threading.get_ident()

    loop_thread = asyncio.run(both())
    assert threads[0] == (4, loop_thread)
    assert threads[1][0] == 5 and threads[1][1] != loop_thread
