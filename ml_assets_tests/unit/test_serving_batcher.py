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


# -- the compiled (ONNX) runtime: concurrent small requests coalesce into one graph call,
# answered on the event loop; a lone one is answered at once ---------------------------

class FakeCompiledModel(FakeModel):
    """A model with a compiled graph: `compiled_rows` records the graph calls and the
    thread that made them; a row of value 0.5 is a near tie the graph cannot answer
    alone (the Pipeline's `predict_proba`, in the predict thread, answers it); a NaN is
    not finite (the Pipeline raises on it); a row of value -1 makes the graph raise."""

    compiled = object()

    def __init__(self, name: str):
        super().__init__(name, seconds=0.0)
        self.graph_calls: list[int] = []
        self.graph_threads: set[str] = set()

    def compiled_rows(self, rows):
        import threading

        self.graph_calls.append(len(rows))
        self.graph_threads.add(threading.current_thread().name)
        values = np.array([row[0] for row in rows], dtype=float)
        if (values == -1).any():
            raise RuntimeError("graph failed")
        proba = np.column_stack([values, 1 - values])
        return proba, proba.argmax(axis=1), (values != 0.5) & np.isfinite(values)

    def compiled_answer(self, rows):
        proba, best, alone = self.compiled_rows(rows)
        return (proba, best) if alone.all() else None


async def _concurrent(batcher, model_of, n: int, rows_of=lambda i: [[i / 100]]):
    """n requests in flight at once (as n HTTP requests on the loop are); a request's
    error is its result."""
    async def one(i):
        with batcher.tracking():
            await asyncio.sleep(0)
            return await batcher.predict(model_of(i), rows_of(i))
    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def test_concurrent_compiled_requests_share_one_graph_call_on_the_loop():
    import threading

    model = FakeCompiledModel("a")
    results = run(_with_batcher(lambda b: _concurrent(b, lambda i: model, 32), max_rows=64))
    for i, (proba, best) in enumerate(results):  # each request gets its own rows
        assert proba.tolist() == [[i / 100, 1 - i / 100]]
        assert best.tolist() == [1]
    assert model.graph_calls == [32]  # one graph call for the 32 requests
    assert model.calls == []  # never the Pipeline
    assert model.graph_threads == {threading.main_thread().name}


def test_coalesced_compiled_batches_are_bounded_by_max_rows():
    model = FakeCompiledModel("a")
    run(_with_batcher(lambda b: _concurrent(b, lambda i: model, 40), max_rows=16))
    assert model.graph_calls == [16, 16, 8]


def test_a_lone_compiled_request_is_answered_at_once_without_the_worker():
    model = FakeCompiledModel("a")

    async def body(batcher):
        answers = []
        for _ in range(5):
            with batcher.tracking():
                answers.append(await batcher.predict(model, [[0.1], [0.2]]))
        return answers

    # A timed wait of 1 s would show; the worker is never involved (nothing queued).
    started = time.perf_counter()
    results = run(_with_batcher(body, max_rows=64, max_wait_s=1.0))
    assert time.perf_counter() - started < 0.5
    assert [p.shape for p, _ in results] == [(2, 2)] * 5
    assert model.graph_calls == [2] * 5


def test_compiled_requests_across_a_swap_finish_on_their_own_model():
    old, new = FakeCompiledModel("old"), FakeCompiledModel("new")
    run(_with_batcher(lambda b: _concurrent(b, lambda i: old if i < 10 else new, 24)))
    assert sum(old.graph_calls) == 10 and sum(new.graph_calls) == 14
    assert len(old.graph_calls) == 1 and len(new.graph_calls) == 1


def test_rows_the_graph_cannot_answer_alone_go_to_the_predict_thread():
    model = FakeCompiledModel("a")
    results = run(_with_batcher(lambda b: _concurrent(
        b, lambda i: model, 8, lambda i: [[0.5 if i == 3 else 0.2]]), max_rows=64))
    assert model.graph_calls == [8]  # one graph call answered all but the near tie
    assert model.calls == [1]  # the Pipeline (in the predict thread) answered that one
    assert results[3][0].tolist() == [[0.5, 0.5]]
    assert results[0][0].tolist() == [[0.2, 0.8]]


def test_a_request_failing_the_graph_does_not_fail_its_coalesced_batch():
    model = FakeCompiledModel("a")
    # The graph's answer to the NaN is not finite; the Pipeline raises on it: only the
    # guilty request gets the error.
    results = run(_with_batcher(lambda b: _concurrent(
        b, lambda i: model, 6, lambda i: [[float("nan") if i == 3 else 0.2]]), max_rows=64))
    assert isinstance(results[3], ValueError)
    assert all(isinstance(r, tuple) for i, r in enumerate(results) if i != 3)


def test_a_graph_that_raises_leaves_the_answer_to_the_pipeline():
    model = FakeCompiledModel("a")

    async def body(batcher):
        with batcher.tracking():
            return await batcher.predict(model, [[-1.0]])

    proba, _ = run(_with_batcher(body))
    assert model.graph_calls == [1]  # declined once: not tried again by the worker
    assert proba.tolist() == [[-1.0, 2.0]] and model.calls == [1]


def test_compiled_requests_are_not_held_behind_a_batch_in_the_predict_thread():
    model = FakeCompiledModel("a")
    model.seconds = 0.5  # the Pipeline, in the predict thread: slow

    async def body(batcher):
        async def timed(i):
            started = time.perf_counter()
            await _concurrent(batcher, lambda _: model, 1, lambda _: [[0.5 if i == 0 else 0.2]])
            return time.perf_counter() - started
        with batcher.tracking():  # the near tie below shares the loop with 8 others
            return await asyncio.gather(*(timed(i) for i in range(9)))

    seconds = run(_with_batcher(body, max_rows=64))
    assert seconds[0] >= 0.5  # the near tie: answered by the Pipeline
    assert max(seconds[1:]) < 0.25  # the others: by the graph, not after the Pipeline


def test_a_graph_failing_on_a_coalesced_batch_leaves_every_job_to_the_pipeline():
    model = FakeCompiledModel("a")
    results = run(_with_batcher(lambda b: _concurrent(
        b, lambda i: model, 5, lambda i: [[-1.0 if i == 2 else 0.2]]), max_rows=64))
    assert model.graph_calls == [5] and sum(model.calls) == 5
    assert [r[0].tolist() for r in results] == [[[0.2, 0.8]]] * 2 + [[[-1.0, 2.0]]] + [
        [[0.2, 0.8]]] * 2
