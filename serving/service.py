"""The service's shared state, and the one path every prediction takes.

Routes reach it through the `get_service` dependency. `predict_rows` runs
validated rows through the micro-batcher on the model the request started with,
then counts and logs every row before the answer goes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from fastapi import Request

from serving.batcher import MicroBatcher
from serving.metrics import ServiceMetrics
from serving.model_store import ModelStore, ServedModel
from serving.prediction_log import PredictionLog, PredictionRecord
from serving.settings import ServingSettings


@dataclass
class Service:
    settings: ServingSettings
    metrics: ServiceMetrics
    store: ModelStore
    batcher: MicroBatcher
    log: PredictionLog | None = None

    def not_ready_reason(self) -> str:
        return ("no model is being served: "
                + (self.store.last_error or f"{self.settings.model_uri} is not loaded yet"))

    async def predict_rows(self, model: ServedModel, rows: list[list], request_id: str
                           ) -> tuple[list[str], list[dict[str, float]], list]:
        """(predicted labels, class probabilities per row, predicted class values) of
        `rows`; every row is counted and appended to the prediction log."""
        proba, best = await self.batcher.predict(model, rows)
        labels = model.labels
        indices = best.tolist()
        predicted = [labels[i] for i in indices]
        probabilities = [dict(zip(labels, p, strict=True)) for p in proba.tolist()]
        now = datetime.now(timezone.utc)
        names = model.feature_names
        assert self.log is not None, "the app's lifespan opens the prediction log first"
        self.log.append_many([
            PredictionRecord(now, request_id, i, model.name, model.version, names, row,
                             predicted[i], probabilities[i]) for i, row in enumerate(rows)])
        self.metrics.count_predictions(model.version, predicted)
        return predicted, probabilities, [model.class_values[i] for i in indices]


async def get_service(request: Request) -> Service:
    """The app's Service (an async dependency: FastAPI runs sync ones in a thread)."""
    return request.app.state.service
