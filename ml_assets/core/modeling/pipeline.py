"""Estimators, cross-validation and the final served Pipeline (preprocessing + model)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

ModelType = Literal["random_forest", "hist_gradient_boosting"]

# Types skops must be told to trust when loading a saved Pipeline (MLflow saves
# sklearn models with skops, which refuses unknown types instead of running
# their code). Reviewed: found with skops.io.get_untrusted_types over RF and
# HGB pipelines, binary, multiclass and regression, numeric and categorical; each
# is a plain data holder (numpy.dtype, the tree structures) or a plain
# scikit-learn scoring function (f_classif for classification, f_regression for
# regression: SelectKBest's score_func), and nothing else is trusted. A user's
# own estimator or transformer needs its types listed by a person in
# ML_SKOPS_TRUSTED_TYPES (training reports them and fails until they are).
# ml_assets_tests/unit/test_features_modeling.py fails when a pipeline needs another type.
# The supported boosting libraries (LightGBM, XGBoost: classifier and regressor) are
# reviewed too: their estimators are parameter holders, and their Boosters are checked
# in the file before the library parses them (ml_assets/core/artifacts/booster_checks.py);
# collections.OrderedDict is LightGBM's plain parameter mapping. The platform's own
# label encoding for estimators that need numeric classes is its own reviewed code, and
# so is CatBoostModel, which holds a CatBoost estimator as its JSON export (checked by
# ml_assets/core/artifacts/catboost_checks.py before CatBoost parses it): no CatBoost
# type is ever in the file.
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "collections.OrderedDict",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
    "xgboost.sklearn.XGBRegressor",
    "ml_assets.core.modeling.labels.EncodedLabelsClassifier",
    "ml_assets.core.modeling.catboost_model.CatBoostModel",
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
    # binary / multiclass: a classifier; regression: the matching regressor.
    task: str = "multiclass"


def build_estimator(params: ModelParams):
    """The classifier (or, for regression, regressor) named by `params.model_type`,
    seeded."""
    regression = params.task == "regression"
    if params.model_type == "random_forest":
        if regression:
            return RandomForestRegressor(
                n_estimators=params.n_estimators, max_depth=params.max_depth,
                min_samples_leaf=params.min_samples_leaf, random_state=params.seed,
                n_jobs=params.n_jobs)
        return RandomForestClassifier(
            n_estimators=params.n_estimators, max_depth=params.max_depth,
            min_samples_leaf=params.min_samples_leaf, random_state=params.seed,
            n_jobs=params.n_jobs, class_weight=None)
    if params.model_type == "hist_gradient_boosting":
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        return cls(
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


def assemble(preprocessor: Pipeline | None, estimator) -> Pipeline:
    """The unfitted served shape: the platform's preprocessing then the model, or (no
    preprocessor: the user's own Pipeline takes the raw feature columns) the model
    alone as the one step `model`."""
    if preprocessor is None:
        return Pipeline([("model", clone(estimator))])
    return Pipeline([("preprocess", clone(preprocessor)), ("model", clone(estimator))])


def cv_splitter(folds: int, seed: int, stratified: bool = True):
    """Stratified k-fold for classification, plain shuffled k-fold for regression."""
    if stratified:
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def cross_validate_pipeline(preprocessor: Pipeline | None, estimator, X: pd.DataFrame,
                            y: pd.Series, folds: int = 5, seed: int = 42,
                            scoring: str = "f1_weighted", stratified: bool = True) -> CVResult:
    """k-fold CV (stratified unless `stratified=False`, as for regression) of
    preprocessing + model refitted inside every fold, so no fold sees statistics of its
    own validation rows. `preprocessor=None`: the estimator takes the raw columns."""
    if folds < 2:
        raise ValueError(f"cv folds must be at least 2, got {folds}")
    pipeline = assemble(preprocessor, estimator)
    splitter = cv_splitter(folds, seed, stratified)
    with warnings.catch_warnings():
        # A fold may lack a rare category, so SelectKBest's k can exceed its width.
        warnings.filterwarnings("ignore", message=".*is greater than n_features.*")
        result = cross_validate(pipeline, X, y, cv=splitter, scoring=scoring, n_jobs=1)
    return CVResult(scoring, [float(s) for s in result["test_score"]])


def fit_final_pipeline(fitted_preprocessor: Pipeline | None, estimator, X: pd.DataFrame,
                       y: pd.Series) -> Pipeline:
    """Fit the model on the preprocessed training split and join both into the one
    Pipeline that is logged and served (raw feature rows in, classes or values out).
    `fitted_preprocessor=None`: the estimator (the user's own Pipeline) is fitted on the
    raw feature columns and served as the one step `model`."""
    if fitted_preprocessor is None:
        return Pipeline([("model", clone(estimator).fit(X, y))])
    model = clone(estimator).fit(fitted_preprocessor.transform(X), y)
    return Pipeline([("preprocess", fitted_preprocessor), ("model", model)])


@dataclass
class TrainedModel:
    """The fitted, served Pipeline and where it is recorded in MLflow."""

    pipeline: Pipeline
    classes: list  # [] for a regressor
    mlflow_run_id: str
    model_uri: str
    model_id: str | None
    cv: CVResult
    params: dict
    data_fingerprint: str
    code_version: str
    task: str = "multiclass"
    estimator: str = ""  # module.Class of the final estimator
    user_code: dict = field(default_factory=dict)  # UserCode.as_tags(), when any
    skops_types: list = field(default_factory=list)  # types the artifact needs
    tuning: dict = field(default_factory=dict)  # summary of the search, when any

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"
