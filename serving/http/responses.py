"""Response models (the OpenAPI contract) and the orjson response class.

Handlers build plain dicts and return `OrjsonResponse` (fast); the models here
document the shapes in OpenAPI and are checked against real answers in tests.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson (numpy arrays and scalars included). A JSONResponse, so
    FastAPI documents the route's response model in OpenAPI."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def unavailable(message: str, retry_after: float, mlflow_style: bool = False,
                request_id: str | None = None) -> OrjsonResponse:
    """503 with Retry-After: `{"detail", "request_id"}`, or MLflow's
    `{"error_code": "TEMPORARILY_UNAVAILABLE", "message"}` on /invocations."""
    body: dict[str, Any] = ({"error_code": "TEMPORARILY_UNAVAILABLE", "message": message}
                            if mlflow_style else {"detail": message})
    if request_id is not None and not mlflow_style:
        body["request_id"] = request_id
    return OrjsonResponse(body, status_code=503,
                          headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class PredictionInterval(BaseModel):
    lower: float = Field(description="prediction - 1.96 * std")
    upper: float = Field(description="prediction + 1.96 * std")
    level: float = Field(0.95, description="Nominal coverage (normal errors assumed).")


class RowPrediction(BaseModel):
    """A classifier answers prediction (the class, a string), confidence and
    probabilities; a regressor answers prediction (a number) and, when its estimator
    gives a standard deviation (BayesianRidge, GaussianProcessRegressor, ...),
    prediction_interval. Keys that do not apply are absent, never null. GET /model's
    `task` says which shape the served model answers."""

    prediction: str | float = Field(description="Classifier: the predicted class "
                                     "(string). Regressor: the predicted value (number).")
    confidence: float | None = Field(default=None, description="Classifiers only: "
                                     "probability of the predicted class (absent for "
                                     "regressors).")
    probabilities: dict[str, float] | None = Field(default=None, description="Classifiers "
                                                   "only: probability of every class "
                                                   "(absent for regressors).")
    prediction_interval: PredictionInterval | None = Field(
        default=None, description="Regressors whose estimator's predict takes return_std "
        "only: the 95% interval prediction +/- 1.96 std (absent otherwise).")


_VARIANT = ("Who answered: champion, or canary (the challenger of a canary rollout, "
            "for the share of clients it serves; X-Client-Key keeps a client on one "
            "variant). Also in the X-Model-Variant header.")


class PredictResponse(RowPrediction):
    request_id: str = Field(description="Id of this request (X-Request-ID header too); "
                            "the prediction log records it.")
    model_name: str
    model_version: str = Field(description="The version that answered.")
    variant: str = Field("champion", description=_VARIANT)


class PredictBatchResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str = Field(description="The version that answered.")
    variant: str = Field("champion", description=_VARIANT)
    predictions: list[RowPrediction] = Field(description="One per record, in order.")


class InvocationsResponse(BaseModel):
    predictions: list[Any] = Field(description="Per row, the predicted class "
                                   "(classifiers) or the predicted number (regressors), as "
                                   "MLflow's scoring server answers.")


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready")
    model_name: str
    model_version: str | None = None
    detail: str | None = Field(default=None, description="Not ready: why. Ready: a "
                               "candidate version that was refused, if any.")


class FeatureInfo(BaseModel):
    name: str
    kind: str = Field(description="number, integer, boolean or string")
    nullable: bool
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allowed: list | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None


class RefusedVersion(BaseModel):
    version: str = Field(description="The candidate version that was not swapped in.")
    reason: str = Field(description="untrusted_model (the safe loader refused it unopened), "
                        "load_error or smoke_test_failed.")
    detail: str = Field(description="Why, and how to allow it when that is a setting.")


class RolloutInfo(BaseModel):
    mode: str = Field(description="canary (the challenger answers a share of the "
                      "clients) or shadow (it scores a copy of every request; never "
                      "returned).")
    challenger_version: str
    champion_version: str = Field(description="The champion when the rollout started.")
    started_at: str
    share: float | None = Field(default=None, description="Canary: the share of clients "
                                "the challenger answers now (None in shadow mode).")
    runtime: str = Field(description="What answers for the challenger: onnx or sklearn.")


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    model_uri: str
    run_id: str | None = Field(description="The MLflow run that trained this version.")
    target: str
    task: str = Field(description="binary, multiclass or regression: the response shape "
                      "of /predict (see RowPrediction).")
    classes: list[str] = Field(description="The classes (empty for regressors).")
    prediction_interval: bool = Field(default=False, description="Regressors: whether "
                                      "answers carry a 95% prediction interval.")
    metrics: dict[str, float] = Field(description="Metrics of the training run.")
    loaded_at: str
    features: list[FeatureInfo] = Field(description="The feature schema requests follow "
                                        "(the model's inputs).")
    excluded_columns: dict[str, str] = Field(default_factory=dict, description="Columns "
                                             "of the training schema that are no model "
                                             "input, with their role: identifier, "
                                             "constant, datetime or free_text.")
    input_policy: str = Field(description="ML_API_INPUT_POLICY: accept (unseen categories "
                              "and out-of-range values are answered, counted and flagged "
                              "in the prediction log) or reject (422, 400 on "
                              "/invocations).")
    refused: RefusedVersion | None = Field(default=None, description="The candidate "
                                           "version last refused while this one kept "
                                           "serving (None when there is none).")
    rollout: RolloutInfo | None = Field(default=None, description="The gradual rollout "
                                        "this service follows (None when there is none).")


class ReloadResult(BaseModel):
    status: str = Field(description="swapped, unchanged, rejected, no_model or "
                        "registry_error")
    serving_version: str | None = None
    previous_version: str | None = None
    candidate_version: str | None = None
    detail: str | None = None
    rollout: dict[str, Any] | None = Field(default=None, description="While a rollout "
                                           "runs or has just ended: what following it "
                                           "did (status loaded, following, dropped, "
                                           "rejected or registry_error).")


class ErrorResponse(BaseModel):
    detail: Any = Field(description="What is wrong: a message, or a list of "
                        "{loc, msg, type} naming each failing field.")
    message: str | None = None
    request_id: str | None = None


class MlflowError(BaseModel):
    error_code: str
    message: str
    detail: list | None = None
