"""The protocol's vocabulary: server identity, the tensor datatypes (the JSON values and
ranges each holds, which fit each kind of feature), output names, and the pydantic
models of its messages (the OpenAPI contract; answers are built as plain dicts).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from serving.model.input_limits import FLOAT32_MAX

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
NUMERIC = (*FLOAT_MAX, *INT_RANGES)
# Which tensor datatypes may carry a feature of each kind.
FITS: dict[str, tuple[str, ...]] = {"number": NUMERIC, "integer": NUMERIC,
                                    "boolean": ("BOOL",), "string": ("BYTES",)}
# What metadata advertises per kind.
FEATURE_DATATYPE = {"number": "FP64", "integer": "INT64", "boolean": "BOOL",
                    "string": "BYTES"}
SEND_AS = {"number": "FP64 (any FP or INT datatype fits)",
           "integer": "INT64 (any INT datatype, or FP with whole numbers)",
           "boolean": "BOOL", "string": "BYTES"}
NONE_TYPE = type(None)
# The JSON values each datatype's data may hold (null, meaning missing, in every one).
JSON_TYPES = {"BOOL": frozenset({bool, NONE_TYPE}), "BYTES": frozenset({str, NONE_TYPE}),
              **{dt: frozenset({int, NONE_TYPE}) for dt in INT_RANGES},
              **{dt: frozenset({int, float, NONE_TYPE}) for dt in FLOAT_MAX}}
JSON_NAMES = {bool: "a boolean", str: "a string", int: "an integer", float: "a number",
              list: "an array", dict: "an object", NONE_TYPE: "null"}

LABEL, PROBABILITIES, PREDICTION, INTERVAL = ("label", "probabilities", "prediction",
                                              "prediction_interval")


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

