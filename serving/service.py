"""The service's shared state, and the one path every prediction takes.

The one prediction handler (serving/protocols/base.py) reaches it through the app's
state, the other routes through the `get_service` dependency. `answer` runs validated
rows through the micro-batcher on the model the request started with, then appends
every row to the prediction log and, in the default commit mode,
waits until the log has committed them before the answer goes out: a 200 means
the rows are stored. When the log cannot take or commit them in time it raises
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
from collections.abc import Callable
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
from serving.batcher import MicroBatcher
from serving.http.metrics import ServiceMetrics
from serving.model.input_limits import InputOverflow, NonFinitePrediction
from serving.model.served import ServedModel, intervals
from serving.model.store import ModelStore
from serving.rollout import RolloutRouter, request_key
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

DROP_LOG_INTERVAL_SECONDS = 10.0  # at most one "rows dropped" error line per interval
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
        await self._store(log, model, rows, request_id, predicted, probabilities, flags,
                          variant, latency, failed)
        if model.is_regression:
            self.metrics.observe_values(model.version, answer.values)
        else:
            self.metrics.count_predictions(model.version, predicted)
        self.metrics.count_variant(variant, model.version, len(rows))
        if flag_counts:
            self.metrics.count_input_flags(flag_counts)
        return answer

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
        now = datetime.now(timezone.utc)
        names = model.feature_names
        records = [*(failed or ()),
                   *(PredictionRecord(now, request_id, i, model.name, model.version, names,
                                      row, predicted[i], probabilities[i],
                                      flags[i] if flags else "", variant, latency_ms)
                     for i, row in enumerate(rows))]
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
            raise PredictionLogUnavailable(
                f"the prediction log did not commit this request's {len(records)} rows "
                f"within {timeout:g}s (ML_PREDICTION_LOG_COMMIT_TIMEOUT_SECONDS)",
                max(1.0, math.ceil(timeout))) from None

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
