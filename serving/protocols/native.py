"""The REST endpoints outside /v2: the platform's own JSON routes (/health, /ready,
/predict, /predict/batch, /model, /admin/reload, /metrics) and MLflow's scoring-server
routes (/ping, /version, /invocations, whose body formats serving/protocols/mlflow.py
parses). `open_routes` never ask for a key; `protected_routes` do when one is set.

Prediction bodies are validated by the served model's generated request models
(not a static FastAPI body parameter) because they change when the model swaps;
their OpenAPI schemas are injected by the app factory from the same models.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from mlflow.version import VERSION as MLFLOW_VERSION
from pydantic import ValidationError

from serving.http.guards import UNSUPPORTED_MEDIA_TYPE, in_parser, off_loop, require_json
from serving.http.key_flood import key_flood
from serving.http.middleware import request_id_of
from serving.http.responses import (
    ErrorResponse,
    Health,
    InvocationsResponse,
    MlflowError,
    ModelInfo,
    OrjsonResponse,
    PredictBatchResponse,
    PredictResponse,
    Readiness,
    ReloadResult,
    unavailable,
)
from serving.model.input_limits import InputOverflow
from serving.model.request_models import BATCH_MODEL, INVOCATIONS_RECORD_MODEL, RECORD_MODEL
from serving.model.served import ServedModel
from serving.protocols.mlflow import InvocationError, is_parquet, parse_rows
from serving.protocols.validation_errors import validation_detail, validation_message
from serving.service import Service, get_service

ServiceDep = Annotated[Service, Depends(get_service)]

open_routes = APIRouter()
protected_routes = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body larger than ML_API_MAX_BODY_BYTES."},
    **UNSUPPORTED_MEDIA_TYPE,
    422: {"model": ErrorResponse, "description": "A feature is missing, unknown, mistyped, "
          "null (or NaN) where it may not be, infinite, too large for the model (after its "
          "preprocessing), or, under ML_API_INPUT_POLICY=reject, an unseen category or "
          "outside the schema's range; `detail` names each (in a batch, by record "
          "index)."},
    503: {"model": ErrorResponse, "description": "No model is being served yet, or the "
          "prediction log cannot commit the rows now (Retry-After says when to retry)."},
}
_JSON_ONLY = [Depends(require_json)]
# Which variant answered (champion, or canary during a canary rollout): ml_assets.core.rollout.plan.
VARIANT_HEADER = "X-Model-Variant"


def _json_body(schema_name: str, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}}


def _unavailable(service: Service, mlflow_style: bool = False) -> Response:
    return unavailable(service.not_ready_reason(), int(service.settings.poll_seconds or 5),
                       mlflow_style)


def _invalid(exc: ValidationError, index_word: str, features: tuple[str, ...]) -> Response:
    names = frozenset(features)
    return OrjsonResponse({"detail": validation_detail(exc, features=names),
                           "message": validation_message(exc, index_word, names)},
                          status_code=422)


async def _flooded(body: bytes, model: ServedModel, max_records: int = 1
                   ) -> Response | None:
    """422 naming the problem when the body's records carry far more keys than the
    schema has columns (serving/http/key_flood.py), before pydantic sees it; else None.
    Counted off the event loop for large bodies."""
    columns = len(model.feature_names) + len(model.excluded_columns)
    problem = await off_loop(body, key_flood, body, columns, max_records)
    if problem is None:
        return None
    return OrjsonResponse({"detail": [{"loc": ["body"], "msg": problem,
                                       "type": "too_many_fields"}],
                           "message": f"invalid input: {problem}"}, status_code=422)


def _overflow(exc: InputOverflow, mlflow_style: bool = False) -> Response:
    """Client values the model cannot hold even after validation: 422 (400 MLflow-style
    on /invocations) naming the features, never a 500."""
    if mlflow_style:
        return OrjsonResponse({"error_code": "BAD_REQUEST", "message": f"invalid input: {exc}",
                               "detail": exc.detail()}, status_code=400)
    return OrjsonResponse({"detail": exc.detail(), "message": f"invalid input: {exc}"},
                          status_code=422)


# -- health -------------------------------------------------------------------------

@open_routes.get("/health", response_model=Health, tags=["health"])
async def health() -> Response:
    """Liveness: the process answers (a model need not be loaded)."""
    return OrjsonResponse({"status": "ok"})


@open_routes.get("/ready", response_model=Readiness, tags=["health"],
                 responses={503: {"model": Readiness, "description": "No model loaded."}})
async def ready(service: ServiceDep) -> Response:
    """Readiness: 200 once a model is loaded, 503 before. While ready, `detail` names a
    candidate version that was refused (the served one keeps serving)."""
    model = service.store.current
    if model is None:
        return OrjsonResponse({"status": "not_ready", "model_name": service.settings.model_name,
                               "detail": service.not_ready_reason()}, status_code=503)
    body = {"status": "ready", "model_name": model.name, "model_version": model.version}
    refusal = service.store.refusal_detail()
    return OrjsonResponse({**body, "detail": refusal} if refusal else body)


@open_routes.get("/ping", tags=["mlflow"], response_class=Response,
                 responses={200: {"content": {"application/json": {}}},
                            503: {"description": "No model loaded."}})
async def ping(service: ServiceDep) -> Response:
    """MLflow scoring-server health check: 200 once a model is loaded."""
    status = 200 if service.store.current is not None else 503
    return Response("\n", status_code=status, media_type="application/json")


@open_routes.get("/version", tags=["mlflow"], response_class=Response,
                 responses={200: {"content": {"text/plain": {}}}})
async def mlflow_version() -> Response:
    """The MLflow version, as MLflow's scoring server answers it."""
    return Response(MLFLOW_VERSION, media_type="text/plain")


# -- predictions --------------------------------------------------------------------

@protected_routes.post(
    "/predict", response_model=PredictResponse, tags=["predict"], responses=_ERRORS,
    dependencies=_JSON_ONLY,
    openapi_extra=_json_body(RECORD_MODEL, "One record: the served model's features by "
                             "name (schema in components.schemas.PredictRequest)."))
async def predict(request: Request, service: ServiceDep) -> Response:
    """Predict one record. Classifier: the class, its confidence, every class
    probability. Regressor: the predicted number, and `prediction_interval` (95%) when
    the estimator gives a standard deviation. Both: request id, model name and version."""
    champion = service.store.current  # this request's model, even if a swap happens now
    if champion is None:
        return _unavailable(service)
    request_id = request_id_of(request.scope)
    model, variant, shadow = service.choose(champion, request.scope, request_id)
    with service.batcher.tracking():
        body = await request.body()
        flooded = await _flooded(body, model)
        if flooded is not None:
            return flooded
        try:  # a large body is validated in a parser thread, off the event loop
            record = await off_loop(body, model.requests.record.model_validate_json, body)
        except ValidationError as exc:
            return _invalid(exc, "record", model.feature_names)
        rows = [model.requests.row_of(record)]

        def rows_for(other: ServedModel) -> list[list]:
            return [other.requests.row_of(other.requests.record.model_validate_json(body))]

        try:
            result = await service.answer(champion, model, variant, shadow, rows, request_id,
                                          rows_for)
        except InputOverflow as exc:
            return _overflow(exc)
        except ValidationError as exc:  # the champion's schema, after a canary failed
            return _invalid(exc, "record", champion.feature_names)
    model = result.model
    if model.is_regression:
        answer = _value(result.values[0], result.intervals[0] if result.intervals else None)
    else:
        label, probabilities = result.labels[0], result.probabilities[0]
        answer = {"prediction": label, "confidence": probabilities[label],
                  "probabilities": probabilities}
    return OrjsonResponse({**answer, "request_id": request_id, "model_name": model.name,
                           "model_version": model.version, "variant": result.variant},
                          headers={VARIANT_HEADER: result.variant})


def _value(value: float, interval: dict | None) -> dict:
    """A regressor's answer for one row: no confidence, no probabilities."""
    return {"prediction": value} if interval is None else {"prediction": value,
                                                           "prediction_interval": interval}


@protected_routes.post(
    "/predict/batch", response_model=PredictBatchResponse, tags=["predict"], responses=_ERRORS,
    dependencies=_JSON_ONLY,
    openapi_extra=_json_body(BATCH_MODEL, "Records to predict, at most ML_API_MAX_BATCH."))
async def predict_batch(request: Request, service: ServiceDep) -> Response:
    """Predict many records (answered in order)."""
    champion = service.store.current
    if champion is None:
        return _unavailable(service)
    request_id = request_id_of(request.scope)
    model, variant, shadow = service.choose(champion, request.scope, request_id)
    with service.batcher.tracking():
        body = await request.body()
        flooded = await _flooded(body, model, service.settings.max_batch)
        if flooded is not None:
            return flooded
        try:  # a large body is validated in a parser thread, off the event loop
            batch = await off_loop(body, model.requests.batch.model_validate_json, body)
        except ValidationError as exc:
            return _invalid(exc, "record", model.feature_names)
        rows = [model.requests.row_of(record) for record in model.requests.records_of(batch)]

        def rows_for(other: ServedModel) -> list[list]:
            parsed = other.requests.batch.model_validate_json(body)
            return [other.requests.row_of(record) for record in other.requests.records_of(parsed)]

        try:
            result = await service.answer(champion, model, variant, shadow, rows, request_id,
                                          rows_for)
        except InputOverflow as exc:
            return _overflow(exc)
        except ValidationError as exc:  # the champion's schema, after a canary failed
            return _invalid(exc, "record", champion.feature_names)
    model = result.model
    if model.is_regression:
        bounds = result.intervals
        answers = [_value(v, bounds[i] if bounds else None)
                   for i, v in enumerate(result.values)]
    else:
        answers = [{"prediction": label, "confidence": p[label], "probabilities": p}
                   for label, p in zip(result.labels, result.probabilities, strict=True)]
    return OrjsonResponse({
        "request_id": request_id, "model_name": model.name, "model_version": model.version,
        "variant": result.variant, "predictions": answers},
        headers={VARIANT_HEADER: result.variant})


_INVOCATION_ROW = {"$ref": f"#/components/schemas/{INVOCATIONS_RECORD_MODEL}"}
_INVOCATION_FORMATS = {
    "oneOf": [
        {"title": "dataframe_split", "type": "object", "required": ["dataframe_split"],
         "properties": {"dataframe_split": {"type": "object", "required": ["columns", "data"],
                                            "properties": {
                                                "columns": {"type": "array",
                                                            "items": {"type": "string"}},
                                                "data": {"type": "array",
                                                         "items": {"type": "array"}},
                                                "index": {"type": "array"}}},
                        "params": {"type": "object"}}},
        {"title": "dataframe_records", "type": "object", "required": ["dataframe_records"],
         "properties": {"dataframe_records": {"type": "array", "minItems": 1,
                                              "items": _INVOCATION_ROW},
                        "params": {"type": "object"}}},
        {"title": "instances", "type": "object", "required": ["instances"],
         "properties": {"instances": {"type": "array", "minItems": 1,
                                      "items": _INVOCATION_ROW},
                        "params": {"type": "object"}}},
        {"title": "inputs", "type": "object", "required": ["inputs"],
         "properties": {"inputs": {"type": "object", "description": "column name → list of "
                                   "values (or one record)"},
                        "params": {"type": "object"}}},
    ],
    "description": "MLflow scoring protocol: rows follow "
                   "components.schemas.InvocationsRecord (the features of PredictRequest; "
                   "unknown columns are ignored).",
}


@protected_routes.post(
    "/invocations", response_model=InvocationsResponse, tags=["mlflow"],
    responses={400: {"model": MlflowError, "description": "Bad input (MLflow's error shape)."},
               413: _ERRORS[413], 415: {"model": MlflowError},
               503: {"model": MlflowError}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _INVOCATION_FORMATS},
        "text/csv": {"schema": {"type": "string", "description": "pandas.DataFrame.to_csv()"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    }}})
async def invocations_endpoint(request: Request, service: ServiceDep) -> Response:
    """MLflow's scoring protocol; answers {"predictions": [...]} like `mlflow models serve`
    (the predicted class per row, or a regressor's predicted number; model name, version
    and request id in X-Model-Name, X-Model-Version, X-Request-ID)."""
    champion = service.store.current
    if champion is None:
        return _unavailable(service, mlflow_style=True)
    request_id = request_id_of(request.scope)
    model, variant, shadow = service.choose(champion, request.scope, request_id)
    content_type = request.headers.get("content-type")
    with service.batcher.tracking():
        body = await request.body()
        # A large body, and any Parquet one, is parsed in a parser thread.
        parse = in_parser if is_parquet(content_type) else partial(off_loop, body)
        try:
            rows = await parse(parse_rows, body, content_type, model.requests,
                               service.settings.max_batch)
        except InvocationError as exc:
            return OrjsonResponse(exc.body(), status_code=exc.status)

        def rows_for(other: ServedModel) -> list[list]:
            return parse_rows(body, content_type, other.requests, service.settings.max_batch)

        try:
            result = await service.answer(champion, model, variant, shadow, rows, request_id,
                                          rows_for)
        except InputOverflow as exc:
            return _overflow(exc, mlflow_style=True)
        except InvocationError as exc:  # the champion's schema, after a canary failed
            return OrjsonResponse(exc.body(), status_code=exc.status)
    model = result.model
    return OrjsonResponse({"predictions": result.values}, headers={
        "X-Model-Name": model.name, "X-Model-Version": model.version,
        VARIANT_HEADER: result.variant})


# -- model and operations -----------------------------------------------------------

@protected_routes.get("/model", response_model=ModelInfo, tags=["model"],
                      responses={503: _ERRORS[503]})
async def model_info(service: ServiceDep) -> Response:
    """The served model: name, version, alias, training-run metrics, the features requests
    carry, the schema's excluded columns with their roles, the input policy;
    `refused`: the candidate version last refused while this one kept serving."""
    model = service.store.current
    if model is None:
        return _unavailable(service)
    rollout = service.router.describe() if service.router is not None else None
    return OrjsonResponse({**model.describe(),
                           "model_uri": f"models:/{model.name}/{model.version}",
                           "refused": service.store.refused, "rollout": rollout})


@protected_routes.post(
    "/admin/reload", response_model=ReloadResult, tags=["operations"],
    responses={409: {"model": ReloadResult, "description": "The candidate was rejected (the "
                     "champion, or with the champion unchanged a rollout's challenger, "
                     "`rollout.status: rejected`); the previous model keeps serving."},
               502: {"model": ReloadResult, "description": "The registry is unreachable."},
               503: {"model": ReloadResult, "description": "No champion exists yet."},
               413: _ERRORS[413], **UNSUPPORTED_MEDIA_TYPE,
               422: {"model": ErrorResponse, "description": "A body other than nothing or "
                     "`{}`, or a `force` that is not a boolean."}},
    dependencies=_JSON_ONLY,
    openapi_extra={"requestBody": {"required": True, "description": "`{}` (or nothing): "
                                   "options are query parameters; Content-Type "
                                   "application/json is required either way.", "content": {
                                       "application/json": {"schema": {
                                           "type": "object", "maxProperties": 0}}}}})
async def reload_model(request: Request, service: ServiceDep, force: Annotated[bool, Query(
        description="Reload even if the alias still points at the served version.")] = False
                       ) -> Response:
    """Look up the alias now and swap to its version if it changed (loads off the event
    loop; requests keep being answered by the current model meanwhile)."""
    body = await request.body()
    if body.strip() and body.strip() != b"{}":
        try:
            empty = orjson.loads(body) == {}
        except orjson.JSONDecodeError:
            empty = False
        if not empty:
            return OrjsonResponse({"detail": "the body must be empty or {}: options are "
                                   "query parameters"}, status_code=422)
    result = await asyncio.to_thread(service.store.refresh, force, True)
    status = {"rejected": 409, "registry_error": 502, "no_model": 503}.get(result["status"],
                                                                          200)
    if service.router is not None:  # the rollout too (a rejected challenger is retried)
        try:
            rollout = await asyncio.to_thread(service.router.refresh, True)
        except Exception as exc:  # noqa: BLE001 - the champion's answer still stands
            rollout = {"status": "error", "detail": f"{type(exc).__name__}: {exc}"}
        if rollout.get("status") not in ("none", None):
            result = {**result, "rollout": rollout}
        if rollout.get("status") == "rejected" and result["status"] == "unchanged":
            status = 409  # the only candidate of this reload, a challenger, was refused
    return OrjsonResponse(result, status_code=status)


@protected_routes.get("/metrics", tags=["operations"], response_class=Response,
                      responses={200: {"content": {"text/plain": {}},
                                       "description": "Prometheus text format."}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics: requests, latency, predictions by class (classifiers), a
    histogram of predicted values (regressors), model version, load failures,
    prediction-log backlog."""
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
