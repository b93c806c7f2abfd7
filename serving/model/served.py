"""One loaded model version (`ServedModel`): its Pipeline, its compiled (ONNX) graph when
it may answer, its generated request models and task, and how it predicts validated
rows. The helpers below read a fitted Pipeline at load time (task, prediction
intervals, how a missing category reaches it); serving/model/store.py loads, checks
and swaps versions.
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_regressor
from sklearn.pipeline import Pipeline

from ml_assets.core.artifacts.onnx.runtime import CompiledModel, near_ties
from ml_assets.core.modeling.jobs import nested_estimators
from serving.model.feature_specs import FeatureSpec, frame_from_rows
from serving.model.request_models import RequestModels
from serving.model.row_pipeline import RowPipeline, row_pipeline

logger = logging.getLogger(__name__)

# Held by the champion's Pipeline predictions (the predict thread); SHADOW_LOCK by the
# shadow lane's (serving/shadow_lane.py), so a slow shadow never holds up the champion.
# A smoke test, which records the warnings a model raises, takes both (SHADOW_LOCK
# first): no prediction then runs under the shared "ignore" filters below.
PREDICT_LOCK = threading.Lock()
SHADOW_LOCK = threading.Lock()


class _QuietSection:
    """The process-wide warning filters as one `ignore` while any Pipeline prediction
    runs, restored when the last one ends. The filters are global, so two threads
    predicting at once under their own `catch_warnings` could restore each other's
    `ignore` for good; here the first thread in installs it and the last one out puts
    the saved filters back (a lock held for microseconds, never during a prediction)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: warnings.catch_warnings | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                saved = warnings.catch_warnings()
                saved.__enter__()
                warnings.resetwarnings()
                warnings.simplefilter("ignore")
                self._saved = saved
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._saved is not None:
                    self._saved.__exit__(None, None, None)
                    self._saved = None


quiet_warnings = _QuietSection()

REGRESSION = "regression"
# Classifiers: "binary" | "multiclass" (a model logged before tasks existed, without a
# `task` in its metadata, is a classifier unless its final step is a regressor).
CLASSIFICATION_TASKS = ("binary", "multiclass")
INTERVAL_LEVEL = 0.95
INTERVAL_Z = 1.959963984540054  # the standard normal's 97.5% quantile: mean +/- z * std


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version and everything a request needs from it."""

    name: str
    version: str
    alias: str
    run_id: str | None
    pipeline: Pipeline
    target: str
    labels: list[str]
    class_values: list
    requests: RequestModels
    metrics: dict[str, float]
    loaded_at: datetime
    metadata: dict = field(repr=False)
    # Schema columns that are no model input, with their roles (identifier, ...).
    excluded_columns: dict[str, str] = field(default_factory=dict)
    # "binary" | "multiclass" | "regression". Regressors: labels and class_values are
    # empty, and `interval` says whether the final step's predict takes return_std.
    task: str = "binary"
    interval: bool = False
    # The version's compiled ONNX graph when it passed parity and this service may use
    # it (ML_API_RUNTIME); None: the Pipeline answers, and `runtime_reason` says why.
    compiled: CompiledModel | None = field(default=None, repr=False)
    runtime_reason: str = ""
    # What a missing categorical reaches the Pipeline as: NaN (its imputer's marker, as
    # in training frames), or None for a model that learned None as a category.
    missing_string: Any = np.nan
    # The scikit-learn runtime's hot path (serving/model/row_pipeline.py): the Pipeline
    # answered from rows, its preprocessing replayed in numpy; None: the Pipeline
    # answers from a DataFrame, and `rows_reason` says why. Built at construction
    # (kept by dataclasses.replace while pipeline, features and missing marker stay).
    rows_pipeline: RowPipeline | None = field(default=None, repr=False, compare=False)
    rows_reason: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        kept = self.rows_pipeline
        if kept is not None and kept.serves(self.pipeline, self.features,
                                            self.missing_string):
            return
        try:
            with quiet_warnings():  # probe rows may be unseen categories to an encoder
                fast, reason = row_pipeline(self.pipeline, self.features,
                                            self.missing_string)
        except Exception as exc:  # noqa: BLE001 - a fast path is never worth a failed load
            fast, reason = None, f"the numpy replay failed to build ({type(exc).__name__}: {exc})"
        object.__setattr__(self, "rows_pipeline", fast)
        object.__setattr__(self, "rows_reason", reason)
        logger.info("%s version %s, scikit-learn path: %s", self.name, self.version,
                    reason if fast is not None else f"DataFrame through the Pipeline ({reason})")

    @property
    def is_regression(self) -> bool:
        return self.task == REGRESSION

    @property
    def runtime(self) -> str:
        """What answers: "onnx" (the compiled graph) or "sklearn" (the Pipeline)."""
        return "sklearn" if self.compiled is None else "onnx"

    @property
    def features(self) -> tuple[FeatureSpec, ...]:
        return self.requests.specs

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.requests.feature_names

    def frame(self, rows: list[list]) -> pd.DataFrame:
        """The Pipeline's DataFrame for validated rows (training's dtypes)."""
        return frame_from_rows(rows, self.features, self.missing_string)

    def compiled_answer(self, rows: list[list]
                        ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """What the batcher returns for `rows` ((probabilities, predicted index) or
        (values, None)) when the compiled graph answers every row alone, else None."""
        answered = self.compiled_rows(rows)
        if answered is None or not answered[2].all():
            return None
        return answered[0], answered[1]

    def compiled_rows(self, rows: list[list]
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
        """One graph call for `rows`: what the batcher returns for them, and per row
        whether the graph answered it alone (finite, and for a classifier no near tie:
        rows that are not need the Pipeline). None without a graph."""
        if self.compiled is None:
            return None
        if self.is_regression:
            values = self.compiled.predict_values(rows)
            return values, None, np.isfinite(values)
        proba = self.compiled.predict_proba(rows)
        finite = np.isfinite(proba)
        if finite.all():  # the usual case: no row to pick out
            alone = ~near_ties(proba)
        else:
            alone = finite.all(axis=1)
            alone[alone] = ~near_ties(proba[alone])
        # float32 sums of a forest land a hair outside [0, 1] (-1.2e-7, 1.0000001)
        np.clip(proba, 0.0, 1.0, out=proba)
        return proba, proba.argmax(axis=1), alone

    def compiled_values(self, rows: list[list]) -> np.ndarray | None:
        """The compiled graph's predicted values when all are finite; None otherwise or
        when there is no graph (the Pipeline answers then)."""
        if self.compiled is None:
            return None
        values = self.compiled.predict_values(rows)
        return values if np.isfinite(values).all() else None

    def predict_proba(self, rows: list[list], lock: threading.Lock = PREDICT_LOCK
                      ) -> np.ndarray:
        """Class probabilities for validated rows: the compiled graph straight from the
        rows (no DataFrame) when there is one, except that its near-tie rows are
        answered by the Pipeline, and a batch the graph answers with values that are
        not finite goes to the Pipeline whole (its answer or its overflow diagnosis is
        what the client gets); the Pipeline (one DataFrame, one call) otherwise."""
        if self.compiled is None:
            return self.sklearn_proba(rows, lock)
        proba = self.compiled.predict_proba(rows)
        if not np.isfinite(proba).all():
            return self.sklearn_proba(rows, lock)
        np.clip(proba, 0.0, 1.0, out=proba)
        ties = np.flatnonzero(near_ties(proba))
        if len(ties):
            proba[ties] = self.sklearn_proba([rows[i] for i in ties], lock)
        return proba

    def sklearn_proba(self, rows: list[list], lock: threading.Lock = PREDICT_LOCK
                      ) -> np.ndarray:
        """The Pipeline's class probabilities for validated rows. `lock`: PREDICT_LOCK
        (the champion's predict thread) or SHADOW_LOCK (the shadow lane). From the rows
        (`rows_pipeline`) when it can; any rows it hands back, or any error it meets,
        go through the Pipeline from a DataFrame, whose answer or error stands."""
        # scikit-learn's joblib wrapper re-installs every process-wide warning filter
        # for every tree of every call: with the ~15 filters mlflow & co. install, ~40%
        # of a one-row call of a 200-tree forest. Predict under one filter instead; the
        # smoke test at load time shows the warnings a model raises. The lock keeps the
        # smoke test of a candidate from interleaving its filter swaps with these.
        fast = self.rows_pipeline
        if fast is not None:
            with lock, quiet_warnings():
                try:
                    return fast.predict_proba(rows)
                except Exception:  # noqa: BLE001, S110 - the Pipeline answers or raises
                    pass
        frame = self.frame(rows)
        with lock, quiet_warnings():
            return self.pipeline.predict_proba(frame)

    def predict_values(self, rows: list[list], lock: threading.Lock = PREDICT_LOCK
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """A regressor's predicted values for validated rows, and their standard
        deviations when the final estimator gives them (`interval`), else None. The
        compiled graph answers when there is one (never for `interval` models: ONNX has no
        standard deviation), the Pipeline for a batch it gives non-finite values."""
        values = self.compiled_values(rows)
        if values is not None:
            return values, None
        fast = self.rows_pipeline
        if fast is not None:
            with lock, quiet_warnings():  # see sklearn_proba
                try:
                    return regression_output(fast, rows, self.interval)
                except Exception:  # noqa: BLE001, S110 - the Pipeline answers or raises
                    pass
        frame = self.frame(rows)
        with lock, quiet_warnings():
            return regression_output(self.pipeline, frame, self.interval)

    def describe(self) -> dict:
        """What GET /model shows."""
        return {
            "name": self.name, "version": self.version, "alias": self.alias,
            "run_id": self.run_id, "target": self.target, "task": self.task,
            "classes": self.labels, "prediction_interval": self.interval,
            "runtime": self.runtime, "runtime_reason": self.runtime_reason,
            "metrics": self.metrics, "loaded_at": self.loaded_at.isoformat(),
            "features": [spec.as_dict() for spec in self.features],
            "excluded_columns": self.excluded_columns,
            "input_policy": self.requests.policy,
        }


def _final_step(pipeline):
    """The last estimator, through nested Pipelines (a user's factory Pipeline is the
    last step of the served one)."""
    steps = getattr(pipeline, "steps", None)
    return _final_step(steps[-1][1]) if steps else pipeline


def offers_std(pipeline) -> bool:
    """Whether the final estimator's predict takes `return_std` (BayesianRidge,
    GaussianProcessRegressor, ...): then the service answers prediction intervals."""
    predict = getattr(_final_step(pipeline), "predict", None)
    if predict is None:
        return False
    try:
        return "return_std" in inspect.signature(predict).parameters
    except (TypeError, ValueError):  # a predict without a signature: no interval
        return False


def model_task(metadata: dict, pipeline) -> str:
    """The served task: the metadata's `task` when it names one; otherwise (models logged
    before tasks existed) "regression" for a regressor, else a classifier's task by its
    count of classes."""
    logged = metadata.get("task")
    if logged == REGRESSION or logged in CLASSIFICATION_TASKS:
        return str(logged)
    if logged is not None:
        raise ValueError(f"unknown task {logged!r} in the model's metadata; expected "
                         f"{', '.join((*CLASSIFICATION_TASKS, REGRESSION))}")
    if is_regressor(pipeline) and not hasattr(pipeline, "classes_"):
        return REGRESSION
    return "binary" if len(getattr(pipeline, "classes_", ())) == 2 else "multiclass"


def _as_vector(values, rows: int, what: str) -> np.ndarray:
    """A 1-D float64 array of `rows` values ((n, 1) is accepted); ValueError otherwise."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (rows,):
        raise ValueError(f"{what} returned shape {array.shape}, expected ({rows},)")
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{what} returned {array.dtype} values, not numbers")
    return array.astype(np.float64, copy=False)


def regression_output(pipeline, frame, interval: bool
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    rows = len(frame)
    if not interval:
        return _as_vector(pipeline.predict(frame), rows, "predict"), None
    mean, std = pipeline.predict(frame, return_std=True)
    return (_as_vector(mean, rows, "predict"),
            _as_vector(std, rows, "predict(return_std=True)"))


def intervals(values: list[float], std: list[float]) -> list[dict[str, float]]:
    """The 95% prediction interval of each value: mean +/- 1.96 std (normal errors)."""
    return [{"lower": v - INTERVAL_Z * s, "upper": v + INTERVAL_Z * s, "level": INTERVAL_LEVEL}
            for v, s in zip(values, std, strict=True)]


def learned_none_category(pipeline) -> bool:
    """Whether a fitted encoder of the pipeline holds None as a category: the model was
    trained on frames whose missing strings were None (before training normalised them
    to NaN), so a missing categorical must reach it as None, not NaN."""
    for estimator in nested_estimators(pipeline):
        for categories in getattr(estimator, "categories_", None) or ():
            if any(value is None for value in np.asarray(categories, dtype=object).tolist()):
                return True
    return False
