"""The REST endpoints outside /v2: the platform's own JSON routes (/health, /ready,
/predict, /predict/batch, /model, /admin/reload, /metrics) and MLflow's scoring-server
routes (/ping, /version, /invocations). `open_routes` never ask for a key;
`protected_routes` do when one is set. The prediction routes are one line each: the one
handler (serving/protocols/base.py) with their format's adapter (platform_json.py,
mlflow.py).

Prediction bodies are validated by the served model's generated request models
(not a static FastAPI body parameter) because they change when the model swaps;
their OpenAPI schemas are injected by the app factory from the same models.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from mlflow.version import VERSION as MLFLOW_VERSION

from serving.http.guards import UNSUPPORTED_MEDIA_TYPE, require_json
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
)
from serving.model.request_models import BATCH_MODEL, INVOCATIONS_RECORD_MODEL, RECORD_MODEL
from serving.protocols.base import handle
from serving.protocols.mlflow import INVOCATIONS
from serving.protocols.platform_json import BATCH, RECORD, unavailable_answer
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


def _json_body(schema_name: str, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}}


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
async def predict(request: Request) -> Response:
    """Predict one record. Classifier: the class, its confidence, every class
    probability. Regressor: the predicted number, and `prediction_interval` (95%) when
    the estimator gives a standard deviation. Both: request id, model name and version."""
    return await handle(request, RECORD)


@protected_routes.post(
    "/predict/batch", response_model=PredictBatchResponse, tags=["predict"], responses=_ERRORS,
    dependencies=_JSON_ONLY,
    openapi_extra=_json_body(BATCH_MODEL, "Records to predict, at most ML_API_MAX_BATCH."))
async def predict_batch(request: Request) -> Response:
    """Predict many records (answered in order)."""
    return await handle(request, BATCH)


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
async def invocations_endpoint(request: Request) -> Response:
    """MLflow's scoring protocol; answers {"predictions": [...]} like `mlflow models serve`
    (the predicted class per row, or a regressor's predicted number; model name, version
    and request id in X-Model-Name, X-Model-Version, X-Request-ID)."""
    return await handle(request, INVOCATIONS)


# -- model and operations -----------------------------------------------------------

@protected_routes.get("/model", response_model=ModelInfo, tags=["model"],
                      responses={503: _ERRORS[503]})
async def model_info(service: ServiceDep) -> Response:
    """The served model: name, version, alias, training-run metrics, the features requests
    carry, the schema's excluded columns with their roles, the input policy;
    `refused`: the candidate version last refused while this one kept serving."""
    model = service.store.current
    if model is None:
        return unavailable_answer(service)
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
