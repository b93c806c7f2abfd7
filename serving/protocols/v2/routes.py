"""The /v2 endpoints: server and model health and metadata (open, like /health and
/ready, except model metadata) and inference (behind the API key when one is set).
Only the served model answers: another name, or a registry version that is not the
served one, is a 404.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import Response

from ml_assets.core.rollout.plan import CHAMPION
from serving.http.guards import json_content_type, off_loop
from serving.http.responses import OrjsonResponse
from serving.model.input_limits import InputOverflow, excerpt
from serving.model.served import ServedModel
from serving.protocols.base import Decoded, handle
from serving.protocols.v2.codec import all_numeric, decode_request, response_outputs
from serving.protocols.v2.errors import V2Error, error_response, quote
from serving.protocols.v2.types import (
    FEATURE_DATATYPE,
    INTERVAL,
    LABEL,
    PREDICTION,
    PREFIX,
    PROBABILITIES,
    SERVER_NAME,
    SERVER_VERSION,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadata,
    V2ErrorBody,
)
from serving.service import Answer, Service, get_service


def _inline(schema: dict) -> dict:
    """`schema` with its `$defs` references inlined (the app's OpenAPI components hold
    only FastAPI's and the served model's schemas)."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _error(description: str) -> dict[str, Any]:
    return {"model": V2ErrorBody, "description": description}


_NOT_SERVED = _error("Not the served model's name, or not its served version.")
_NOT_READY = _error("No model is being served yet (Retry-After says when to retry).")
_INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Bad input: a malformed tensor (shape, datatype, data), a missing, unknown "
                "or duplicated input, or a value /predict refuses (type, null, range, "
                "input policy); names the input, the row and the problem."),
    404: _NOT_SERVED,
    413: _error("Body larger than ML_API_MAX_BODY_BYTES."),
    415: _error("A Content-Type other than application/json (or none), or a compressed "
                "body."),
    503: _error("No model is being served yet, or the prediction log cannot commit the "
                "rows now (Retry-After says when to retry)."),
}
_INFER_BODY = {"requestBody": {"required": True, "description": "An Open Inference "
                               "Protocol inference request (JSON; no binary-data "
                               "extension).", "content": {"application/json": {
                                   "schema": _inline(InferenceRequest.model_json_schema())}}}}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or wrong API key (X-API-Key or Authorization: Bearer).")}

open_routes = APIRouter(tags=["open inference (v2)"])
protected_routes = APIRouter(tags=["open inference (v2)"])
ServiceDep = Annotated[Service, Depends(get_service)]
NamePath = Annotated[str, Path(description="The served registered model's name.")]
VersionPath = Annotated[str, Path(description="A registry version: only the served one "
                                  "answers.")]


def include_open_inference(app: FastAPI, auth: Sequence[Any]) -> None:
    """Mount the /v2 routes: health and server/model readiness open, model metadata and
    inference behind `auth` (the app's API-key dependencies; empty when off)."""
    app.include_router(open_routes)
    app.include_router(protected_routes, dependencies=list(auth),
                       responses=_UNAUTHORIZED if auth else None)


# -- server and model health, metadata ----------------------------------------------

def _retry_after(service: Service) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(service.settings.poll_seconds or 5)))}


def _served(service: Service, name: str, version: str | None
            ) -> ServedModel | OrjsonResponse:
    """The served model if `name` (and `version`) address it; else the error answer."""
    model = service.store.current
    served_name = model.name if model is not None else service.settings.model_name
    if name != served_name:
        return error_response(f"model {quote(name)} is not served here; this service "
                              f"serves {quote(served_name)}", 404)
    if model is None:
        return error_response(service.not_ready_reason(), 503, _retry_after(service))
    if version is not None and version != model.version:
        return error_response(
            f"model {quote(name)} version {quote(version)} is not loaded; this service "
            f"serves version {model.version} of {quote(name)} (the registry version its "
            f"alias {quote(model.alias)} points at); address /v2/models/{model.name}/infer "
            f"or its version {model.version}", 404)
    return model


@open_routes.get(PREFIX, response_model=ServerMetadata)
async def server_metadata() -> Response:
    """Server metadata: name, version, extensions."""
    return OrjsonResponse({"name": SERVER_NAME, "version": SERVER_VERSION,
                           "extensions": []})


@open_routes.get(f"{PREFIX}/health/live", response_model=LiveResponse)
async def server_live() -> Response:
    """Liveness: the process answers."""
    return OrjsonResponse({"live": True})


@open_routes.get(f"{PREFIX}/health/ready", response_model=ReadyResponse,
                 responses={503: _NOT_READY})
async def server_ready(service: ServiceDep) -> Response:
    """Readiness: 200 once a model is served, 503 before."""
    if service.store.current is None:
        return error_response(service.not_ready_reason(), 503, _retry_after(service))
    return OrjsonResponse({"ready": True})


async def _model_ready(service: Service, name: str, version: str | None) -> Response:
    model = _served(service, name, version)
    if isinstance(model, OrjsonResponse):
        return model
    return OrjsonResponse({"name": model.name, "ready": True})


@open_routes.get(f"{PREFIX}/models/{{name}}/ready", response_model=ModelReadyResponse,
                 responses={404: _NOT_SERVED, 503: _NOT_READY})
async def model_ready(name: NamePath, service: ServiceDep) -> Response:
    """200 when `name` is the served model."""
    return await _model_ready(service, name, None)


@open_routes.get(f"{PREFIX}/models/{{name}}/versions/{{version}}/ready",
                 response_model=ModelReadyResponse,
                 responses={404: _NOT_SERVED, 503: _NOT_READY})
async def model_version_ready(name: NamePath, version: VersionPath,
                              service: ServiceDep) -> Response:
    """200 when `name` is the served model and `version` its served version."""
    return await _model_ready(service, name, version)


def model_metadata(model: ServedModel) -> dict:
    """The V2 model metadata of `model`."""
    inputs = [{"name": spec.name, "datatype": FEATURE_DATATYPE[spec.kind], "shape": [-1, 1],
               "parameters": {"kind": spec.kind, "nullable": spec.nullable}}
              for spec in model.features]
    if model.is_regression:
        outputs: list[dict] = [{"name": PREDICTION, "datatype": "FP64", "shape": [-1]}]
        if model.interval:
            outputs.append({"name": INTERVAL, "datatype": "FP64", "shape": [-1, 2],
                            "parameters": {"columns": ["lower", "upper"], "level": 0.95}})
    else:
        outputs = [{"name": LABEL, "datatype": "BYTES", "shape": [-1]},
                   {"name": PROBABILITIES, "datatype": "FP64",
                    "shape": [-1, len(model.labels)],
                    "parameters": {"classes": list(model.labels)}}]
    parameters: dict[str, Any] = {"task": model.task, "alias": model.alias,
                                  "input_policy": model.requests.policy}
    if all_numeric(model.features):
        parameters["single_tensor"] = {"datatype": "FP64",
                                       "shape": [-1, len(model.features)],
                                       "columns": list(model.feature_names)}
    runtime = getattr(model, "runtime", "sklearn")
    return {"name": model.name, "versions": [model.version],
            "platform": "onnxruntime" if runtime == "onnx" else "sklearn",
            "inputs": inputs, "outputs": outputs, "parameters": parameters}


async def _metadata(service: Service, name: str, version: str | None) -> Response:
    model = _served(service, name, version)
    if isinstance(model, OrjsonResponse):
        return model
    return OrjsonResponse(model_metadata(model))


@protected_routes.get(f"{PREFIX}/models/{{name}}", response_model=ModelMetadata,
                      responses={404: _NOT_SERVED, 503: _NOT_READY})
async def model_metadata_endpoint(name: NamePath, service: ServiceDep) -> Response:
    """Model metadata: versions, platform, one input per feature, the outputs."""
    return await _metadata(service, name, None)


@protected_routes.get(f"{PREFIX}/models/{{name}}/versions/{{version}}",
                      response_model=ModelMetadata,
                      responses={404: _NOT_SERVED, 503: _NOT_READY})
async def model_version_metadata(name: NamePath, version: VersionPath,
                                 service: ServiceDep) -> Response:
    """Model metadata of the served version."""
    return await _metadata(service, name, version)


def _content_problem(request: Request) -> str | None:
    """Why the body cannot be read as a JSON inference request (None: it can)."""
    headers = request.headers
    if "inference-header-content-length" in headers:
        return ("the binary tensor data extension (Inference-Header-Content-Length) is "
                "not supported: send the tensors as JSON (tritonclient: "
                "set_data_from_numpy(..., binary_data=False))")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"Content-Encoding {excerpt(encoding, 40)!r} is not supported: send the " \
               "body uncompressed"
    content_type = headers.get("content-type")
    if content_type is not None:  # tritonclient sends none
        return json_content_type(content_type)
    return None


@dataclass(frozen=True, slots=True)
class V2Infer:
    """An infer request as an adapter of the one prediction handler
    (serving/protocols/base.py): the served model by name (and version), tensors decoded
    into rows (serving/protocols/v2/codec.py), answers as output tensors, errors as
    `{"error": ...}`. A request addressing one version bypasses the rollout."""

    name: str
    version: str | None
    client_errors: ClassVar[tuple[type[Exception], ...]] = (V2Error,)

    def served(self, service: Service, request: Request) -> ServedModel | Response:
        model = _served(service, self.name, self.version)
        if isinstance(model, OrjsonResponse):
            return model
        problem = _content_problem(request)
        if problem is not None:
            binary = problem.startswith("the binary")
            return error_response(problem, 400 if binary else 415)
        return model

    def rollout(self) -> bool:
        return self.version is None

    async def decode(self, request: Request, body: bytes, model: ServedModel,
                     service: Service) -> Decoded:
        # A large body is parsed and validated in a parser thread.
        decoded = await off_loop(body, decode_request, body, model, service.settings.max_batch)
        return Decoded(decoded.rows, decoded)

    def rows_for(self, body: bytes, decoded: Decoded, other: ServedModel,
                 service: Service) -> list[list]:
        return decode_request(body, other, service.settings.max_batch).rows

    def client_error(self, exc: Exception, model: ServedModel) -> Response:
        assert isinstance(exc, V2Error)
        return error_response(exc.message, exc.status)

    def overflow(self, exc: InputOverflow) -> Response:
        return error_response(f"invalid input: {exc}", 400)

    def render(self, result: Answer, decoded: Decoded, request_id: str) -> Response:
        model, request = result.model, decoded.context
        answer = ((result.values, result.intervals) if model.is_regression
                  else (result.labels, result.probabilities))
        outputs = response_outputs(model, request.outputs, len(decoded.rows), answer)
        parameters = {"request_id": request_id}
        if result.variant != CHAMPION:
            parameters["variant"] = result.variant
        return OrjsonResponse({"model_name": model.name, "model_version": model.version,
                               "id": request.id if request.id is not None else request_id,
                               "parameters": parameters, "outputs": outputs},
                              headers={"X-Model-Variant": result.variant})


@protected_routes.post(f"{PREFIX}/models/{{name}}/infer", response_model=InferenceResponse,
                       responses=_INFER_ERRORS, openapi_extra=_INFER_BODY)
async def infer(request: Request, name: NamePath) -> Response:
    """Inference on the served model: one input per feature (or one [n, n_features]
    numeric tensor for all-numeric models); answers label and probabilities
    (classifiers) or prediction (regressors). Every row is logged like /predict's."""
    return await handle(request, V2Infer(name, None))


@protected_routes.post(f"{PREFIX}/models/{{name}}/versions/{{version}}/infer",
                       response_model=InferenceResponse, responses=_INFER_ERRORS,
                       openapi_extra=_INFER_BODY)
async def infer_version(request: Request, name: NamePath, version: VersionPath
                        ) -> Response:
    """Inference on the served version (another version is a 404)."""
    return await handle(request, V2Infer(name, version))
