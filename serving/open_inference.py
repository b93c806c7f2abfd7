"""Open Inference Protocol (KServe V2) over REST, as KServe, Triton, MLServer and Seldon
clients speak it: server and model health and metadata, and inference on the served model.

Routes: `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}[/versions/
{version}]/ready` are open (like /health and /ready); model metadata and
`POST /v2/models/{name}[/versions/{version}]/infer` ask for the API key when one is set.
Only the served model answers: another name, or a registry version that is not the
served one, is a 404. Errors are `{"error": "<one sentence>"}`; `V2ErrorShape` gives the
shared parts of the app (body limit, auth, prediction-log 503, unmatched paths) that
shape on /v2 paths.

An infer request carries either one tensor per feature (shape [n] or [n, 1]; BYTES for
strings, BOOL for booleans, any FP/INT datatype for numbers) or, for models whose
features are all numbers, one numeric tensor of shape [n, n_features] in feature order.
Values are validated exactly as /predict validates them: every column goes through the
served model's own generated field validators (`RequestModels.record`), except where a
vectorised check decides the same answer for a clean column, or a clean all-number
request, at once (`_fast_column`, `_number_rows`; a property test in
ml_assets_tests/api/test_open_inference.py checks they agree with /predict). Rows then
take the one prediction path (`Service.predict_rows` / `predict_values`), so they are
logged and counted like every other prediction. docs/open_inference.md has the details.
"""

from __future__ import annotations

import json
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Literal, get_args

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ml_assets.core.rollout.plan import CHAMPION
from serving.guards import json_content_type, off_loop
from serving.input_limits import FLOAT32_MAX, InputOverflow, excerpt
from serving.middleware import request_id_of
from serving.model_store import ServedModel
from serving.request_models import NULL_MESSAGE, FeatureSpec, RequestModels
from serving.responses import OrjsonResponse
from serving.service import Service, get_service

__all__ = ["V2ErrorShape", "include_open_inference", "decode_request", "open_routes",
           "protected_routes"]

try:
    SERVER_VERSION = version("ml-assets")
except PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0.0.0"
SERVER_NAME = "ml-platform-serving"
PREFIX = "/v2"

# -- datatypes ----------------------------------------------------------------------

INT_RANGES: dict[str, tuple[int, int]] = {
    "INT8": (-2 ** 7, 2 ** 7 - 1), "INT16": (-2 ** 15, 2 ** 15 - 1),
    "INT32": (-2 ** 31, 2 ** 31 - 1), "INT64": (-2 ** 63, 2 ** 63 - 1),
    "UINT8": (0, 2 ** 8 - 1), "UINT16": (0, 2 ** 16 - 1), "UINT32": (0, 2 ** 32 - 1),
    "UINT64": (0, 2 ** 64 - 1)}
# Largest finite magnitude of each float datatype (None: float64, which JSON numbers are).
FLOAT_MAX: dict[str, float | None] = {"FP16": 65504.0, "BF16": 3.3895313892515355e38,
                                      "FP32": FLOAT32_MAX, "FP64": None}
Datatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                   "UINT64", "FP16", "BF16", "FP32", "FP64", "BYTES"]
DATATYPES: tuple[str, ...] = get_args(Datatype)
_NUMERIC = (*FLOAT_MAX, *INT_RANGES)
# Which tensor datatypes may carry a feature of each kind.
FITS: dict[str, tuple[str, ...]] = {"number": _NUMERIC, "integer": _NUMERIC,
                                    "boolean": ("BOOL",), "string": ("BYTES",)}
# What metadata advertises per kind.
FEATURE_DATATYPE = {"number": "FP64", "integer": "INT64", "boolean": "BOOL",
                    "string": "BYTES"}
_SEND = {"number": "FP64 (any FP or INT datatype fits)",
         "integer": "INT64 (any INT datatype, or FP with whole numbers)",
         "boolean": "BOOL", "string": "BYTES"}
_NONE = type(None)
# The JSON values each datatype's data may hold (null, meaning missing, in every one).
_DATA_TYPES = {"BOOL": frozenset({bool, _NONE}), "BYTES": frozenset({str, _NONE}),
               **{dt: frozenset({int, _NONE}) for dt in INT_RANGES},
               **{dt: frozenset({int, float, _NONE}) for dt in FLOAT_MAX}}
_JSON_NAMES = {bool: "a boolean", str: "a string", int: "an integer", float: "a number",
               list: "an array", dict: "an object", _NONE: "null"}

LABEL, PROBABILITIES, PREDICTION, INTERVAL = ("label", "probabilities", "prediction",
                                              "prediction_interval")
_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


class V2Error(Exception):
    """A request the protocol refuses: `{"error": message}` with `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def is_v2_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(message: str, status: int, headers: dict[str, str] | None = None
                   ) -> OrjsonResponse:
    return OrjsonResponse({"error": message}, status_code=status, headers=headers)


def _quote(name: Any) -> str:
    return json.dumps(excerpt(name if isinstance(name, str) else repr(name)))


# -- OpenAPI models -----------------------------------------------------------------

class V2ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, in one sentence naming the input.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="Protocol extensions served: none.")


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any number of rows.")
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="The served registry version (only that "
                                "one answers).")
    platform: str = Field(description="onnxruntime (the compiled graph answers) or "
                          "sklearn (the Pipeline answers).")
    inputs: list[MetadataTensor] = Field(description="One per feature, in feature order.")
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="A feature name (or, for the single-tensor form of an "
                      "all-numeric model, any name).")
    shape: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=1, max_length=2, description="[n] or [n, 1] per feature; "
        "[n, n_features] for the single tensor.")
    datatype: Datatype = Field(
        description="BOOL, BYTES, or a numeric datatype that fits the feature.")
    data: list[Any] = Field(description="Row-major values, flat or nested to the shape; "
                            "null is a missing value (nullable features only).")
    parameters: dict[str, Any] | None = Field(default=None, description="Ignored, except "
                                              "binary_data_size and shared_memory_* "
                                              "(refused: not supported).")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="label or probabilities (classifiers); prediction or "
                      "prediction_interval (regressors).")
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data is "
                                              "ignored (answers are JSON).")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, description="Echoed in the answer.")
    parameters: dict[str, Any] | None = Field(default=None, description="Ignored "
                                              "(binary_data_output included); "
                                              "`classification` is refused.")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="A subset of "
                                                "the outputs to answer (default: all).")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = Field(description="Flat, row-major.")
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field(description="The request's id, else the request id.")
    parameters: dict[str, Any] | None = Field(default=None, description="`request_id`: "
                                              "the id the prediction log records; "
                                              "`variant`: canary when a canary "
                                              "rollout's challenger answered (the "
                                              "X-Model-Variant header says it always).")
    outputs: list[ResponseOutput]


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
        return error_response(f"model {_quote(name)} is not served here; this service "
                              f"serves {_quote(served_name)}", 404)
    if model is None:
        return error_response(service.not_ready_reason(), 503, _retry_after(service))
    if version is not None and version != model.version:
        return error_response(
            f"model {_quote(name)} version {_quote(version)} is not loaded; this service "
            f"serves version {model.version} of {_quote(name)} (the registry version its "
            f"alias {_quote(model.alias)} points at); address /v2/models/{model.name}/infer "
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
    if _all_numeric(model.features):
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


# -- validating columns -------------------------------------------------------------

@dataclass(frozen=True)
class _Feature:
    """How one feature's column is validated: `adapter` is the record model's own field
    (type, validators, constraints) over a list; `fast` says whether the vectorised
    check may decide a clean column (no membership check, no string constraints)."""

    spec: FeatureSpec
    adapter: TypeAdapter
    fast: bool


# By id(RequestModels): (a weak reference to it, its plan). Weak, so a swapped-out
# model's generated classes are not kept alive here; two entries cover a swap.
_PLANS: dict[int, tuple[weakref.ref, tuple[_Feature, ...]]] = {}
_CONFIG = ConfigDict(strict=True, regex_engine="python-re")


def _plan(requests: RequestModels) -> tuple[_Feature, ...]:
    """Per feature, its column validator (built once per served model version, ~3 ms
    for 30 features)."""
    cached = _PLANS.get(id(requests))
    if cached is not None and cached[0]() is requests:
        return cached[1]
    features = []
    for key, spec in zip(requests.keys, requests.specs, strict=True):
        field = requests.record.model_fields[key]
        annotation: Any = (Annotated[(field.annotation, *field.metadata)] if field.metadata
                           else field.annotation)
        enforced = spec.allowed is not None and requests.policy == "reject"
        constrained = spec.kind == "string" and (
            spec.pattern is not None or spec.min_length is not None
            or spec.max_length is not None)
        features.append(_Feature(spec, TypeAdapter(list[annotation], config=_CONFIG),
                                 fast=not (enforced or constrained)))
    plan = tuple(features)
    if len(_PLANS) >= 2:
        _PLANS.clear()
    _PLANS[id(requests)] = (weakref.ref(requests), plan)
    return plan


class _ColumnInvalid(Exception):
    """Values of one column the feature refuses; `rows`: the bad row indices."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def _is_null(value) -> bool:
    return value is None or (type(value) is float and value != value)


def _refusal(exc: ValidationError, spec: FeatureSpec) -> _ColumnInvalid:
    """The first problem of a column's ValidationError as "row i: why", null (or NaN)
    for a feature that may not be null said as /predict says it."""
    errors = exc.errors(include_url=False, include_input=True)
    rows = sorted({e["loc"][0] for e in errors if e["loc"] and isinstance(e["loc"][0], int)})
    first = errors[0]
    why = (NULL_MESSAGE if not spec.nullable and _is_null(first.get("input", 0))
           else excerpt(first["msg"], 200))
    where = f"row {first['loc'][0]}: " if first["loc"] else ""
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return _ColumnInvalid(f"{where}{why}{more}", rows)


def _fast_column(values: list, types: set, feature: _Feature) -> list | None:
    """The validated column when a vectorised check can tell it is clean, else None
    (the field validators then decide, and name the problems). Exact because a number's
    or an integer's valid values form an interval (finite, the float32 / int64 /
    preprocessing bounds, and the schema's ge/gt/le/lt under the reject policy): when
    the column's smallest and largest values pass the feature's own validator, every
    value between them does."""
    spec = feature.spec
    if _NONE in types and not spec.nullable:
        return None
    if spec.kind == "number" and types <= {float, int, _NONE}:
        try:
            array = np.array(values, dtype=np.float64)  # None → NaN
        except OverflowError:  # an integer beyond float64
            return None
        missing = np.isnan(array)
        if np.isinf(array).any():
            return None
        gaps = bool(missing.any())
        if gaps and not spec.nullable:  # NaN: null, which the feature refuses
            return None
        if not (gaps and missing.all()):
            low = int(np.argmin(np.where(missing, np.inf, array) if gaps else array))
            high = int(np.argmax(np.where(missing, -np.inf, array) if gaps else array))
            try:
                feature.adapter.validate_python([values[low], values[high]])
            except ValidationError:
                return None
        column = array.tolist()
        if gaps:
            for i in np.flatnonzero(missing).tolist():
                column[i] = None
        return column
    if spec.kind == "integer" and types <= {int, _NONE}:
        present = values if _NONE not in types else [v for v in values if v is not None]
        if present:
            try:
                feature.adapter.validate_python([min(present), max(present)])
            except ValidationError:
                return None
        return list(values)
    if spec.kind == "boolean" and types <= {bool, _NONE}:
        return list(values)
    if spec.kind == "string" and types <= {str, _NONE}:
        return list(values)
    return None


def validate_column(values: list, feature: _Feature, types: set | None = None) -> list:
    """`values` validated as /predict validates the feature (NaN → None where nullable,
    whole floats → int for integers, ints → float for numbers); _ColumnInvalid else."""
    types = set(map(type, values)) if types is None else types
    if feature.fast:
        column = _fast_column(values, types, feature)
        if column is not None:
            return column
    try:
        validated: list = feature.adapter.validate_python(values)
    except ValidationError as exc:
        raise _refusal(exc, feature.spec) from None
    return validated


# -- decoding a request -------------------------------------------------------------

@dataclass(frozen=True)
class Decoded:
    """A validated infer request: rows in feature order, the outputs to answer."""

    rows: list[list]
    outputs: tuple[str, ...]
    id: str | None


_NON_FINITE_TOKENS = (b"NaN", b"Infinity")
# A surrogate escape (\ud800-\udfff) or UTF-8-encoded surrogate, which Python's json
# decodes (pairs into one character; lone ones into a str nothing can encode).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _load(body: bytes) -> Any:
    """The parsed body. orjson parses; Python's json only when orjson refused a body
    holding NaN/Infinity (not JSON, but tritonclient writes NaN for missing values) or
    an integer beyond 64 bits (which /predict's parser takes, e.g. for a number)."""
    error: Exception
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    if "64-bit" in str(error) or any(token in body for token in _NON_FINITE_TOKENS):
        try:
            payload = json.loads(body)
            if _SURROGATE.search(body):  # lone ones are refused, as orjson refuses them
                json.dumps(payload, ensure_ascii=False).encode()
            return payload
        except RecursionError:
            error = ValueError("nested too deeply")
        except ValueError as exc:  # UnicodeError included
            error = exc
    raise V2Error(f"the body is not valid JSON: {excerpt(error)}")


def _where(what: str, keys: Any) -> str:
    unknown = sorted(excerpt(str(k), 40) for k in keys)
    return f"{what} has unknown field(s) {', '.join(map(_quote, unknown[:5]))}"


def _parameters(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(f"{what} 'parameters' must be an object, not "
                      f"{_JSON_NAMES.get(type(value), type(value).__name__)}")
    return value


def _check_input_parameters(parameters: dict, label: str) -> None:
    if "binary_data_size" in parameters:
        raise V2Error(f"{label} uses the binary tensor data extension, which this service "
                      "does not support: send the data as JSON (tritonclient: "
                      "set_data_from_numpy(..., binary_data=False))")
    if any(str(k).startswith("shared_memory") for k in parameters):
        raise V2Error(f"{label} names a shared-memory region; this service does not "
                      "support shared memory: send the data in the body")


def _shape(raw: Any, label: str) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise V2Error(f"{label} needs a 'shape': a non-empty array of dimensions")
    for dim in raw:
        if type(dim) is not int or dim < 0:
            raise V2Error(f"{label} has shape {excerpt(raw)}: dimensions must be "
                          "non-negative integers (-1 appears in metadata only)")
    return raw


def _flat(data: Any, shape: list[int], label: str) -> list:
    """The tensor's values, row-major, from `data` flat or nested to `shape` (at most 2
    dimensions here); V2Error when the data does not hold exactly the shape."""
    if not isinstance(data, list):
        raise V2Error(f"{label} needs 'data': an array of values")
    total = math.prod(shape)
    if len(shape) == 2 and data and type(data[0]) is list:
        rows, width = shape
        if set(map(type, data)) != {list} or len(data) != rows or (
                rows and set(map(len, data)) != {width}):
            raise V2Error(f"{label}: nested data does not match shape {shape} (it must "
                          f"hold {rows} arrays of {width} values, or {total} values flat)")
        data = list(chain.from_iterable(data))
    elif len(data) != total:
        raise V2Error(f"{label} has shape {shape} ({total} values) but its data holds "
                      f"{len(data)} values")
    return data


def _check_data(values: list, types: set, datatype: str, label: str,
                columns: Sequence[str] = ()) -> None:
    """The data must be what the datatype holds (JSON values and, for INT/FP16/FP32,
    the datatype's range); null is allowed everywhere (it means missing). `columns`:
    the feature names of a single [n, k] tensor's flat values."""
    allowed = _DATA_TYPES[datatype]

    def at(i: int) -> str:
        if not columns:
            return f"{label} row {i}"
        j = i % len(columns)
        return f"{label} column {j} (feature {_quote(columns[j])}) row {i // len(columns)}"

    if not types <= allowed:
        row, value = next((i, v) for i, v in enumerate(values) if type(v) not in allowed)
        raise V2Error(f"{at(row)}: {datatype} data cannot hold "
                      f"{_JSON_NAMES.get(type(value), type(value).__name__)}"
                      + (f" ({excerpt(repr(value), 40)})" if type(value) in (str, float)
                         else ""))
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        present = values if _NONE not in types else [v for v in values if v is not None]
        if present and (min(present) < low or max(present) > high):
            row = next(i for i, v in enumerate(values)
                       if v is not None and not low <= v <= high)
            raise V2Error(f"{at(row)}: {excerpt(values[row], 40)} does not fit "
                          f"{datatype} ({low} to {high})")
        return
    limit = FLOAT_MAX.get(datatype)
    if limit is not None and values:
        try:
            magnitude = np.abs(np.array(values, dtype=np.float64))
        except OverflowError:
            magnitude = np.array([math.inf if v is not None and abs(v) > 1e308 else 0.0
                                  for v in values])
        magnitude[~np.isfinite(magnitude)] = 0.0  # NaN, ±inf: representable
        big = magnitude > limit
        if big.any():
            row = int(np.flatnonzero(big)[0])
            raise V2Error(f"{at(row)}: {excerpt(values[row], 40)} is beyond "
                          f"{datatype}'s range (±{limit:.7g})")


def _all_numeric(specs: Sequence[FeatureSpec]) -> bool:
    return bool(specs) and all(spec.kind in ("number", "integer") for spec in specs)


def _outputs(raw: Any, model: ServedModel) -> tuple[str, ...]:
    names = ((PREDICTION, INTERVAL) if model.interval else (PREDICTION,)) \
        if model.is_regression else (LABEL, PROBABILITIES)
    if raw is None:
        return names
    if not isinstance(raw, list) or not raw:
        raise V2Error("'outputs' must be a non-empty array of {\"name\": ...} objects")
    chosen: list[str] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2Error("every requested output must be an object with a 'name'")
        if set(item) - _OUTPUT_KEYS:
            raise V2Error(_where(f"requested output {_quote(item['name'])}",
                                 set(item) - _OUTPUT_KEYS))
        name = item["name"]
        if "classification" in _parameters(item.get("parameters"), "an output's"):
            raise V2Error("the classification extension is not supported: request "
                          f"{_quote(PROBABILITIES)} and rank the classes yourself")
        if name not in names:
            raise V2Error(f"unknown output {_quote(name)}: this model answers "
                          + " and ".join(map(_quote, names)))
        if name in chosen:
            raise V2Error(f"output {_quote(name)} is requested twice")
        chosen.append(name)
    return tuple(chosen)


def decode_request(body: bytes, model: ServedModel, max_rows: int) -> Decoded:
    """Validate an infer request body against `model`: rows (feature order) as /predict
    would validate them, the outputs to answer, the request's id. V2Error otherwise."""
    payload = _load(body)
    if not isinstance(payload, dict):
        raise V2Error("the body must be a JSON object with 'inputs'")
    if set(payload) - _REQUEST_KEYS:
        raise V2Error(_where("the request", set(payload) - _REQUEST_KEYS))
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error("'id' must be a string")
    if "classification" in _parameters(payload.get("parameters"), "the request's"):
        raise V2Error("the classification extension is not supported")
    outputs = _outputs(payload.get("outputs"), model)
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("'inputs' must be a non-empty array of tensors")
    tensors = []
    seen: set[str] = set()
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise V2Error(f"input {i} must be an object with a string 'name'")
        name = tensor["name"]
        label = f"input {_quote(name)}"
        if name in seen:
            raise V2Error(f"{label} appears more than once")
        seen.add(name)
        if set(tensor) - _INPUT_KEYS:
            raise V2Error(_where(label, set(tensor) - _INPUT_KEYS))
        _check_input_parameters(_parameters(tensor.get("parameters"), f"{label}'s"), label)
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise V2Error(f"{label} has unknown datatype {_quote(datatype)}: use one of "
                          f"{', '.join(DATATYPES)}")
        shape = _shape(tensor.get("shape"), label)
        if shape[0] > max_rows:
            raise V2Error(f"{label} has shape {shape}: {shape[0]} rows exceed the limit of "
                          f"{max_rows} rows per request (ML_API_MAX_BATCH); split the input")
        if "data" not in tensor:
            raise V2Error(f"{label} has no 'data'")
        tensors.append((name, label, datatype, shape, tensor["data"]))
    plan = _plan(model.requests)
    by_name = {spec.name: i for i, spec in enumerate(model.features)}
    ignored = getattr(model, "excluded_columns", None) or {}
    if len(tensors) == 1 and tensors[0][0] not in by_name and tensors[0][0] not in ignored:
        rows = _single_tensor(tensors[0], model, plan)
    else:
        rows = _feature_tensors(tensors, model, plan, by_name, ignored)
    return Decoded(rows, outputs, request_id)


def _rows(columns: list[list]) -> list[list]:
    if not columns or not columns[0]:
        raise V2Error("the request holds no rows")
    return list(map(list, zip(*columns, strict=True)))


_NUMBER_TYPES = frozenset({float, int, _NONE})


def _number_rows(columns: list[list], types: list[set], datatypes: list[str],
                 plan: tuple[_Feature, ...]) -> list[list] | None:
    """The rows of an all-number model's clean request, decided at once: one float64
    matrix, column-wise checks, one `tolist`. None when any column is not plainly clean
    (or the model is not all numbers): then each column is checked, and its problem
    named, by `_check_data` and `validate_column`. The same decision as those make: FP
    data within its datatype's range, no NaN (null) where the feature is not nullable,
    nothing infinite, and each column's extremes accepted by the feature's validator
    (see `_fast_column`)."""
    if not all(f.spec.kind == "number" and f.fast for f in plan) or not all(
            dt in FLOAT_MAX for dt in datatypes) or not all(t <= _NUMBER_TYPES for t in types):
        return None
    try:
        matrix = np.array(columns, dtype=np.float64)  # (features, rows); None → NaN
    except (OverflowError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[1] == 0 or np.isinf(matrix).any():
        return None
    missing = np.isnan(matrix)
    gaps: np.ndarray = np.any(missing, axis=1)
    if any(gap and not f.spec.nullable for gap, f in zip(gaps.tolist(), plan, strict=True)):
        return None
    any_gap = bool(gaps.any())
    limits = [FLOAT_MAX[dt] for dt in datatypes]
    if any(limit is not None for limit in limits):
        largest = np.abs(np.where(missing, 0.0, matrix) if any_gap else matrix).max(axis=1)
        if any(limit is not None and big > limit
               for big, limit in zip(largest.tolist(), limits, strict=True)):
            return None
    low = (np.where(missing, np.inf, matrix) if any_gap else matrix).argmin(axis=1).tolist()
    high = (np.where(missing, -np.inf, matrix) if any_gap else matrix).argmax(axis=1).tolist()
    empty = np.all(missing, axis=1).tolist()
    for j, feature in enumerate(plan):
        if empty[j]:  # all missing (a nullable feature): nothing to bound
            continue
        try:
            feature.adapter.validate_python([columns[j][low[j]], columns[j][high[j]]])
        except ValidationError:
            return None
    rows: list[list] = matrix.T.tolist()
    if any_gap:
        for j, i in np.argwhere(missing).tolist():
            rows[i][j] = None
    return rows


def _single_tensor(tensor: tuple, model: ServedModel, plan: tuple[_Feature, ...]
                   ) -> list[list]:
    """One numeric tensor [n, n_features] in feature order (all-numeric models)."""
    name, label, datatype, shape, data = tensor
    specs = model.features
    k = len(specs)
    if not _all_numeric(specs):
        raise V2Error(f"unknown input {_quote(name)}: this model takes one input per "
                      f"feature ({_names(specs)}); a single [n, {k}] tensor is only for "
                      "models whose features are all numbers")
    if len(shape) != 2 or shape[1] != k:
        raise V2Error(f"{label} has shape {shape}, but a single input must be [n, {k}]: "
                      f"one column per feature, in feature order ({_names(specs)}); or "
                      "send one input per feature, named by it")
    if datatype not in _NUMERIC:
        raise V2Error(f"{label} has datatype {datatype}: a single tensor must be numeric "
                      "(FP64, FP32, or an INT datatype)")
    flat = _flat(data, shape, label)
    types = set(map(type, flat))
    columns = [flat[j::k] for j in range(k)]
    rows = _number_rows(columns, [types] * k, [datatype] * k, plan)
    if rows is not None:
        return rows
    _check_data(flat, types, datatype, label, model.feature_names)
    checked = []
    for j, feature in enumerate(plan):
        try:
            checked.append(validate_column(columns[j], feature))
        except _ColumnInvalid as exc:
            raise V2Error(f"{label} column {j} (feature {_quote(feature.spec.name)}) "
                          f"{exc}") from None
    return _rows(checked)


def _names(specs: Sequence[FeatureSpec], limit: int = 8) -> str:
    shown = ", ".join(_quote(s.name) for s in specs[:limit])
    return shown + (f" and {len(specs) - limit} more" if len(specs) > limit else "")


def _feature_tensors(tensors: list[tuple], model: ServedModel, plan: tuple[_Feature, ...],
                     by_name: dict[str, int], ignored: dict[str, str]) -> list[list]:
    """One tensor per feature ([n] or [n, 1]); nullable features may be left out (all
    missing), as /predict lets them be; the schema's non-feature columns (identifiers,
    ...) are accepted and ignored, as /predict ignores them."""
    unknown = [t[0] for t in tensors if t[0] not in by_name and t[0] not in ignored]
    if unknown:
        raise V2Error(f"unknown input {_quote(unknown[0])}: this model's inputs are its "
                      f"features ({_names(model.features)})"
                      + (f", and {len(unknown) - 1} more unknown" if len(unknown) > 1
                         else ""))
    given = {t[0] for t in tensors}
    missing = [s.name for s in model.features if s.name not in given and not s.nullable]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise V2Error(f"input {_quote(missing[0])} is missing{more}: every feature that is "
                      "not nullable needs an input")
    rows, first = tensors[0][3][0], tensors[0][1]
    for name, label, datatype, shape, _ in tensors:  # no data is read before all agree
        if len(shape) == 2 and shape[1] != 1 or len(shape) > 2:
            raise V2Error(f"{label} has shape {shape}: an input per feature is [n] or "
                          "[n, 1]")
        if shape[0] != rows:
            raise V2Error(f"{label} has {shape[0]} rows but {first} has {rows}: every "
                          "input must have the same number of rows")
        kind = plan[by_name[name]].spec if name in by_name else None
        if kind is not None and datatype not in FITS[kind.kind]:
            raise V2Error(f"{label} has datatype {datatype}, which does not fit the "
                          f"feature (a {kind.kind}{', nullable' if kind.nullable else ''}"
                          f"): send {_SEND[kind.kind]}")
    # Per feature: (label, datatype, values); a nullable feature left out: all missing.
    found: list[tuple[str, str, list]] = [("", "FP64", [None] * rows)] * len(plan)
    for name, label, datatype, shape, data in tensors:
        values = _flat(data, shape, label)
        if name in by_name:  # else a schema column that is no model input: ignored
            found[by_name[name]] = (label, datatype, values)
    columns = [values for _, _, values in found]
    types = [set(map(type, values)) for values in columns]
    fast = _number_rows(columns, types, [datatype for _, datatype, _ in found], plan)
    if fast is not None:
        return fast
    checked = []
    for (label, datatype, values), column_types, feature in zip(found, types, plan,
                                                                 strict=True):
        if label:
            _check_data(values, column_types, datatype, label)
        try:
            checked.append(validate_column(values, feature, column_types))
        except _ColumnInvalid as exc:
            raise V2Error(f"{label or _quote(feature.spec.name)} {exc}") from None
    return _rows(checked)


# -- inference ----------------------------------------------------------------------

def _response_outputs(model: ServedModel, names: tuple[str, ...], n: int, answer: tuple
                      ) -> list[dict]:
    outputs = []
    if model.is_regression:
        values, bounds = answer
        for name in names:
            if name == PREDICTION:
                outputs.append({"name": PREDICTION, "datatype": "FP64", "shape": [n],
                                "data": values})
            else:
                outputs.append({"name": INTERVAL, "datatype": "FP64", "shape": [n, 2],
                                "data": list(chain.from_iterable(
                                    (b["lower"], b["upper"]) for b in bounds or ())),
                                "parameters": {"columns": ["lower", "upper"],
                                               "level": 0.95}})
        return outputs
    labels, probabilities = answer
    k = len(model.labels)
    for name in names:
        if name == LABEL:
            outputs.append({"name": LABEL, "datatype": "BYTES", "shape": [n],
                            "data": labels})
        else:
            pick = itemgetter(*model.labels)
            flat = (list(chain.from_iterable(map(pick, probabilities))) if k > 1
                    else list(map(pick, probabilities)))
            outputs.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [n, k],
                            "data": flat, "parameters": {"classes": list(model.labels)}})
    return outputs


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


async def _infer(request: Request, service: Service, name: str, version: str | None
                 ) -> Response:
    champion = _served(service, name, version)  # this request's model, even if a swap
    if isinstance(champion, OrjsonResponse):    # happens now
        return champion
    problem = _content_problem(request)
    if problem is not None:
        binary = problem.startswith("the binary")
        return error_response(problem, 400 if binary else 415)
    request_id = request_id_of(request.scope)
    # A rollout routes requests to the model, not those addressing one version.
    model, variant, shadow = (service.choose(champion, request.scope, request_id)
                              if version is None else (champion, CHAMPION, None))
    with service.batcher.tracking():
        body = await request.body()
        try:  # a large body is parsed and validated in a parser thread
            decoded = await off_loop(body, decode_request, body, model,
                                     service.settings.max_batch)
        except V2Error as exc:
            return error_response(exc.message, exc.status)

        def rows_for(other: ServedModel) -> list[list]:
            return decode_request(body, other, service.settings.max_batch).rows

        try:
            result = await service.answer(champion, model, variant, shadow, decoded.rows,
                                          request_id, rows_for)
        except InputOverflow as exc:  # NonFinitePrediction too
            return error_response(f"invalid input: {exc}", 400)
        except V2Error as exc:  # the champion's schema, after a canary failed
            return error_response(exc.message, exc.status)
    model = result.model
    answer = ((result.values, result.intervals) if model.is_regression
              else (result.labels, result.probabilities))
    outputs = _response_outputs(model, decoded.outputs, len(decoded.rows), answer)
    parameters = {"request_id": request_id}
    if result.variant != CHAMPION:
        parameters["variant"] = result.variant
    return OrjsonResponse({"model_name": model.name, "model_version": model.version,
                           "id": decoded.id if decoded.id is not None else request_id,
                           "parameters": parameters, "outputs": outputs},
                          headers={"X-Model-Variant": result.variant})


@protected_routes.post(f"{PREFIX}/models/{{name}}/infer", response_model=InferenceResponse,
                       responses=_INFER_ERRORS, openapi_extra=_INFER_BODY)
async def infer(request: Request, name: NamePath, service: ServiceDep) -> Response:
    """Inference on the served model: one input per feature (or one [n, n_features]
    numeric tensor for all-numeric models); answers label and probabilities
    (classifiers) or prediction (regressors). Every row is logged like /predict's."""
    return await _infer(request, service, name, None)


@protected_routes.post(f"{PREFIX}/models/{{name}}/versions/{{version}}/infer",
                       response_model=InferenceResponse, responses=_INFER_ERRORS,
                       openapi_extra=_INFER_BODY)
async def infer_version(request: Request, name: NamePath, version: VersionPath,
                        service: ServiceDep) -> Response:
    """Inference on the served version (another version is a 404)."""
    return await _infer(request, service, name, version)


# -- the error shape of the app's shared parts --------------------------------------

def _as_sentence(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors
        parts = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                 for d in detail[:3] if isinstance(d, dict)]
        return "invalid request: " + "; ".join(parts) if parts else "invalid request"
    return excerpt(detail, 200)


def v2_error_body(body: bytes) -> bytes | None:
    """An error body of the app's shared parts ({"detail": ..., "request_id"?}) in the
    V2 shape, {"error": "..."}; None when `body` is not such a body."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "error" in payload or "detail" not in payload:
        return None
    message = _as_sentence(payload["detail"])
    if isinstance(payload.get("request_id"), str):
        message += f" (request {payload['request_id']})"
    return orjson.dumps({"error": message})


class V2ErrorShape:
    """Pure ASGI middleware: on /v2 paths, error answers that the app's shared parts
    give in the {"detail": ...} shape (the body limit's 413, the API key's 401, the
    prediction log's 503, unmatched paths' 404/405, the last-resort 500) are given in
    the protocol's {"error": "..."} shape, status and headers kept. Other paths and
    successful answers pass untouched (only /v2 error bodies are buffered)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_v2_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        held: dict | None = None
        chunks: list[bytes] = []
        sent = False

        async def reshaping_send(message):
            nonlocal held, sent
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await flush()

        async def flush():
            nonlocal sent
            assert held is not None
            sent = True
            original = b"".join(chunks)
            body = v2_error_body(original)
            headers = list(held.get("headers", []))
            if body is None:
                body = original
            else:
                headers = [(k, v) for k, v in headers
                           if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, reshaping_send)
        finally:
            if held is not None and not sent:  # the app stopped mid-answer
                await flush()
