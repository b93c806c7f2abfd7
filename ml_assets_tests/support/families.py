"""The model families the platform compiles, trained in the platform's served shape on
small bundled data: LightGBM, XGBoost and HistGradientBoosting classifiers and
regressors, and a Pipeline with a user's own step (`user_steps`), each on four datasets
covering binary, multiclass and regression, numeric and categorical inputs (penguins'
with missing values). One way for the parity tests, the served-answer tests and
benchmarks/bench_serving.py to build them."""

from __future__ import annotations

from collections.abc import Callable

import palmerpenguins
import pandas as pd
import pandera.pandas as pa

from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
from ml_assets.core.data.schema_inference import infer_schema
from ml_assets.core.data.schemas import breast_cancer_schema, feature_columns
from ml_assets.core.modeling.labels import encode_labels_for
from ml_assets.core.modeling.pipeline import fit_final_pipeline
from ml_assets_tests.support.models import DIABETES_TARGET, TrainedPipeline, diabetes_frame

TREES = 15  # few trees: each model converts and compares in well under a second


def _cancer() -> tuple[pd.DataFrame, pa.DataFrameSchema, str]:
    frame = load_breast_cancer_frame()
    return frame, breast_cancer_schema([c for c in frame.columns
                                        if c != BREAST_CANCER_TARGET]), BREAST_CANCER_TARGET


def _penguins(target: str) -> tuple[pd.DataFrame, pa.DataFrameSchema, str]:
    frame = palmerpenguins.load_penguins()
    if target != "species":
        frame = frame.dropna(subset=[target]).reset_index(drop=True)
    return frame, infer_schema(frame, target), target


def _diabetes() -> tuple[pd.DataFrame, pa.DataFrameSchema, str]:
    frame = diabetes_frame()
    return frame, infer_schema(frame, DIABETES_TARGET), DIABETES_TARGET


DATASETS: dict[str, Callable[[], tuple[pd.DataFrame, pa.DataFrameSchema, str]]] = {
    "cancer": _cancer,  # binary, numeric only
    # multiclass; string categoricals (island, sex) and missing values
    "penguins": lambda: _penguins("species"),
    "diabetes": _diabetes,  # regression, numeric only
    # regression with string categoricals and missing values
    "penguin_mass": lambda: _penguins("body_mass_g"),
}
TASKS = {"cancer": "binary", "penguins": "multiclass", "diabetes": "regression",
         "penguin_mass": "regression"}


def _lightgbm(task: str):
    import lightgbm

    kind = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
    return kind(n_estimators=TREES, num_leaves=8, verbose=-1, n_jobs=1, random_state=0)


def _xgboost(task: str):
    import xgboost

    kind = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    return kind(n_estimators=TREES, max_depth=3, random_state=0, n_jobs=1)


def _hist_gradient_boosting(task: str):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kind = (HistGradientBoostingRegressor if task == "regression"
            else HistGradientBoostingClassifier)
    return kind(max_iter=TREES, random_state=0)


def _user_step(task: str):
    from ml_assets_tests.support.user_steps import make_model

    return make_model(task, max_iter=TREES)


# family -> estimator for a task ("binary", "multiclass", "regression")
FAMILIES: dict[str, Callable[[str], object]] = {
    "lightgbm": _lightgbm,
    "xgboost": _xgboost,
    "hist_gradient_boosting": _hist_gradient_boosting,
    "user_step": _user_step,
}


def train_family(family: str, dataset: str, estimator=None) -> TrainedPipeline:
    """`family`'s estimator (or `estimator`) on `dataset` as training builds the served
    Pipeline: the platform's preprocessor, then the estimator (labels encoded where it
    needs numbers), fitted on the seeded split; X_test holds only feature columns."""
    frame, schema, target = DATASETS[dataset]()
    split = split_frame(frame, target, seed=42)
    if split.task != TASKS[dataset]:
        raise ValueError(f"{dataset} is {split.task}, not {TASKS[dataset]}")
    kinds = list(feature_columns(schema, target))
    chosen = FAMILIES[family](split.task) if estimator is None else estimator
    preprocessor = build_preprocessor(split.X_train, feature_columns(schema, target),
                                      task=split.task).fit(split.X_train, split.y_train)
    pipeline = fit_final_pipeline(preprocessor, encode_labels_for(chosen, split.y_train),
                                  split.X_train, split.y_train)
    return TrainedPipeline(pipeline, split.X_train[kinds], split.X_test[kinds], schema,
                           target)
