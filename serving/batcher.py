"""Adaptive micro-batching: concurrent requests share one predict_proba call (one
predict call for regressors), on either runtime.

A sklearn Pipeline costs about the same for 1 row as for 64 (the per-call
overhead dominates), so one worker coalesces whatever requests are waiting into
one batch of rows and runs the pipeline on it in a thread (from the rows, or one
DataFrame: serving/model/row_pipeline.py), keeping the event loop free.
It waits (at most `max_wait_s`) only when more requests are in flight than are
queued, or recent batches were larger than what is queued; a lone request is
never delayed. Requests are grouped by model, so a request that started on the
old model during a swap finishes on it.

A compiled (ONNX) model answers a lone small request on the event loop itself (tens of
microseconds: less than the thread hop). Concurrent small requests go to a queue of their
own instead, drained one loop tick after the first arrives (no timed wait: the graph call
is too cheap to wait for): everything queued on one model in one graph call, still on
the loop, never behind a batch in the predict thread. Rows the graph cannot answer alone
(near ties, non-finite values) and larger requests go to the predict thread, where the
Pipeline answers what the graph cannot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from serving.http.metrics import ServiceMetrics
from serving.model.input_limits import InputOverflow, diagnose_overflow, is_overflow_error
from serving.model.served import ServedModel

__all__ = ["InputOverflow", "MicroBatcher"]

logger = logging.getLogger(__name__)

# Rows a compiled (ONNX) model predicts on the event loop itself, not in the predict
# thread: at ~0.05 ms for one row and ~0.4 ms for 64 of the default forest, the
# thread hop and the batching wait would cost more than the prediction.
INLINE_ROWS = 64


@dataclass(slots=True)
class _Job:
    model: ServedModel
    rows: list[list]
    future: asyncio.Future


def _predict(model: ServedModel, rows: list[list]) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs in the predict thread: (probabilities, index of the predicted class) of a
    classifier, (predicted values, their standard deviations or None) of a regressor.
    Client values the pipeline cannot hold (a value its
    preprocessing scales past float32) raise `InputOverflow` naming the features; the
    batcher retries the jobs of a failed batch one by one, so only the guilty job gets
    it."""
    try:
        if model.is_regression:
            return model.predict_values(rows)
        proba = model.predict_proba(rows)
    except Exception as exc:
        if not is_overflow_error(exc):
            raise
        try:
            frame = model.frame(rows)
        except OverflowError:  # a value no column dtype holds: nothing to diagnose with
            raise InputOverflow([]) from None
        raise diagnose_overflow(model.pipeline, frame) from None
    return proba, proba.argmax(axis=1)


class MicroBatcher:
    """Queue of prediction jobs drained by one worker task into one thread."""

    def __init__(self, max_rows: int = 64, max_wait_s: float = 0.0015,
                 metrics: ServiceMetrics | None = None,
                 predict_fn: Callable[[ServedModel, list[list]],
                                      tuple[np.ndarray, np.ndarray | None]] | None = None,
                 inline: bool = True, thread_name: str = "predict"):
        # predict_fn/inline/thread_name: the shadow lane (serving/shadow_lane.py) runs a
        # batcher of its own, in its own thread, under its own lock, never inline.
        self._predict_fn = predict_fn or _predict
        self.inline = inline
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.in_flight = 0  # requests between arrival and answer
        self._jobs: deque[_Job] = deque()
        self._graph_jobs: deque[_Job] = deque()  # compiled, small: answered on the loop
        self._recent_jobs = 1.0  # moving average of jobs per batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._wakeup = asyncio.Event()  # replaced by start(); bound to a loop on first use
        self._task: asyncio.Task | None = None
        self._running_batch = False

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self, timeout: float = 30.0) -> None:
        """Answer every queued job, then stop the worker and its thread."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while ((self._jobs or self._graph_jobs or self._running_batch)
               and loop.time() < deadline):
            await asyncio.sleep(0.005)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        for job in (*self._jobs, *self._graph_jobs):
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    @contextmanager
    def tracking(self):
        """Count a request as in flight from arrival to answer (the batcher waits for
        in-flight requests that are not queued yet)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def predict(self, model: ServedModel, rows: list[list]
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, index of the predicted class) of `rows` under a classifier;
        (predicted values, standard deviations or None) under a regressor."""
        if self._task is None:
            raise RuntimeError("the micro-batcher is not running")
        if self._answers_inline(model, len(rows)):
            if self.in_flight > 1 or self._graph_jobs:  # others to coalesce with
                return await self._queue_for_graph(model, rows)
            # Alone: nothing to coalesce with, so no queue and no wait.
            inline = _compiled_answer(model, rows)
            if inline is not None:
                if self.metrics is not None:
                    self.metrics.batch_rows.observe(len(rows))
                return inline
            # else near ties or non-finite values: the predict thread's work
        return await self._queue_for_thread(
            _Job(model, rows, asyncio.get_running_loop().create_future()))

    async def _queue_for_thread(self, job: _Job) -> tuple[np.ndarray, np.ndarray | None]:
        self._jobs.append(job)
        self._wakeup.set()
        return await job.future

    async def _queue_for_graph(self, model: ServedModel, rows: list[list]
                               ) -> tuple[np.ndarray, np.ndarray | None]:
        loop = asyncio.get_running_loop()
        job = _Job(model, rows, loop.create_future())
        if not self._graph_jobs:
            # The drain runs after the callbacks already ready: the requests that arrived
            # with this one queue themselves first.
            loop.call_soon(self._drain_graph)
        self._graph_jobs.append(job)
        return await job.future

    def _drain_graph(self) -> None:
        """One graph call for the oldest queued compiled job and those after it on the
        same model (up to max_rows, never more than INLINE_ROWS: the loop's share stays
        tens of microseconds whatever ML_API_MICRO_BATCH_ROWS says). A job with a row
        the graph cannot answer alone (or every job, when the graph fails) goes to the
        predict thread's queue, where the Pipeline answers it and a failing job is
        isolated."""
        batch = _take(self._graph_jobs, min(self.max_rows, INLINE_ROWS))
        if self._graph_jobs:
            asyncio.get_running_loop().call_soon(self._drain_graph)
        rows = batch[0].rows if len(batch) == 1 else [r for job in batch for r in job.rows]
        try:
            answered = batch[0].model.compiled_rows(rows)
        except Exception:  # noqa: BLE001 - the Pipeline's answer or error stands
            answered = None
        start = graph_rows = 0
        for job in batch:
            end = start + len(job.rows)
            if answered is not None and answered[2][start:end].all():
                outputs, extra, _ = answered
                _settle(job.future, result=(outputs[start:end],
                                            None if extra is None else extra[start:end]))
                graph_rows += end - start
            elif not job.future.done():  # the client is still there
                self._jobs.append(job)
                self._wakeup.set()
            start = end
        if graph_rows and self.metrics is not None:  # the rest are counted in the thread
            self.metrics.batch_rows.observe(graph_rows)

    def _answers_inline(self, model: ServedModel, rows: int) -> bool:
        """Whether the compiled graph may answer `rows` rows on the event loop."""
        return self.inline and model.compiled is not None and rows <= INLINE_ROWS

    def _expected_jobs(self) -> float:
        return max(self.in_flight, self._recent_jobs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = loop.time() + self.max_wait_s
            while (len(self._jobs) < self._expected_jobs() - 0.5
                   and sum(len(j.rows) for j in self._jobs) < self.max_rows):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on
                    break
            batch = _take(self._jobs, self.max_rows)
            self._recent_jobs = 0.7 * self._recent_jobs + 0.3 * len(batch)
            self._running_batch = True
            try:
                await self._execute(batch, loop)
            finally:
                self._running_batch = False

    async def _execute(self, batch: list[_Job], loop) -> None:
        model = batch[0].model
        rows = batch[0].rows if len(batch) == 1 else [r for job in batch for r in job.rows]
        if self.metrics is not None:
            self.metrics.batch_rows.observe(len(rows))
        try:
            outputs, extra = await loop.run_in_executor(self._executor, self._predict_fn, model,
                                                        rows)
        except Exception as exc:  # noqa: BLE001 - isolate the job that fails
            if len(batch) == 1:
                _settle(batch[0].future, exception=exc)
                return
            for job in batch:  # one bad job must not fail the others
                await self._execute([job], loop)
            return
        _split(batch, outputs, extra)


def _take(jobs: deque[_Job], max_rows: int) -> list[_Job]:
    """The oldest job and the jobs after it on the same model, up to max_rows."""
    first = jobs.popleft()
    batch, rows = [first], len(first.rows)
    while jobs and jobs[0].model is first.model and rows + len(jobs[0].rows) <= max_rows:
        job = jobs.popleft()
        batch.append(job)
        rows += len(job.rows)
    return batch


def _compiled_answer(model: ServedModel, rows: list[list]
                     ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The compiled graph's answer to `rows` when it answers every row alone; None when
    it cannot (or fails: the predict thread then answers, or isolates the bad job)."""
    try:
        return model.compiled_answer(rows)
    except Exception:  # noqa: BLE001 - the Pipeline's answer or error stands
        return None


def _split(batch: list[_Job], outputs: np.ndarray, extra: np.ndarray | None) -> None:
    """Each job's rows of a batch's outputs, in order."""
    start = 0
    for job in batch:
        end = start + len(job.rows)
        _settle(job.future, result=(outputs[start:end],
                                    None if extra is None else extra[start:end]))
        start = end


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None):
    if future.done():  # the client went away
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
