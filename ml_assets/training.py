"""Training: k-fold cross-validation, the final fit, and the MLflow record."""

import json
from typing import Literal

import mlflow
import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field
from sklearn.pipeline import Pipeline

from ml_assets.core import modeling
from ml_assets.core.features import Split
from ml_assets.core.model_logging import log_pipeline
from ml_assets.core.provenance import code_version, frame_fingerprint, library_versions
from ml_assets.core.schema_inference import DATETIME_POLICY
from ml_assets.core.schemas import excluded_columns, schema_yaml
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.validation import not_features


class TrainingConfig(Config):
    model_type: Literal["random_forest", "hist_gradient_boosting"] = Field(
        default="random_forest",
        description="random_forest (default) or hist_gradient_boosting (large data).")
    n_estimators: int = Field(default=200, ge=1, description="random_forest: trees.")
    max_depth: int | None = Field(default=None, description="Tree depth limit; None = no "
                                  "limit (random_forest) / no limit (boosting).")
    min_samples_leaf: int = Field(default=1, ge=1, description="Minimum rows per leaf.")
    learning_rate: float = Field(default=0.1, gt=0, description="hist_gradient_boosting: "
                                 "shrinkage per iteration.")
    max_iter: int = Field(default=200, ge=1, description="hist_gradient_boosting: "
                          "boosting iterations.")
    cv_folds: int = Field(default=5, ge=2, description="k of stratified k-fold CV.")
    cv_scoring: str = Field(default="f1_weighted", description="scikit-learn scorer for CV.")
    seed: int = Field(default=42, description="Seed of the estimator and the CV folds.")
    n_jobs: int = Field(default=-1, description="random_forest: parallel jobs (-1 = all "
                        "cores); results do not depend on it.")

    def model_params(self) -> modeling.ModelParams:
        return modeling.ModelParams(
            model_type=self.model_type, n_estimators=self.n_estimators,
            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
            learning_rate=self.learning_rate, max_iter=self.max_iter, seed=self.seed,
            n_jobs=self.n_jobs)


def training_fingerprint(split: Split) -> str:
    return frame_fingerprint(split.X_train)[:32] + frame_fingerprint(split.y_train)[:32]


@asset(group_name="training", kinds={"scikit-learn", "mlflow"})
def trained_model(context: AssetExecutionContext, config: TrainingConfig, data_split: Split,
                  feature_preprocessor: Pipeline, validated_data: pd.DataFrame,
                  data_source: DataSourceResource,
                  mlflow_tracking: MlflowTracking) -> Output[modeling.TrainedModel]:
    """The served artifact: preprocessing + classifier as one sklearn Pipeline.

    Cross-validated (stratified k-fold, preprocessing refitted per fold), then fitted
    on the training split and logged to MLflow with params, CV mean/std, signature,
    input example, data fingerprint, code and library versions.
    """
    params = config.model_params()
    estimator = modeling.build_estimator(params)
    cv = modeling.cross_validate_pipeline(feature_preprocessor, estimator, data_split.X_train,
                                          data_split.y_train, config.cv_folds, config.seed,
                                          config.cv_scoring)
    pipeline = modeling.fit_final_pipeline(feature_preprocessor, estimator,
                                           data_split.X_train, data_split.y_train)
    fingerprint = training_fingerprint(data_split)
    version = code_version()
    libraries = library_versions()
    schema, _ = data_source.schema_for(validated_data)
    target = data_source.target_column
    excluded = excluded_columns(schema, target)
    tags = {"data_fingerprint": fingerprint, "code_version": version,
            "dagster_job": context.job_name, "data_source": data_source.kind,
            **{f"library.{name}": v for name, v in libraries.items()}}
    with mlflow_tracking.active_run(context.run_id, run_name=f"{context.job_name}-"
                                    f"{context.run_id[:8]}") as run:
        mlflow.set_tags(tags)
        mlflow.set_tags({"excluded_columns": json.dumps(excluded, sort_keys=True),
                         "datetime_policy": DATETIME_POLICY})
        mlflow.log_params({**config.model_dump(), "train_rows": len(data_split.X_train),
                           "features": data_split.X_train.shape[1]})
        mlflow.log_metrics({f"cv_{cv.metric}_mean": cv.mean, f"cv_{cv.metric}_std": cv.std})
        info = log_pipeline(pipeline, data_split.X_train, schema, target, extra_metadata={
            "data_fingerprint": fingerprint, "code_version": version,
            "dagster_run_id": context.run_id})
        mlflow.log_text(schema_yaml(schema), "feature_schema.yaml")
        run_id = run.info.run_id
    context.log.info("CV %s %.4f ± %.4f; logged %s", cv.metric, cv.mean, cv.std,
                     info.model_uri)
    trained = modeling.TrainedModel(
        pipeline=pipeline, classes=list(pipeline.classes_), mlflow_run_id=run_id,
        model_uri=info.model_uri, model_id=getattr(info, "model_id", None), cv=cv,
        params=config.model_dump(), data_fingerprint=fingerprint, code_version=version)
    return Output(trained, metadata={
        "model_type": config.model_type,
        f"cv_{cv.metric}_mean": cv.mean,
        f"cv_{cv.metric}_std": cv.std,
        "cv_folds": config.cv_folds,
        "mlflow_run_id": run_id,
        "model_uri": info.model_uri,
        "data_fingerprint": fingerprint,
        "code_version": version,
        "dagster_run_id": context.run_id,
        "library_versions": MetadataValue.json(libraries),
        "params": MetadataValue.json(config.model_dump()),
        "excluded_columns": MetadataValue.json(not_features(schema, target)),
        "datetime_policy": DATETIME_POLICY,
    })
