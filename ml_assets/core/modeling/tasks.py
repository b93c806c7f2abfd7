"""What kind of learning problem a target is, and the metrics that judge it.

Pure: no Dagster, no MLflow. Classification keeps the metrics in `metrics.py`;
regression adds RMSE, MAE, R² and MAPE (MAPE only when no true value is 0). Each
metric has a direction, so gates and the champion comparison know whether higher
or lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import is_regressor

TaskType = Literal["binary", "multiclass", "regression"]
TaskSetting = Literal["auto", "classification", "binary", "multiclass", "regression"]

TASK_SETTINGS = ("auto", "classification", "binary", "multiclass", "regression")
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
CLASSIFICATION_METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted",
                          "roc_auc")
# "max": higher is better; "min": lower is better.
DIRECTIONS = {**dict.fromkeys(CLASSIFICATION_METRICS, "max"),
              "rmse": "min", "mae": "min", "r2": "max", "mape": "min"}
# A numeric target with more distinct values than this is read as continuous.
REGRESSION_MIN_DISTINCT = 20


@dataclass(frozen=True)
class TaskDecision:
    """The task and the sentence saying why (shown in the run's metadata)."""

    task: TaskType
    reason: str

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"


def _numeric(values: pd.Series) -> pd.Series | None:
    """The target as numbers when every non-null value is one (strings like "3.5"
    included), else None. Booleans are labels, not numbers."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.infer_dtype(
            values, skipna=True) == "boolean":
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    converted = pd.to_numeric(values, errors="coerce")
    if converted.notna().sum() == values.notna().sum() and values.notna().any():
        return converted.astype("float64")
    return None


def detect_task(y: pd.Series, setting: TaskSetting = "auto") -> TaskDecision:
    """binary / multiclass / regression for target `y`.

    `auto`: a numeric target with more than REGRESSION_MIN_DISTINCT distinct values, or
    with non-integral values, is a regression target; anything else is classification
    (binary with two classes). `classification` picks binary or multiclass by the count
    of classes; the other settings are taken as given (a regression target must be
    numeric)."""
    if setting not in TASK_SETTINGS:
        raise ValueError(f"unknown task {setting!r}; use one of {', '.join(TASK_SETTINGS)} "
                         "(ML_TASK)")
    observed = y.dropna()
    distinct = int(observed.nunique())
    numbers = _numeric(observed)
    if setting == "regression":
        if numbers is None:
            raise ValueError(f"target {y.name!r} is set as a regression target but holds "
                             "values that are not numbers")
        return TaskDecision("regression", "regression: set in the configuration")
    if setting in ("binary", "multiclass"):
        if setting == "binary" and distinct != 2:
            raise ValueError(f"target {y.name!r} is set as a binary target but has "
                             f"{distinct} classes; set ML_TASK=classification (or auto)")
        return TaskDecision(setting, f"{setting}: set in the configuration")
    if setting == "auto" and numbers is not None:
        integral = bool(np.all(np.mod(numbers.to_numpy(), 1) == 0))
        if distinct > REGRESSION_MIN_DISTINCT or not integral:
            why = (f"{distinct} distinct numeric values" if distinct > REGRESSION_MIN_DISTINCT
                   else "non-integral numeric values")
            return TaskDecision("regression", f"regression: target {y.name!r} has {why} "
                                "(set ML_TASK=classification to treat them as classes)")
    if distinct < 2:
        raise ValueError(f"target {y.name!r} has a single class "
                         f"{observed.unique().tolist()[:1]}; a classifier needs at least two")
    task: TaskType = "binary" if distinct == 2 else "multiclass"
    origin = "set in the configuration" if setting == "classification" else (
        f"target {y.name!r} has {distinct} classes")
    return TaskDecision(task, f"{task} classification: {origin}")


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """RMSE, MAE, R² and MAPE (NaN when a true value is 0: the ratio is undefined)."""
    truth = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(y_pred, dtype=np.float64)
    errors = predicted - truth
    total = float(np.sum((truth - truth.mean()) ** 2))
    r2 = 1.0 - float(np.sum(errors ** 2)) / total if total > 0 else float("nan")
    mape = (float(np.mean(np.abs(errors / truth))) if len(truth) and np.all(truth != 0)
            else float("nan"))
    return {"rmse": float(np.sqrt(np.mean(errors ** 2))), "mae": float(np.mean(np.abs(errors))),
            "r2": r2, "mape": mape}


def better(metric: str, new: float, old: float) -> float:
    """How much `new` improves on `old` for `metric`: positive is better, whatever the
    metric's direction."""
    return (new - old) if DIRECTIONS.get(metric, "max") == "max" else (old - new)


def task_metrics(task: str) -> tuple[str, ...]:
    """The held-out metrics of `task`."""
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def default_metric(task: TaskType) -> str:
    """The metric the champion comparison uses when none is configured."""
    return "rmse" if task == "regression" else "f1_weighted"


def default_cv_scoring(task: TaskType) -> str:
    """The scikit-learn scorer of the cross-validation when none is configured."""
    return "neg_root_mean_squared_error" if task == "regression" else "f1_weighted"


def is_regression_model(pipeline) -> bool:
    """A regressor (a predicted number per row, no classes) rather than a classifier."""
    # A classifier here always has predict_proba (training requires it); a user's
    # regressor need not declare RegressorMixin, so is_regressor alone misses it.
    return not hasattr(pipeline, "predict_proba") or (
        is_regressor(pipeline) and not hasattr(pipeline, "classes_"))
