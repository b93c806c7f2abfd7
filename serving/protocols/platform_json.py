"""The platform's own JSON wire format (/predict: one record; /predict/batch: records),
as adapters of the one prediction handler (serving/protocols/base.py).

Bodies are validated by the served model's generated request models (a batch of plainly
valid records column by column, serving/protocols/v2/columns.py); a body whose
records carry far more keys than the schema has columns is refused before pydantic sees
it (serving/http/key_flood.py). Errors are `{"detail": [...], "message": "..."}` (422).
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from serving.http.guards import off_loop
from serving.http.key_flood import key_flood
from serving.http.responses import OrjsonResponse, unavailable
from serving.model.input_limits import InputOverflow
from serving.model.served import ServedModel
from serving.protocols.base import Decoded
from serving.protocols.v2.columns import record_rows
from serving.protocols.validation_errors import validation_detail, validation_message
from serving.service import Answer, Service

# Which variant answered (champion, or canary during a canary rollout): ml_assets.core.rollout.plan.
VARIANT_HEADER = "X-Model-Variant"


def unavailable_answer(service: Service, mlflow_style: bool = False) -> Response:
    """503 with Retry-After: no model is served yet."""
    return unavailable(service.not_ready_reason(), int(service.settings.poll_seconds or 5),
                       mlflow_style)


def overflow_answer(exc: InputOverflow, mlflow_style: bool = False) -> Response:
    """Client values the model cannot hold even after validation: 422 (400 MLflow-style
    on /invocations) naming the features, never a 500."""
    if mlflow_style:
        return OrjsonResponse({"error_code": "BAD_REQUEST", "message": f"invalid input: {exc}",
                               "detail": exc.detail()}, status_code=400)
    return OrjsonResponse({"detail": exc.detail(), "message": f"invalid input: {exc}"},
                          status_code=422)


def _value(value: float, interval: dict | None) -> dict:
    """A regressor's answer for one row: no confidence, no probabilities."""
    return {"prediction": value} if interval is None else {"prediction": value,
                                                           "prediction_interval": interval}


def _answers(result: Answer) -> list[dict]:
    """One answer per row: the class, its confidence and every class probability, or a
    regressor's value (and interval)."""
    if result.model.is_regression:
        bounds = result.intervals
        return [_value(v, bounds[i] if bounds else None) for i, v in enumerate(result.values)]
    return [{"prediction": label, "confidence": p[label], "probabilities": p}
            for label, p in zip(result.labels, result.probabilities, strict=True)]


class PlatformJson:
    """/predict/batch: `{"records": [...]}` (at most ML_API_MAX_BATCH), answered in order.
    `Record` below is /predict's one record."""

    client_errors: tuple[type[Exception], ...] = (ValidationError,)

    def served(self, service: Service, request: Request) -> ServedModel | Response:
        model = service.store.current
        return unavailable_answer(service) if model is None else model

    def rollout(self) -> bool:
        return True

    def max_records(self, service: Service) -> int:
        return service.settings.max_batch

    def rows_of(self, body: bytes, model: ServedModel, limit: int) -> list[list]:
        """`body`'s rows for `model`: checked column by column when plainly valid (one
        orjson parse, vectorised checks: serving/protocols/v2/columns.py), else by the
        generated pydantic model, which words every error."""
        requests = model.requests
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if type(payload) is dict and len(payload) == 1:
            rows = record_rows(payload.get("records"), requests, limit)
            if rows is not None:
                return rows
        batch = requests.batch.model_validate_json(body)
        return [requests.row_of(record) for record in requests.records_of(batch)]

    async def decode(self, request: Request, body: bytes, model: ServedModel,
                     service: Service) -> Decoded | Response:
        # Counted off the event loop for large bodies, like the validation below.
        columns = len(model.feature_names) + len(model.excluded_columns)
        problem = await off_loop(body, key_flood, body, columns, self.max_records(service))
        if problem is not None:
            return OrjsonResponse({"detail": [{"loc": ["body"], "msg": problem,
                                               "type": "too_many_fields"}],
                                   "message": f"invalid input: {problem}"}, status_code=422)
        return Decoded(await off_loop(body, self.rows_of, body, model,
                                      self.max_records(service)))

    def rows_for(self, body: bytes, decoded: Decoded, other: ServedModel,
                 service: Service) -> list[list]:
        return self.rows_of(body, other, self.max_records(service))

    def client_error(self, exc: Exception, model: ServedModel) -> Response:
        assert isinstance(exc, ValidationError)
        names = frozenset(model.feature_names)
        return OrjsonResponse({"detail": validation_detail(exc, features=names),
                               "message": validation_message(exc, "record", names)},
                              status_code=422)

    def overflow(self, exc: InputOverflow) -> Response:
        return overflow_answer(exc)

    def header(self, result: Answer, request_id: str) -> dict:
        model = result.model
        return {"request_id": request_id, "model_name": model.name,
                "model_version": model.version, "variant": result.variant}

    def render(self, result: Answer, decoded: Decoded, request_id: str) -> Response:
        return OrjsonResponse({**self.header(result, request_id),
                               "predictions": _answers(result)},
                              headers={VARIANT_HEADER: result.variant})


class Record(PlatformJson):
    """/predict: one record, answered as one prediction."""

    def max_records(self, service: Service) -> int:
        return 1

    def rows_of(self, body: bytes, model: ServedModel, limit: int) -> list[list]:
        requests = model.requests  # one record: pydantic is quicker than columns
        return [requests.row_of(requests.record.model_validate_json(body))]

    def render(self, result: Answer, decoded: Decoded, request_id: str) -> Response:
        return OrjsonResponse({**_answers(result)[0], **self.header(result, request_id)},
                              headers={VARIANT_HEADER: result.variant})


RECORD = Record()
BATCH = PlatformJson()
