"""The service's shared state, and the one path every prediction takes.

Routes reach it through the `get_service` dependency. `predict_rows` runs
validated rows through the micro-batcher on the model the request started with,
then appends every row to the prediction log and, in the default commit mode,
waits until the log has committed them before the answer goes out: a 200 means
the rows are stored. When the log cannot take or commit them in time it raises
`PredictionLogUnavailable`, which the app answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from fastapi import Request

from ml_assets.core.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionRecord,
)
from serving.batcher import MicroBatcher
from serving.input_limits import NonFinitePrediction
from serving.metrics import ServiceMetrics
from serving.model_store import ModelStore, ServedModel, intervals
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

DROP_LOG_INTERVAL_SECONDS = 10.0  # at most one "rows dropped" error line per interval


@dataclass
class Service:
    settings: ServingSettings
    metrics: ServiceMetrics
    store: ModelStore
    batcher: MicroBatcher
    log: PredictionLog | None = None
    _dropped_since_report: int = field(default=0, repr=False)
    _last_drop_report: float = field(default=0.0, repr=False)

    def not_ready_reason(self) -> str:
        return ("no model is being served: "
                + (self.store.last_error or f"{self.settings.model_uri} is not loaded yet"))

    @property
    def durable(self) -> bool:
        return self.settings.log_ack == "commit"

    async def predict_rows(self, model: ServedModel, rows: list[list], request_id: str
                           ) -> tuple[list[str], list[dict[str, float]], list]:
        """(predicted labels, class probabilities per row, predicted class values) of
        `rows`; every row is appended to the prediction log (and, in commit mode,
        committed) and counted; values the accept policy answered although the schema's
        checks exclude them are counted and flagged in their log rows.
        PredictionLogUnavailable when the log cannot take
        or commit the rows in time: nothing is acknowledged then."""
        log = self.log
        assert log is not None, "the app's lifespan opens the prediction log first"
        if self.durable:
            reason = log.unavailable_reason()  # refuse before spending model time
            if reason is not None:
                raise PredictionLogUnavailable(reason, log.retry_seconds)
        flags, flag_counts = model.requests.input_flags(rows)  # accept policy only
        proba, best = await self.batcher.predict(model, rows)
        labels = model.labels
        assert best is not None, "a classifier's batch gives the predicted class indices"
        indices = best.tolist()
        predicted = [labels[i] for i in indices]
        probabilities = [dict(zip(labels, p, strict=True)) for p in proba.tolist()]
        await self._store(log, model, rows, request_id, predicted, probabilities, flags)
        self.metrics.count_predictions(model.version, predicted)
        if flag_counts:
            self.metrics.count_input_flags(flag_counts)
        return predicted, probabilities, [model.class_values[i] for i in indices]

    async def predict_values(self, model: ServedModel, rows: list[list], request_id: str
                             ) -> tuple[list[float], list[dict[str, float]] | None]:
        """A regressor's predicted values of `rows`, and their 95% prediction intervals
        ({lower, upper, level}) when its estimator gives a standard deviation (else
        None). Logged like `predict_rows`: the value as text in `prediction`, no
        probabilities (so no confidence); the predicted values are observed in
        ml_api_predicted_value."""
        log = self.log
        assert log is not None, "the app's lifespan opens the prediction log first"
        if self.durable:
            reason = log.unavailable_reason()
            if reason is not None:
                raise PredictionLogUnavailable(reason, log.retry_seconds)
        flags, flag_counts = model.requests.input_flags(rows)
        mean, std = await self.batcher.predict(model, rows)
        finite = np.isfinite(mean) if std is None else np.isfinite(mean) & np.isfinite(std)
        if not finite.all():
            raise NonFinitePrediction(np.flatnonzero(~finite).tolist())
        values: list[float] = mean.tolist()
        await self._store(log, model, rows, request_id, [repr(v) for v in values],
                          [{}] * len(values), flags)
        self.metrics.observe_values(model.version, values)
        if flag_counts:
            self.metrics.count_input_flags(flag_counts)
        return values, None if std is None else intervals(values, std.tolist())

    async def _store(self, log: PredictionLog, model: ServedModel, rows: list[list],
                     request_id: str, predicted: list[str],
                     probabilities: list[dict[str, float]], flags: list[str] | None) -> None:
        """Log one request's rows: committed (commit mode) or offered (async mode)."""
        now = datetime.now(timezone.utc)
        names = model.feature_names
        records = [PredictionRecord(now, request_id, i, model.name, model.version, names, row,
                                    predicted[i], probabilities[i],
                                    flags[i] if flags else "")
                   for i, row in enumerate(rows)]
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


async def get_service(request: Request) -> Service:
    """The app's Service (an async dependency: FastAPI runs sync ones in a thread)."""
    return request.app.state.service
