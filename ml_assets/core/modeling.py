"""Estimators, cross-validation and the final served Pipeline (preprocessing + model)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

ModelType = Literal["random_forest", "hist_gradient_boosting"]

# Types skops must be told to trust when loading a saved Pipeline (MLflow saves
# sklearn models with skops, which refuses unknown types instead of running
# their code). Reviewed: found with skops.io.get_untrusted_types over RF and
# HGB pipelines, binary and multiclass, numeric and categorical; each is a
# plain data holder or a scikit-learn function, and nothing else is trusted.
# ml_assets_tests/test_modeling.py fails when a pipeline needs another type.
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.feature_selection._univariate_selection.f_classif",
]


@dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters of either estimator (unused ones are ignored)."""

    model_type: ModelType = "random_forest"
    n_estimators: int = 200
    max_depth: int | None = None
    min_samples_leaf: int = 1
    learning_rate: float = 0.1
    max_iter: int = 200
    seed: int = 42
    n_jobs: int = -1


def build_estimator(params: ModelParams):
    """The classifier named by `params.model_type`, seeded."""
    if params.model_type == "random_forest":
        return RandomForestClassifier(
            n_estimators=params.n_estimators, max_depth=params.max_depth,
            min_samples_leaf=params.min_samples_leaf, random_state=params.seed,
            n_jobs=params.n_jobs, class_weight=None)
    if params.model_type == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(
            learning_rate=params.learning_rate, max_iter=params.max_iter,
            max_depth=params.max_depth, min_samples_leaf=max(1, params.min_samples_leaf),
            random_state=params.seed, early_stopping=False)
    raise ValueError(f"unknown model_type {params.model_type!r}; "
                     "use 'random_forest' or 'hist_gradient_boosting'")


@dataclass(frozen=True)
class CVResult:
    metric: str
    scores: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))


def cross_validate_pipeline(preprocessor: Pipeline, estimator, X: pd.DataFrame, y: pd.Series,
                            folds: int = 5, seed: int = 42,
                            scoring: str = "f1_weighted") -> CVResult:
    """Stratified k-fold CV of preprocessing + model refitted inside every fold, so
    no fold sees statistics of its own validation rows."""
    if folds < 2:
        raise ValueError(f"cv folds must be at least 2, got {folds}")
    pipeline = Pipeline([("preprocess", clone(preprocessor)), ("model", clone(estimator))])
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A fold may lack a rare category, so SelectKBest's k can exceed its width.
        warnings.filterwarnings("ignore", message=".*is greater than n_features.*")
        result = cross_validate(pipeline, X, y, cv=splitter, scoring=scoring, n_jobs=1)
    return CVResult(scoring, [float(s) for s in result["test_score"]])


def fit_final_pipeline(fitted_preprocessor: Pipeline, estimator, X: pd.DataFrame,
                       y: pd.Series) -> Pipeline:
    """Fit the model on the preprocessed training split and join both into the one
    Pipeline that is logged and served (raw feature rows in, classes out)."""
    model = clone(estimator).fit(fitted_preprocessor.transform(X), y)
    return Pipeline([("preprocess", fitted_preprocessor), ("model", model)])


@dataclass
class TrainedModel:
    """The fitted, served Pipeline and where it is recorded in MLflow."""

    pipeline: Pipeline
    classes: list
    mlflow_run_id: str
    model_uri: str
    model_id: str | None
    cv: CVResult
    params: dict
    data_fingerprint: str
    code_version: str
