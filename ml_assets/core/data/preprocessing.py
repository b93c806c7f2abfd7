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

from ml_assets.core.data.encodings import (
    ONE_HOT_TOP_K,
    TOP_K_CATEGORIES,
    effective_encoding,
)
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
    # Categorical feature -> the encoding its schema column records (`encodings`).
    encodings: dict[str, str] = field(default_factory=dict)

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


def _distinct(X: pd.DataFrame, column: str) -> int:
    """Values the encoder sees: the distinct values, plus the missing marker if any."""
    return int(X[column].nunique(dropna=True)) + int(X[column].isna().any())


def categorical_encodings(X_train: pd.DataFrame, categorical: list[str],
                          recorded: dict[str, str] | None = None) -> dict[str, str]:
    """Categorical column -> the encoding applied (`encodings.effective_encoding`: the
    schema's record, bounded by the rule on the training split's values)."""
    recorded = recorded or {}
    return {column: effective_encoding(recorded.get(column), _distinct(X_train, column))
            for column in categorical}


def _expected_width(X: pd.DataFrame, numeric: list[str], encodings: dict[str, str]) -> int:
    width = len(numeric)
    for column, encoding in encodings.items():
        distinct = _distinct(X, column)
        width += min(distinct, TOP_K_CATEGORIES + 1) if encoding == ONE_HOT_TOP_K else distinct
    return width


def build_preprocessor(X_train: pd.DataFrame, kinds: dict[str, str],
                       k_best: int = 20, task: str = "multiclass",
                       encodings: dict[str, str] | None = None) -> Pipeline:
    """Impute + scale numerics, impute + one-hot categoricals (the `one_hot_top_k` ones:
    their TOP_K_CATEGORIES most frequent values plus one column for every other value,
    `encodings`), then keep the k best columns by ANOVA F (classification) or univariate
    linear-regression F (regression). `encodings`: what the schema records per
    categorical column (`schemas.feature_encodings`); the rule decides for the others.
    Unfitted: fit it on the training split only."""
    numeric = [c for c, kind in kinds.items() if kind in ("numeric", "boolean")]
    categorical = [c for c, kind in kinds.items() if kind == "categorical"]
    applied = categorical_encodings(X_train, categorical, encodings)
    one_hot = [c for c in categorical if applied[c] != ONE_HOT_TOP_K]
    top_k = [c for c in categorical if applied[c] == ONE_HOT_TOP_K]
    transformers = []
    if numeric:
        transformers.append(("numeric", Pipeline([
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
        ]), numeric))
    if one_hot:
        transformers.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                      dtype=np.float32)),
        ]), one_hot))
    if top_k:
        # Bounded width: rarer and unseen values share the last ("infrequent") column.
        transformers.append(("categorical_top_k", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("one_hot", OneHotEncoder(handle_unknown="infrequent_if_exist",
                                      max_categories=TOP_K_CATEGORIES + 1,
                                      sparse_output=False, dtype=np.float32)),
        ]), top_k))
    width = _expected_width(X_train, numeric, applied)
    k = "all" if k_best <= 0 or k_best >= width else k_best
    return Pipeline([
        ("columns", ColumnTransformer(transformers, remainder="drop",
                                      verbose_feature_names_out=False)),
        ("select", SelectKBest(f_regression if task == "regression" else f_classif, k=k)),
    ])


def selected_features(preprocessor: Pipeline) -> list[str]:
    """Names of the columns the fitted preprocessor passes to the model."""
    return [str(name) for name in preprocessor.get_feature_names_out()]
