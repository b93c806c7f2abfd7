"""Real models for tests, the benchmark and demos, built with the pipeline's own core
functions (no Dagster): train, log with `log_pipeline`, register, set the alias."""

from __future__ import annotations

import contextlib
import inspect
import uuid
from dataclasses import dataclass
from unittest import mock

import mlflow
import numpy as np
import pandas as pd
import pandera.pandas as pa
from mlflow import MlflowClient
from sklearn.base import BaseEstimator, is_regressor
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml_assets.core.artifacts.compilation import compile_version
from ml_assets.core.artifacts.saving import log_pipeline
from ml_assets.core.data.datasets import (
    BREAST_CANCER_TARGET,
    SyntheticSpec,
    load_breast_cancer_frame,
    make_synthetic,
)
from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
from ml_assets.core.data.schemas import breast_cancer_schema, feature_columns, synthetic_schema
from ml_assets.core.modeling.pipeline import ModelParams, build_estimator, fit_final_pipeline


@dataclass(frozen=True)
class TrainedPipeline:
    pipeline: Pipeline
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    schema: pa.DataFrameSchema
    target: str


def _train(frame: pd.DataFrame, schema: pa.DataFrameSchema, target: str,
           params: ModelParams) -> TrainedPipeline:
    split = split_frame(frame, target, seed=params.seed)
    kinds = feature_columns(schema, target)
    preprocessor = build_preprocessor(split.X_train, kinds).fit(split.X_train, split.y_train)
    pipeline = fit_final_pipeline(preprocessor, build_estimator(params), split.X_train,
                                  split.y_train)
    return TrainedPipeline(pipeline, split.X_train, split.X_test, schema, target)


def train_breast_cancer(n_estimators: int = 20, seed: int = 42,
                        max_depth: int | None = None) -> TrainedPipeline:
    """The platform's default model (RandomForest on scikit-learn's breast cancer data)."""
    frame = load_breast_cancer_frame()
    features = [c for c in frame.columns if c != BREAST_CANCER_TARGET]
    return _train(frame, breast_cancer_schema(features), BREAST_CANCER_TARGET,
                  ModelParams(n_estimators=n_estimators, seed=seed, max_depth=max_depth))


def train_synthetic(spec: SyntheticSpec, n_estimators: int = 20,
                    seed: int = 42) -> TrainedPipeline:
    """A model on the seeded synthetic generator (categoricals, missing values, classes)."""
    return _train(make_synthetic(spec), synthetic_schema(spec), spec.target,
                  ModelParams(n_estimators=n_estimators, seed=seed))


def train_frame(frame: pd.DataFrame, schema: pa.DataFrameSchema, target: str,
                n_estimators: int = 20, seed: int = 42) -> TrainedPipeline:
    """A model on any frame and its schema; columns the schema excludes from the features
    (identifiers, ...) are dropped first, as the pipeline's own training does."""
    keep = [*feature_columns(schema, target), target]
    return _train(frame[keep], schema, target, ModelParams(n_estimators=n_estimators,
                                                             seed=seed))


def train_estimator(frame: pd.DataFrame, schema: pa.DataFrameSchema, target: str,
                    estimator: BaseEstimator, seed: int = 42) -> TrainedPipeline:
    """Any estimator behind the platform's preprocessing, as `ml-platform train` builds it
    with ML_ESTIMATOR (the task detected from the target; identifiers and other columns
    the schema excludes dropped first)."""
    from ml_assets.core.modeling.labels import encode_labels_for

    frame = frame[[*feature_columns(schema, target), target]]
    split = split_frame(frame, target, seed=seed)
    kinds = feature_columns(schema, target)
    preprocessor = build_preprocessor(split.X_train, kinds, task=split.task).fit(
        split.X_train, split.y_train)
    model = estimator if split.is_regression else encode_labels_for(estimator, split.y_train)
    pipeline = fit_final_pipeline(preprocessor, model, split.X_train, split.y_train)
    return TrainedPipeline(pipeline, split.X_train, split.X_test, schema, target)


DIABETES_TARGET = "progression"


def diabetes_frame() -> pd.DataFrame:
    """scikit-learn's bundled diabetes data (442 rows, 10 numeric features) with its
    continuous target `progression` (disease progression after one year)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True)
    return data.frame.rename(columns={"target": DIABETES_TARGET})


def diabetes_schema(features: list[str]) -> pa.DataFrameSchema:
    columns = {name: pa.Column(float, nullable=False, coerce=True) for name in features}
    columns[DIABETES_TARGET] = pa.Column(float, nullable=False, coerce=True)
    return pa.DataFrameSchema(columns, strict=True, name="diabetes", ordered=False)


def train_regression(estimator: BaseEstimator | None = None, seed: int = 42,
                     frame: pd.DataFrame | None = None,
                     schema: pa.DataFrameSchema | None = None,
                     target: str = DIABETES_TARGET, scale: bool = True) -> TrainedPipeline:
    """A regression model: Pipeline(StandardScaler, `estimator`) (default: a small
    RandomForestRegressor) on the diabetes data (or `frame`/`schema`/`target`), fitted on
    a seeded 80% split. `scale=False`: `estimator` is the whole model (e.g. a Pipeline
    of the user's own steps), served as the one step `model`."""
    from sklearn.ensemble import RandomForestRegressor

    frame = diabetes_frame() if frame is None else frame
    features = [c for c in frame.columns if c != target]
    schema = diabetes_schema(features) if schema is None else schema
    estimator = estimator if estimator is not None else RandomForestRegressor(
        n_estimators=20, random_state=seed)
    X_train, X_test, y_train, _ = train_test_split(
        frame[features], frame[target].astype("float64"), test_size=0.2, random_state=seed)
    steps = [("scale", StandardScaler())] if scale else []
    pipeline = Pipeline([*steps, ("model", estimator)]).fit(X_train, y_train)
    return TrainedPipeline(pipeline, X_train, X_test, schema, target)



def same_numbers(values, expected) -> bool:
    """Equal but for floating-point noise (rtol 1e-12, atol 1e-9): a served regressor's
    answers against its Pipeline's own."""
    return np.allclose(np.asarray(values, dtype=float), np.asarray(expected, dtype=float),
                       rtol=1e-12, atol=1e-9)

def _log_regressor(trained: TrainedPipeline, schema: pa.DataFrameSchema):
    """log_pipeline for a regressor: with its `task` parameter when it has one; else
    the same logging with the metadata a regressor carries (task, no classes)."""
    if "task" in inspect.signature(log_pipeline).parameters:
        return log_pipeline(trained.pipeline, trained.X_train, schema, trained.target,
                            task="regression")
    import numpy as np

    from ml_assets.core.artifacts.loading import FEATURE_SCHEMA_KEY, refuse_untrusted, trusted_types
    from ml_assets.core.artifacts.saving import required_types
    from ml_assets.core.data.schemas import feature_columns, model_signature, schema_yaml

    needed = required_types(trained.pipeline)
    refuse_untrusted(needed, "this pipeline", trusted_types(), action="log")
    sample = trained.X_train[[c for c in feature_columns(schema, trained.target)
                              if c in trained.X_train]].head(5)
    signature = model_signature(schema, trained.target, np.asarray(
        trained.pipeline.predict(sample), dtype=np.float64))
    return mlflow.sklearn.log_model(
        trained.pipeline, name="model", signature=signature, input_example=sample,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=needed, metadata={FEATURE_SCHEMA_KEY: schema_yaml(schema),
                                              "target": trained.target,
                                              "task": "regression"})


def experiment_id(name: str, artifact_location: str | None = None) -> str:
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def register(trained: TrainedPipeline, model_name: str, experiment: str,
             alias: str | None = "champion", metrics: dict[str, float] | None = None,
             schema: pa.DataFrameSchema | None = None,
             infer_requirements: bool = False, compile: bool = False) -> tuple[str, object]:
    """Log `trained` in a new run of `experiment` (an id), register it under `model_name`
    and point `alias` at it. Returns (version, MLflow ModelInfo). A regressor is logged
    with metadata task "regression" and no classes.

    MLflow infers pip requirements by loading the model in a subprocess (~3 s); that is
    skipped unless `infer_requirements` (MLflow's defaults are recorded instead): neither
    this service nor `mlflow models serve --env-manager local` reads them.

    `compile` converts the pipeline to ONNX and checks parity on X_test, as the
    pipeline's `registered_model` asset does (the version's onnx.* tags say how it went);
    it costs seconds, so only the tests about the compiled runtime ask for it. Without
    it the version has no graph and the service answers with the Pipeline."""
    skip = contextlib.nullcontext() if infer_requirements else mock.patch.object(
        mlflow.models, "infer_pip_requirements", lambda *args, fallback=None, **kw: fallback)
    with skip, mlflow.start_run(experiment_id=experiment):
        if metrics:
            mlflow.log_metrics(metrics)
        if is_regressor(trained.pipeline) and not hasattr(trained.pipeline, "classes_"):
            info = _log_regressor(trained, schema or trained.schema)
        else:
            info = log_pipeline(trained.pipeline, trained.X_train, schema or trained.schema,
                                trained.target)
    version = str(mlflow.register_model(info.model_uri, model_name).version)
    if compile:
        regression = is_regressor(trained.pipeline) and not hasattr(trained.pipeline, "classes_")
        classes = getattr(trained.pipeline, "classes_", ())
        task = "regression" if regression else "binary" if len(classes) == 2 else "multiclass"
        features = list(trained.X_train.columns)
        compile_version(MlflowClient(), model_name, version, info.model_id, info.run_id,
                        trained.pipeline, trained.X_train, trained.X_test[features], task)
    if alias:
        MlflowClient().set_registered_model_alias(model_name, alias, version)
    return version, info


def register_new(trained: TrainedPipeline, prefix: str, artifact_root: str | None = None,
                 **kwargs) -> str:
    """`trained` as version 1 and champion of a new registered model (and experiment)
    named `prefix`_<random>; its name. `kwargs` go to register()."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    register(trained, name, experiment_id(name, artifact_root), **kwargs)
    return name



def champion_and_challenger() -> tuple[TrainedPipeline, TrainedPipeline]:
    """Two breast-cancer forests that disagree on some rows: a weak stump forest (the
    champion) and a real forest (the challenger)."""
    return (train_breast_cancer(n_estimators=5, max_depth=1, seed=1),
            train_breast_cancer(n_estimators=20, seed=2))


def register_champion_and_challenger(models: tuple[TrainedPipeline, TrainedPipeline],
                                     prefix: str, artifact_root: str | None = None) -> str:
    """models[0] as version 1 and champion, models[1] as version 2 without an alias, of
    a new registered model named `prefix`_<random>; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    experiment = experiment_id(name, artifact_root)
    register(models[0], name, experiment)
    register(models[1], name, experiment, alias=None)
    return name

@dataclass(frozen=True)
class Champion:
    """A registered model whose version `version` is its champion."""

    name: str
    version: str
    trained: TrainedPipeline
    info: object  # MLflow's ModelInfo

