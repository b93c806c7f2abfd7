"""What the converter refuses before converting: an estimator skl2onnx has no converter
for, a missing value reaching an estimator that routes NaN natively where the graph
would not; and whether the final estimator is fed float32."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.onnx.columns import _served_dtypes
from ml_assets.core.artifacts.onnx.contract import _lib


def _qualname(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _steps(estimator) -> list:
    """The chain of a (possibly nested) Pipeline, flattened; 'passthrough' skipped; the
    platform's label encoding (`EncodedLabelsClassifier`) replaced by the estimator it
    holds: it changes the class names only, which the graph's metadata carries."""
    from sklearn.pipeline import Pipeline

    from ml_assets.core.modeling.labels import EncodedLabelsClassifier

    if isinstance(estimator, EncodedLabelsClassifier):
        return _steps(estimator.estimator_)
    if isinstance(estimator, Pipeline):
        flat = []
        for _, step in estimator.steps:
            if step is None or (isinstance(step, str) and step == "passthrough"):
                continue
            flat.extend(_steps(step))
        return flat
    return [estimator]


def _components(estimator):
    """Every estimator the converter must convert (through Pipelines, ColumnTransformers
    and FeatureUnions)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    from ml_assets.core.modeling.labels import EncodedLabelsClassifier

    if isinstance(estimator, str) or estimator is None:
        return
    if isinstance(estimator, EncodedLabelsClassifier):
        yield from _components(estimator.estimator_)
        return
    yield estimator
    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            yield from _components(step)
    elif isinstance(estimator, ColumnTransformer):
        for _, transformer, _ in getattr(estimator, "transformers_", estimator.transformers):
            yield from _components(transformer)
    elif isinstance(estimator, FeatureUnion):
        for _, transformer in estimator.transformer_list:
            yield from _components(transformer)


def _unsupported(pipeline) -> str | None:
    from ml_assets.core.artifacts.onnx.catboost_export import not_exportable
    from ml_assets.core.modeling.catboost_model import CatBoostModel

    sklearn_operator_name_map = _lib("skl2onnx._supported_operators").sklearn_operator_name_map

    for component in _components(pipeline):
        if isinstance(component, CatBoostModel) and not_exportable(component):
            return not_exportable(component)
        if type(component) not in sklearn_operator_name_map and not hasattr(
                component, "onnx_converter"):
            return f"skl2onnx has no converter for {_qualname(component)}"
    return None


def _missing_row_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per column of `columns`: row i `frame`'s first row with columns[i]
    missing (NaN, as serving gives a missing value to the Pipeline)."""
    base = _served_dtypes(frame.head(1))
    rows = pd.concat([base] * len(columns), ignore_index=True)
    for i, column in enumerate(columns):
        rows.loc[i, column] = np.nan
    return rows


def _transformed(steps: list, frame: pd.DataFrame) -> np.ndarray | None:
    """`frame` through the transformers `steps` as floats; None when they refuse it."""
    data: Any = frame
    try:
        for step in steps:
            data = step.transform(data)
        dense = data.toarray() if hasattr(data, "toarray") else data
        return np.asarray(dense, dtype=np.float64)
    except Exception:  # noqa: BLE001 - the Pipeline refuses it (or gives no numbers)
        return None


def _nan_routing(pipeline, X_sample: pd.DataFrame, missing: Collection[str]) -> str | None:
    """Why the graph would change what a missing value does, or None: a NaN reaching
    the final estimator, which it accepts (it routes NaN natively: the forests,
    LightGBM, XGBoost) and the converted trees would send down another branch.
    HistGradientBoosting's graph routes NaN as scikit-learn does (its converter keeps
    each node's missing side), so a NaN may reach it."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    steps = _steps(pipeline)
    final, transformers = steps[-1], steps[:-1]
    if isinstance(final, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        return None
    columns = [c for c in X_sample.columns if c in missing]
    if len(X_sample) == 0 or not columns:
        return None
    probes = _missing_row_frame(X_sample, columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = _transformed(transformers, probes)
        for i, column in enumerate(columns):
            values = (together[i:i + 1] if together is not None
                      else _transformed(transformers, probes.iloc[[i]]))
            if values is None or not np.isnan(values).any():
                continue
            try:
                final.predict(values)
            except Exception:  # noqa: BLE001 - the estimator refuses NaN: no semantics
                continue
            return (f"a missing {column!r} reaches {type(final).__name__} as NaN, which "
                    "scikit-learn routes natively and the ONNX graph cannot; put an "
                    "imputer in front of it")
    return None


def _float32_input(estimator) -> bool:
    """Whether the graph feeds the final estimator float32: scikit-learn's tree module
    does so itself (forests, gradient boosting, decision trees cast X to float32 before
    thresholding), and so does XGBoost, so the graph's float32 trees see exactly their
    values; onnxmltools' LightGBM trees take float32 too (`boosters`), and CatBoost
    compares float32 values with float32 borders (`catboost_export`)."""
    from sklearn.ensemble._forest import BaseForest

    from ml_assets.core.artifacts.onnx.boosters import is_booster
    from ml_assets.core.modeling.catboost_model import CatBoostModel

    if is_booster(estimator) or isinstance(estimator, CatBoostModel):
        return True
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.tree import BaseDecisionTree

    return isinstance(estimator, BaseForest | BaseGradientBoosting | BaseDecisionTree)
