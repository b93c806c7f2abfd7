"""The service's shared state, and the one path every prediction takes.

The one prediction handler (serving/protocols/base.py) reaches it through the app's
state, the other routes through the `get_service` dependency. `answer` runs validated
rows through the micro-batcher on the model the request started with, then appends
every row to the prediction log and, in the default commit mode,
waits until the log has committed them before the answer goes out: a 200 means
the rows are stored. Small requests answered while others are in flight (the compiled
runtime's coalesced rows) share one log append and one metrics update per loop tick;
a lone request appends at once. When the log cannot take or commit them in time it raises
`PredictionLogUnavailable`, which the app answers 503 with Retry-After.

During a gradual rollout (serving/rollout.py) `choose` picks who answers a request and
`answer` runs it: the canary (the champion when the canary fails), or the champion
with a shadow copy scored by the challenger after the answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from fastapi import Request

from ml_assets.core.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionRecord,
)
from ml_assets.core.rollout.plan import CANARY, CHAMPION, SHADOW
from serving.batcher import INLINE_ROWS, MicroBatcher
from serving.http.metrics import ServiceMetrics
from serving.model.input_limits import InputOverflow, NonFinitePrediction
from serving.model.served import ServedModel, intervals
from serving.model.store import ModelStore
from serving.rollout import RolloutRouter, request_key
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

DROP_LOG_INTERVAL_SECONDS = 10.0  # at most one "rows dropped" error line per interval
# Requests of at most this many rows share one log append per loop tick when others
# are in flight (the compiled runtime's coalesced requests; larger ones append alone).
SHARED_ROWS = INLINE_ROWS
# Re-validates a request's body for another model (its rows for that model's inputs);
# raises the route's client error (ValidationError, InvocationError, V2Error).
RowsFor = Callable[[ServedModel], list[list]]


@dataclass
class Service:
    settings: ServingSettings
    metrics: ServiceMetrics
    store: ModelStore
    batcher: MicroBatcher
    log: PredictionLog | None = None
    # The rollout's router (serving/rollout.py); None: the champion answers alone.
    router: RolloutRouter | None = None
    _dropped_since_report: int = field(default=0, repr=False)
    _last_drop_report: float = field(default=0.0, repr=False)
    _shared: _SharedAppend | None = field(default=None, repr=False)  # this tick's append

    def not_ready_reason(self) -> str:
        return ("no model is being served: "
                + (self.store.last_error or f"{self.settings.model_uri} is not loaded yet"))

    @property
    def durable(self) -> bool:
        return self.settings.log_ack == "commit"

    def choose(self, champion: ServedModel, scope, request_id: str
               ) -> tuple[ServedModel, str, ServedModel | None]:
        """The rollout's choice for this request (see RolloutRouter.choose)."""
        if self.router is None:
            return champion, CHAMPION, None
        return self.router.choose(champion, request_key(scope, request_id))

    async def answer(self, champion: ServedModel, model: ServedModel, variant: str,
                     shadow: ServedModel | None, rows: list[list], request_id: str,
                     rows_for: RowsFor) -> Answer:
        """Answer `rows` (validated for `model`, the one `choose` picked) the way the
        rollout says. Canary: the challenger answers; when it fails with anything but a
        client error (InputOverflow and its kind, which the client gets) the champion
        answers instead (rows re-validated for it by `rows_for` when its inputs
        differ), and a log row per row records the canary's failure with it. Shadow:
        the champion answers (committed as usual) and the challenger scores a copy
        after the answer, off the request path (see `_copy_to_shadow`)."""
        failed: list[PredictionRecord] = []
        if variant == CANARY:
            started = time.perf_counter()
            try:
                return await self._run(model, rows, request_id, CANARY)
            except (InputOverflow, PredictionLogUnavailable):
                raise  # the client's values, or the log: not the canary's fault
            except Exception as exc:  # noqa: BLE001 - the champion answers instead
                latency = (time.perf_counter() - started) * 1000.0
                error = _error_text(exc)
                self.metrics.rollout_failures.labels(CANARY).inc()
                logger.warning("canary version %s failed on request %s (%s); the champion "
                               "(version %s) answers", model.version, request_id, error,
                               champion.version)
                failed = _failure_records(model, rows, request_id, CANARY, latency, error)
            if not same_inputs(model, champion):
                rows = rows_for(champion)
            model, variant = champion, CHAMPION
        answer = await self._run(model, rows, request_id, variant, failed)
        if shadow is not None:
            self._copy_to_shadow(shadow, model, rows, request_id, rows_for)
        return answer

    async def _run(self, model: ServedModel, rows: list[list], request_id: str, variant: str,
                   failed: list[PredictionRecord] | None = None) -> Answer:
        """Predict `rows` with `model`, log them (with `failed`: a canary's failure rows)
        as `variant` and count them."""
        log = self.log
        assert log is not None, "the app's lifespan opens the prediction log first"
        if self.durable:
            reason = log.unavailable_reason()  # refuse before spending model time
            if reason is not None:
                raise PredictionLogUnavailable(reason, log.retry_seconds)
        flags, flag_counts = model.requests.input_flags(rows)  # accept policy only
        started = time.perf_counter()
        outputs, extra = await self.batcher.predict(model, rows)
        latency = (time.perf_counter() - started) * 1000.0
        answer, predicted, probabilities = _answer(model, variant, outputs, extra)
        counted = (answer, len(rows), flag_counts)
        if self.durable and len(rows) <= SHARED_ROWS and (
                self._shared is not None or self.batcher.in_flight > 1):
            # Others are in flight: one log append (and one metrics update) for every
            # request that gets here in this loop tick. Alone: appended at once.
            await self._share(log, _records(model, rows, request_id, predicted,
                                            probabilities, flags, variant, latency, failed),
                              counted)
            return answer
        await self._store(log, model, rows, request_id, predicted, probabilities, flags,
                          variant, latency, failed)
        self._count((counted,))
        return answer

    def _count(self, answered: Sequence[tuple[Answer, int, dict]]) -> None:
        """Metrics of answered requests ((answer, rows, input flag counts)), one update
        per label set."""
        if len(answered) == 1:
            (answer, rows, flag_counts), = answered
            model = answer.model
            if model.is_regression:
                self.metrics.observe_values(model.version, answer.values)
            else:
                self.metrics.count_predictions(model.version, answer.labels)
            self.metrics.count_variant(answer.variant, model.version, rows)
            if flag_counts:
                self.metrics.count_input_flags(flag_counts)
            return
        labels: dict[str, list[str]] = {}
        variants: Tally = Tally()
        flags: Tally = Tally()
        for answer, rows, flag_counts in answered:
            model = answer.model
            if model.is_regression:
                self.metrics.observe_values(model.version, answer.values)
            else:
                labels.setdefault(model.version, []).extend(answer.labels)
            variants[(answer.variant, model.version)] += rows
            if flag_counts:
                flags.update(flag_counts)
        for version, predicted in labels.items():
            self.metrics.count_predictions(version, predicted)
        for (variant, version), rows in variants.items():
            self.metrics.count_variant(variant, version, rows)
        if flags:
            self.metrics.count_input_flags(dict(flags))

    async def _share(self, log: PredictionLog, records: list[PredictionRecord],
                     counted: tuple[Answer, int, dict]) -> None:
        """Wait for `records` to be committed as part of this loop tick's shared append
        (see `_SharedAppend`); counted in the metrics once committed."""
        loop = asyncio.get_running_loop()
        group = self._shared
        if group is None or len(group.records) + len(records) > log.batch_rows:
            # (a full group is appended as it is; the rest share a new one)
            group = self._shared = _SharedAppend()
            loop.call_soon(self._append_shared, log, group)
        waiter = loop.create_future()
        group.records += records
        group.waiters.append((waiter, len(records), counted))
        await waiter

    def _append_shared(self, log: PredictionLog, group: _SharedAppend) -> None:
        """Append a tick's rows as one log entry; its commit settles every waiter."""
        if self._shared is group:
            self._shared = None
        self._append_group(log, group)

    def _append_group(self, log: PredictionLog, group: _SharedAppend) -> None:
        try:
            committed = log.append(group.records)
        except Exception as exc:  # noqa: BLE001 - refused: every request hears why
            if len(group.waiters) > 1:
                # Refused as a whole (e.g. more rows than the queue has room for): each
                # request appends alone, so as many as fit are taken and the others
                # hear the queue as it is.
                for alone in group.split():
                    self._append_group(log, alone)
                return
            group.settle(exc)
            return
        loop = asyncio.get_running_loop()
        timeout = self.settings.log_commit_timeout_seconds
        timer = loop.call_later(timeout, group.expire, timeout)

        def done(future) -> None:  # in the writer thread
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._committed, group, future, timer)

        committed.add_done_callback(done)

    def _committed(self, group: _SharedAppend, future, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        error = future.exception()
        if error is None:  # the requests still waiting are answered: count them
            self._count([counted for waiter, _, counted in group.waiters
                         if not waiter.done()])
        group.settle(error)

    def _copy_to_shadow(self, shadow: ServedModel, model: ServedModel, rows: list[list],
                        request_id: str, rows_for: RowsFor) -> None:
        """Score `rows` with the shadow challenger in the shadow lane (its own thread,
        bounded by ML_API_SHADOW_MAX_IN_FLIGHT; over it the copy is shed and counted)
        and offer its rows to the log as variant "shadow" (best effort: never waited
        for)."""
        router = self.router
        log = self.log
        if router is None or log is None:
            return

        async def score() -> None:
            started = time.perf_counter()
            names, shadow_rows = model.feature_names, rows
            try:
                if not same_inputs(shadow, model):
                    shadow_rows = await asyncio.to_thread(rows_for, shadow)
                    names = shadow.feature_names
                # The shadow lane: neither the event loop nor the champion's predict
                # thread and lock (serving/shadow_lane.py).
                outputs, extra = await router.lane.predict(shadow, shadow_rows)
                latency = (time.perf_counter() - started) * 1000.0
                _, predicted, probabilities = _answer(shadow, SHADOW, outputs, extra)
            except Exception as exc:  # noqa: BLE001 - counted and logged, never answered
                error = _error_text(exc)
                self.metrics.rollout_failures.labels(SHADOW).inc()
                logger.warning("shadow version %s failed on request %s: %s", shadow.version,
                               request_id, error)
                records = _failure_records(shadow, shadow_rows, request_id, SHADOW,
                                           (time.perf_counter() - started) * 1000.0, error,
                                           names)
                if not log.offer(records):
                    self._dropped(len(records))
                return
            flags, _ = shadow.requests.input_flags(shadow_rows)
            now = datetime.now(timezone.utc)
            records = [PredictionRecord(now, request_id, i, shadow.name, shadow.version,
                                        shadow.feature_names, row, predicted[i],
                                        probabilities[i], flags[i] if flags else "",
                                        SHADOW, latency)
                       for i, row in enumerate(shadow_rows)]
            if log.offer(records):
                self.metrics.count_variant(SHADOW, shadow.version, len(records))
            else:
                self._dropped(len(records))

        router.spawn_shadow(score)

    async def _store(self, log: PredictionLog, model: ServedModel, rows: list[list],
                     request_id: str, predicted: list[str],
                     probabilities: list[dict[str, float]], flags: list[str] | None,
                     variant: str = CHAMPION, latency_ms: float = math.nan,
                     failed: list[PredictionRecord] | None = None) -> None:
        """Log one request's rows (after `failed`, the canary's failure rows it had):
        committed (commit mode) or offered (async mode)."""
        records = _records(model, rows, request_id, predicted, probabilities, flags,
                           variant, latency_ms, failed)
        if self.durable:
            await self._commit(log, records)
        elif not log.offer(records):
            self._dropped(len(records))

    async def _commit(self, log: PredictionLog, records: list[PredictionRecord]) -> None:
        """Append (in memory, no I/O) and wait for the writer thread's commit."""
        timeout = self.settings.log_commit_timeout_seconds
        committed = asyncio.wrap_future(log.append(records))
        try:
            await asyncio.wait_for(committed, timeout)
        except asyncio.TimeoutError:
            raise _not_committed(len(records), timeout) from None

    def _dropped(self, rows: int) -> None:
        self.metrics.log_dropped_rows.inc(rows)
        self._dropped_since_report += rows
        now = time.monotonic()
        if now - self._last_drop_report >= DROP_LOG_INTERVAL_SECONDS:
            logger.error("prediction log queue full (ML_PREDICTION_LOG_QUEUE_ROWS=%d): %d "
                         "rows answered but NOT logged since the last report "
                         "(ML_PREDICTION_LOG_ACK=async)", self.settings.log_queue_rows,
                         self._dropped_since_report)
            self._dropped_since_report = 0
            self._last_drop_report = now


@dataclass(frozen=True)
class Answer:
    """One request's answer: who gave it (`model`, `variant`) and what. Classifiers:
    `labels`, `probabilities` and `values` (the predicted class values); regressors:
    `values` (floats) and `intervals` (None without a standard deviation)."""

    model: ServedModel
    variant: str
    labels: list[str]
    probabilities: list[dict[str, float]]
    values: list
    intervals: list[dict[str, float]] | None = None


def _answer(model: ServedModel, variant: str, outputs: np.ndarray, extra: np.ndarray | None
            ) -> tuple[Answer, list[str], list[dict[str, float]]]:
    """(the Answer, the logged predictions as text, the logged probabilities) of the
    batcher's outputs for `model`. NonFinitePrediction when a regressor's value (or
    standard deviation) is not finite."""
    if model.is_regression:
        std = extra
        finite = np.isfinite(outputs) if std is None else (np.isfinite(outputs)
                                                           & np.isfinite(std))
        if not finite.all():
            raise NonFinitePrediction(np.flatnonzero(~finite).tolist())
        values: list[float] = outputs.tolist()
        bounds = None if std is None else intervals(values, std.tolist())
        return (Answer(model, variant, [], [], values, bounds), [repr(v) for v in values],
                [{}] * len(values))
    assert extra is not None, "a classifier's batch gives the predicted class indices"
    labels = model.labels
    indices = extra.tolist()
    predicted = [labels[i] for i in indices]
    probabilities = [dict(zip(labels, p, strict=True)) for p in outputs.tolist()]
    return (Answer(model, variant, predicted, probabilities,
                   [model.class_values[i] for i in indices]), predicted, probabilities)


@dataclass(slots=True)
class _SharedAppend:
    """The log rows of the requests that reached `Service._share` in one loop tick:
    appended as one entry (one Future, one lock, one wake-up of the writer, one hop
    back to the loop) where each request used to append its own."""

    records: list[PredictionRecord] = field(default_factory=list)
    # (the request's waiter, its rows, what its answer adds to the metrics)
    waiters: list[tuple[asyncio.Future, int, tuple]] = field(default_factory=list)

    def settle(self, error: BaseException | None) -> None:
        for waiter, _, _ in self.waiters:
            if not waiter.done():  # not timed out, client still there
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def split(self) -> list[_SharedAppend]:
        """One group per request still waiting, with its own rows."""
        alone: list[_SharedAppend] = []
        start = 0
        for waiter, rows, counted in self.waiters:
            if not waiter.done():
                alone.append(_SharedAppend(self.records[start:start + rows],
                                           [(waiter, rows, counted)]))
            start += rows
        return alone

    def expire(self, timeout: float) -> None:
        """The commit timeout passed: each waiting request is answered 503 (the text
        each one got when it appended alone)."""
        for waiter, rows, _ in self.waiters:
            if not waiter.done():
                waiter.set_exception(_not_committed(rows, timeout))


def _not_committed(rows: int, timeout: float) -> PredictionLogUnavailable:
    return PredictionLogUnavailable(
        f"the prediction log did not commit this request's {rows} rows "
        f"within {timeout:g}s (ML_PREDICTION_LOG_COMMIT_TIMEOUT_SECONDS)",
        max(1.0, math.ceil(timeout)))


def _records(model: ServedModel, rows: list[list], request_id: str, predicted: list[str],
             probabilities: list[dict[str, float]], flags: list[str] | None, variant: str,
             latency_ms: float, failed: list[PredictionRecord] | None
             ) -> list[PredictionRecord]:
    """One request's log rows (after `failed`, the canary's failure rows it had)."""
    now = datetime.now(timezone.utc)
    names = model.feature_names
    return [*(failed or ()),
            *(PredictionRecord(now, request_id, i, model.name, model.version, names, row,
                               predicted[i], probabilities[i], flags[i] if flags else "",
                               variant, latency_ms)
              for i, row in enumerate(rows))]


def same_inputs(a: ServedModel, b: ServedModel) -> bool:
    """Whether rows validated for `a` are rows of `b` too (the same feature specs)."""
    return a.requests is b.requests or a.features == b.features


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:2000] if text else type(exc).__name__


def _failure_records(model: ServedModel, rows: list[list], request_id: str, variant: str,
                     latency_ms: float, error: str,
                     names: tuple[str, ...] | None = None) -> list[PredictionRecord]:
    """The log rows of a challenger's failure: no prediction, `error` set."""
    now = datetime.now(timezone.utc)
    return [PredictionRecord(now, request_id, i, model.name, model.version,
                             names or model.feature_names, row, "", {}, "", variant,
                             latency_ms, error)
            for i, row in enumerate(rows)]


async def get_service(request: Request) -> Service:
    """The app's Service (an async dependency: FastAPI runs sync ones in a thread)."""
    return request.app.state.service
