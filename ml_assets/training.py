"""Training: optional tuning, k-fold cross-validation, the final fit, the trusted-types
check and the MLflow record. The estimator is built in, or the user's own by import
path (ML_ESTIMATOR / ML_MODEL_FACTORY)."""

import json
from typing import Literal

import mlflow
import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field
from sklearn.pipeline import Pipeline

from ml_assets.core.data.held_out import HELD_OUT_ARTIFACT, held_out_record
from ml_assets.core.data.preprocessing import Split
from ml_assets.core.data.schema_inference import DATETIME_POLICY
from ml_assets.core.data.schemas import excluded_columns, not_features
from ml_assets.core.data.validation import PRODUCTION_ROWS_ATTR
from ml_assets.core.modeling import estimators, training, tuning
from ml_assets.core.modeling import pipeline as modeling
from ml_assets.core.modeling.tasks import default_cv_scoring
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.settings import PlatformSettings


def _settings() -> PlatformSettings:
    return PlatformSettings.from_env()


class TrainingConfig(Config):
    model_type: Literal["random_forest", "hist_gradient_boosting"] = Field(
        default="random_forest",
        description="Built-in estimator (a classifier, or the matching regressor for a "
        "regression target): random_forest (default) or hist_gradient_boosting (large "
        "data). Ignored when `estimator` or `model_factory` is set.")
    n_estimators: int = Field(default=200, ge=1, description="random_forest: trees.")
    max_depth: int | None = Field(default=None, description="Tree depth limit; None = no "
                                  "limit (random_forest) / no limit (boosting).")
    min_samples_leaf: int = Field(default=1, ge=1, description="Minimum rows per leaf.")
    learning_rate: float = Field(default=0.1, gt=0, description="hist_gradient_boosting: "
                                 "shrinkage per iteration.")
    max_iter: int = Field(default=200, ge=1, description="hist_gradient_boosting: "
                          "boosting iterations.")
    cv_folds: int = Field(default=5, ge=2, description="k of k-fold CV (stratified for "
                          "classification, plain for regression).")
    cv_scoring: str = Field(default="auto", description="scikit-learn scorer for CV and "
                            "tuning; auto or empty: f1_weighted (classification), "
                            "neg_root_mean_squared_error (regression).")
    seed: int = Field(default=42, description="Seed of the estimator, the CV folds and the "
                      "tuning sampler.")
    n_jobs: int = Field(default=-1, description="random_forest: parallel jobs (-1 = all "
                        "cores); results do not depend on it.")
    estimator: str = Field(
        default_factory=lambda: _settings().estimator,
        description="Your own estimator class by import path, e.g. "
        "sklearn.linear_model:LogisticRegression (module found in the project directory "
        "or an installed package). Default: ML_ESTIMATOR (empty: the built-in model_type).")
    estimator_params: str = Field(
        default_factory=lambda: _settings().estimator_params,
        description="Keyword arguments of `estimator` (or of `model_factory`) as a JSON "
        "object, e.g. {\"C\": 0.5}. Default: ML_ESTIMATOR_PARAMS.")
    model_factory: str = Field(
        default_factory=lambda: _settings().model_factory,
        description="A function by import path (my_project.model:build) returning an "
        "unfitted estimator or a whole Pipeline. Default: ML_MODEL_FACTORY.")
    model_preprocessing: Literal["platform", "own"] = Field(
        default_factory=lambda: _settings().model_preprocessing,  # type: ignore[arg-type]
        description="platform: the platform's preprocessing (impute, scale, one-hot, "
        "SelectKBest) in front of your estimator; own: your Pipeline takes the raw feature "
        "columns. Default: ML_MODEL_PREPROCESSING (platform).")
    tuning_trials: int = Field(
        default_factory=lambda: _settings().tuning_trials, ge=0,
        description="Hyper-parameter search trials before the final fit (Optuna TPE, "
        "seeded, median pruning over the CV folds); 0 (default) = no search. Default: "
        "ML_TUNING_TRIALS.")
    tuning_timeout_seconds: float = Field(
        default_factory=lambda: _settings().tuning_timeout_seconds, gt=0,
        description="Time budget of the search; a running trial finishes. Default: "
        "ML_TUNING_TIMEOUT_SECONDS (600).")
    tuning_space: str = Field(
        default_factory=lambda: _settings().tuning_space,
        description="Search space as JSON: {name: {type: int|float, low, high[, log]} or "
        "{type: categorical, choices: [...]}}; names are the estimator's parameters "
        "(classifier__C for a step of your factory's Pipeline). Or one space per estimator: "
        "{\"random_forest\": {...}, \"sklearn.svm:SVC\": {...}} keyed by model_type or "
        "import path. Empty: the built-in estimator's default space (classifier or "
        "regressor); a user estimator needs one. Default: ML_TUNING_SPACE.")

    def model_params(self, task: str = "multiclass") -> modeling.ModelParams:
        return modeling.ModelParams(
            model_type=self.model_type, n_estimators=self.n_estimators,
            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
            learning_rate=self.learning_rate, max_iter=self.max_iter, seed=self.seed,
            n_jobs=self.n_jobs, task=task)

    def scoring_for(self, task: str) -> str:
        scoring = self.cv_scoring.strip()
        return default_cv_scoring(task) if scoring in ("", "auto") else scoring  # type: ignore[arg-type]

    def user_model(self, task: str) -> estimators.UserModel | None:
        """The user's estimator or factory, or None for the built-in model_type."""
        return estimators.user_model(self.estimator, self.estimator_params,
                                     self.model_factory, self.model_preprocessing, task)

    def search_space(self, user: estimators.UserModel | None) -> list[tuning.ParamRange]:
        return tuning.search_space(self.tuning_space, self.model_type,
                                   user.code.import_path if user is not None else None)

    def training_settings(self, user: estimators.UserModel | None
                          ) -> training.TrainingSettings:
        return training.TrainingSettings(
            cv_folds=self.cv_folds, seed=self.seed, params=self.model_dump(),
            tuning_trials=self.tuning_trials,
            tuning_timeout_seconds=self.tuning_timeout_seconds,
            search_space=lambda: self.search_space(user))


@asset(group_name="training", kinds={"scikit-learn", "mlflow"})
def trained_model(context: AssetExecutionContext, config: TrainingConfig, data_split: Split,
                  feature_preprocessor: Pipeline, validated_data: pd.DataFrame,
                  data_source: DataSourceResource,
                  mlflow_tracking: MlflowTracking) -> Output[modeling.TrainedModel]:
    """The served artifact: preprocessing + estimator as one sklearn Pipeline.

    The estimator is the built-in one (a classifier, or a regressor for a regression
    target), your own class (ML_ESTIMATOR) or factory (ML_MODEL_FACTORY), behind the
    platform's preprocessing or with its own. Optionally tuned first (ML_TUNING_TRIALS:
    each trial an MLflow child run), then cross-validated (k-fold, preprocessing refitted
    per fold), fitted on the training split, checked for skops types nobody has reviewed
    (training fails naming them, before anything is logged or registered) and logged to
    MLflow with params, CV mean/std, signature, input example, task, data fingerprint,
    code versions (the platform's and the user's) and library versions.
    """
    task = data_split.task
    try:
        user = config.user_model(task)
    except estimators.UserModelError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    plan = training.plan_training(data_split, feature_preprocessor, config.model_params(task),
                                  config.scoring_for(task), user)
    schema, _ = data_source.schema_for(validated_data)
    target = data_source.target_column
    with mlflow_tracking.active_run(context.run_id, run_name=f"{context.job_name}-"
                                    f"{context.run_id[:8]}") as run:
        mlflow.set_tags(plan.run_tags({"dagster_job": context.job_name,
                                       "data_source": data_source.kind}))
        mlflow.set_tags({"excluded_columns": json.dumps(excluded_columns(schema, target),
                                                        sort_keys=True),
                         "datetime_policy": DATETIME_POLICY})
        try:
            trained = training.train_in_run(
                plan, data_split, schema, target, config.training_settings(user),
                run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                client=mlflow_tracking.client, lineage={"dagster_run_id": context.run_id},
                log=context.log)
        except training.TrainingFailed as exc:
            raise Failure(description=str(exc), allow_retries=False, metadata={
                "untrusted_types": MetadataValue.json(exc.untrusted_types)}
                if exc.untrusted_types else None) from None
        # Which source rows the model never saw: what `ml-platform simulate` sends.
        mlflow.log_dict(held_out_record(
            validated_data.index, data_split.y_test,
            int(validated_data.attrs.get(PRODUCTION_ROWS_ATTR, 0) or 0)), HELD_OUT_ARTIFACT)
    cv = trained.cv
    context.log.info("CV %s %.4f ± %.4f; logged %s", cv.metric, cv.mean, cv.std,
                     trained.model_uri)
    return Output(trained, metadata=_metadata(trained, plan, config, context.run_id,
                                              not_features(schema, target)))


def _metadata(trained: modeling.TrainedModel, plan: training.TrainingPlan,
              config: TrainingConfig, run_id: str, excluded: dict[str, str]) -> dict:
    cv, tuned = trained.cv, trained.tuning
    return {
        "task": trained.task,
        "task_reason": plan.task_reason,
        "model_type": config.model_type if plan.user is None else "user",
        "estimator": trained.estimator,
        "model_preprocessing": plan.model_preprocessing,
        f"cv_{cv.metric}_mean": cv.mean,
        f"cv_{cv.metric}_std": cv.std,
        "cv_folds": config.cv_folds,
        "cv_scoring": plan.scoring,
        "mlflow_run_id": trained.mlflow_run_id,
        "model_uri": trained.model_uri,
        "data_fingerprint": trained.data_fingerprint,
        "code_version": trained.code_version,
        "user_code": MetadataValue.json(trained.user_code),
        "skops_types_needed": MetadataValue.json(trained.skops_types),
        "tuning": MetadataValue.json(tuned or {"trials": 0}),
        **({"tuned_params": MetadataValue.json(tuned["best_params"])} if tuned else {}),
        "dagster_run_id": run_id,
        "library_versions": MetadataValue.json(plan.libraries),
        "params": MetadataValue.json(config.model_dump()),
        "excluded_columns": MetadataValue.json(excluded),
        "datetime_policy": DATETIME_POLICY,
    }
