"""Train/test split and the preprocessing pipeline (fitted on the training split only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_selection import SelectKBest, f_classif, f_regression
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml_assets.core.modeling.tasks import TaskDecision, TaskSetting, detect_task


@dataclass(frozen=True)
class Split:
    """A seeded train/test split of features and target (stratified for classification).

    X_train holds the model's features only; X_test keeps every validated column
    (the pipeline picks its features by name), so a champion trained on another
    schema version can be scored on the same rows."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    # Feature name -> kind (numeric / boolean / categorical), from the schema.
    features: dict[str, str] = field(default_factory=dict)
    # Validated columns that are not features -> why (the schema's note).
    excluded: dict[str, str] = field(default_factory=dict)
    # binary / multiclass / regression, and why (detected from the target or configured).
    task: str = "multiclass"
    task_reason: str = ""

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    @property
    def classes(self) -> list:
        """The classes of a classification target; [] for regression."""
        if self.is_regression:
            return []
        return sorted(pd.unique(self.y_train).tolist())


def feature_kinds(frame: pd.DataFrame, target: str) -> dict[str, str]:
    """numeric / boolean / categorical per column of a frame, from its dtypes (the
    graph itself takes the features from the schema: `feature_columns`)."""
    kinds = {}
    for column in frame.columns:
        if column == target:
            continue
        dtype = frame[column].dtype
        if pd.api.types.is_bool_dtype(dtype):
            kinds[column] = "boolean"
        elif pd.api.types.is_numeric_dtype(dtype):
            kinds[column] = "numeric"
        else:
            kinds[column] = "categorical"
    return kinds


def model_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas nullable columns (Int64, boolean, Float64 with pd.NA) as float64 with NaN
    and string columns as object with NaN for missing (what a CSV's object column holds
    and the categorical imputer replaces), so scikit-learn sees what serving's plain
    frames hold."""
    converted = {}
    for column in frame.columns:
        dtype = frame[column].dtype
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and (
                pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            if frame[column].isna().any() or not pd.api.types.is_bool_dtype(dtype):
                converted[column] = frame[column].astype("float64")
            else:
                converted[column] = frame[column].astype(bool)
        elif isinstance(dtype, pd.StringDtype) or (pd.api.types.is_object_dtype(dtype)
                                                   and frame[column].isna().any()):
            # None and pd.NA become NaN, the marker the categorical imputer replaces
            # (it leaves None alone: an encoder would learn it as a category).
            converted[column] = frame[column].astype(object).where(frame[column].notna(),
                                                                   np.nan)
    return frame.assign(**converted) if converted else frame


def split_frame(frame: pd.DataFrame, target: str, test_size: float = 0.2,
                seed: int = 42, features: dict[str, str] | None = None,
                excluded: dict[str, str] | None = None,
                task: TaskSetting | TaskDecision = "auto") -> Split:
    """Stratified split for classification (raises ValueError naming the class that is
    too rare to split); a plain seeded split for regression (the target as float64).

    `task` is a setting (`tasks.detect_task` decides) or a decision already taken.
    `features` (name -> kind, as `schemas.feature_columns` gives them; default: every
    column but the target) are the columns of X_train."""
    X = model_inputs(frame.drop(columns=[target]))
    y = frame[target]
    decision = task if isinstance(task, TaskDecision) else detect_task(y, task)
    if decision.is_regression:
        y = pd.to_numeric(y.astype(object) if isinstance(y.dtype, pd.StringDtype) else y,
                          errors="raise").astype("float64")
        if y.nunique() < 2:
            raise ValueError(f"regression target {target!r} has a single value; a model "
                             "needs a target that varies")
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed)
        if features is not None:
            X_train = X_train[list(features)]
        return Split(X_train, X_test, y_train, y_test, dict(features or {}),
                     dict(excluded or {}), decision.task, decision.reason)
    counts = y.value_counts()
    if len(counts) < 2:
        raise ValueError(f"target {target!r} has a single class {counts.index.tolist()}; "
                         "a classifier needs at least two")
    if counts.min() < 2:
        raise ValueError(f"class {str(counts.idxmin())!r} of {target!r} has fewer than 2 rows; "
                         "it cannot be split into train and test: add rows of that class "
                         "or remove it")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y)
    if features is not None:
        X_train = X_train[list(features)]
    return Split(X_train, X_test, y_train, y_test, dict(features or {}),
                 dict(excluded or {}), decision.task, decision.reason)


def _expected_width(X: pd.DataFrame, numeric: list[str], categorical: list[str]) -> int:
    width = len(numeric)
    for column in categorical:
        width += X[column].nunique(dropna=True) + int(X[column].isna().any())
    return width


def build_preprocessor(X_train: pd.DataFrame, kinds: dict[str, str],
                       k_best: int = 20, task: str = "multiclass") -> Pipeline:
    """Impute + scale numerics, impute + one-hot categoricals, then keep the k best
    columns by ANOVA F (classification) or univariate linear-regression F (regression).
    Unfitted: fit it on the training split only."""
    numeric = [c for c, kind in kinds.items() if kind in ("numeric", "boolean")]
    categorical = [c for c, kind in kinds.items() if kind == "categorical"]
    transformers = []
    if numeric:
        transformers.append(("numeric", Pipeline([
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
        ]), numeric))
    if categorical:
        transformers.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                      dtype=np.float32)),
        ]), categorical))
    width = _expected_width(X_train, numeric, categorical)
    k = "all" if k_best <= 0 or k_best >= width else k_best
    return Pipeline([
        ("columns", ColumnTransformer(transformers, remainder="drop",
                                      verbose_feature_names_out=False)),
        ("select", SelectKBest(f_regression if task == "regression" else f_classif, k=k)),
    ])


def selected_features(preprocessor: Pipeline) -> list[str]:
    """Names of the columns the fitted preprocessor passes to the model."""
    return [str(name) for name in preprocessor.get_feature_names_out()]
