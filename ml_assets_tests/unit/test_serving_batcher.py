"""The micro-batcher: coalesces concurrent requests, never delays a lone one, keeps
models apart, and isolates a failing request."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batcher import MicroBatcher


class FakeModel:
    """Stands in for ServedModel: probabilities (row value, 1 - value), calls recorded."""

    is_regression = False  # a classifier: the batcher calls predict_proba
    compiled = None  # no ONNX graph: batched in the predict thread

    def __init__(self, name: str, seconds: float = 0.02):
        self.name = name
        self.seconds = seconds
        self.calls: list[int] = []

    def predict_proba(self, rows):
        self.calls.append(len(rows))
        time.sleep(self.seconds)  # like sklearn: the per-call cost, not per row
        values = np.array([row[0] for row in rows], dtype=float)
        if np.isnan(values).any():
            raise ValueError("model cannot take NaN")
        return np.column_stack([values, 1 - values])


def run(coroutine):
    return asyncio.run(coroutine)


async def _with_batcher(body, **kwargs):
    batcher = MicroBatcher(**kwargs)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    model = FakeModel("a")

    async def body(batcher):
        async def one(i):
            with batcher.tracking():
                await asyncio.sleep(0)
                return await batcher.predict(model, [[i / 100]])
        return await asyncio.gather(*(one(i) for i in range(40)))

    results = run(_with_batcher(body, max_rows=16, max_wait_s=0.002))
    for i, (proba, best) in enumerate(results):
        assert proba.tolist() == [[i / 100, 1 - i / 100]]
        assert best.tolist() == [1]
    assert sum(model.calls) == 40
    assert len(model.calls) <= 5  # 40 requests, batches of up to 16
    assert max(model.calls) <= 16


def test_a_lone_request_is_not_delayed():
    model = FakeModel("a", seconds=0.0)

    async def body(batcher):
        started = time.perf_counter()
        for _ in range(5):
            with batcher.tracking():
                await batcher.predict(model, [[0.5]])
        return (time.perf_counter() - started) / 5

    # Waiting is bounded by max_wait_s (1 s here): a lone request must not wait at all.
    assert run(_with_batcher(body, max_rows=16, max_wait_s=1.0)) < 0.2


def test_requests_on_different_models_are_never_mixed():
    old, new = FakeModel("old"), FakeModel("new")

    async def body(batcher):
        jobs = [batcher.predict(old if i % 3 else new, [[0.1]]) for i in range(12)]
        return await asyncio.gather(*jobs)

    run(_with_batcher(body, max_rows=64, max_wait_s=0.0))
    assert sum(old.calls) == 8 and sum(new.calls) == 4


def test_a_failing_request_does_not_fail_its_batch():
    model = FakeModel("a")

    async def body(batcher):
        jobs = [batcher.predict(model, [[float("nan") if i == 3 else 0.2]]) for i in range(6)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = run(_with_batcher(body, max_rows=64, max_wait_s=0.0))
    assert isinstance(results[3], ValueError)
    assert all(isinstance(r, tuple) for i, r in enumerate(results) if i != 3)


def test_stop_answers_queued_jobs_first():
    model = FakeModel("a", seconds=0.01)

    async def body():
        batcher = MicroBatcher(max_rows=1, max_wait_s=0.0)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.predict(model, [[0.3]])) for _ in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        return await asyncio.gather(*tasks)

    assert len(run(body())) == 5
    assert model.calls == [1] * 5


def test_predict_needs_a_running_batcher():
    with pytest.raises(RuntimeError, match="not running"):
        run(MicroBatcher().predict(FakeModel("a"), [[0.1]]))
