"""Training: optional tuning, k-fold cross-validation, the final fit, the trusted-types
check and the MLflow record. The estimator is built in, or the user's own by import
path (ML_ESTIMATOR / ML_MODEL_FACTORY)."""

import dataclasses
import json
from typing import Literal

import mlflow
import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV
from ml_assets.core.artifacts.saving import UntrustedModelError, check_trusted, log_pipeline
from ml_assets.core.data.preprocessing import Split
from ml_assets.core.data.provenance import code_version, frame_fingerprint, library_versions
from ml_assets.core.data.schema_inference import DATETIME_POLICY
from ml_assets.core.data.schemas import excluded_columns, schema_yaml
from ml_assets.core.modeling import estimators, tuning
from ml_assets.core.modeling import pipeline as modeling
from ml_assets.core.modeling.tasks import default_cv_scoring
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.settings import PlatformSettings
from ml_assets.validation import not_features


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
        if self.estimator and self.model_factory:
            raise estimators.UserModelError(
                "both ML_ESTIMATOR (estimator) and ML_MODEL_FACTORY (model_factory) are set; "
                "set one of them")
        params = estimators.parse_params(self.estimator_params)
        own = self.model_preprocessing == "own"
        if self.estimator:
            user = estimators.from_class(self.estimator, params, task)
            return dataclasses.replace(user, owns_preprocessing=own)
        if self.model_factory:
            return estimators.from_factory(self.model_factory, task, own, params=params)
        if own:
            raise estimators.UserModelError(
                "ML_MODEL_PREPROCESSING=own needs your own model (ML_MODEL_FACTORY or "
                "ML_ESTIMATOR); the built-in estimators take the platform's preprocessing")
        return None

    def search_space(self, user: estimators.UserModel | None) -> list[tuning.ParamRange]:
        if self.tuning_space.strip():
            try:
                space = json.loads(self.tuning_space)
            except json.JSONDecodeError as exc:
                raise tuning.TuningError(f"ML_TUNING_SPACE is not valid JSON ({exc.msg} at "
                                         f"column {exc.colno})") from None
            key = user.code.import_path if user is not None else self.model_type
            if isinstance(space, dict) and space and all(
                    isinstance(v, dict) and v and all(isinstance(e, dict) for e in v.values())
                    for v in space.values()):
                # Per estimator: {"random_forest": {...}, "pkg.mod:Cls": {...}}.
                if key not in space:
                    raise tuning.TuningError(
                        f"ML_TUNING_SPACE has spaces for {', '.join(map(repr, space))} but "
                        f"none for the estimator being trained ({key!r})")
                space = space[key]
            return tuning.parse_space(space)
        if user is not None:
            raise tuning.TuningError(
                f"tuning {user.code.import_path} needs a search space: set ML_TUNING_SPACE "
                "(tuning_space), e.g. {\"C\": {\"type\": \"float\", \"low\": 0.01, "
                "\"high\": 10, \"log\": true}}")
        return tuning.parse_space(tuning.DEFAULT_SPACES[self.model_type])


def training_fingerprint(split: Split) -> str:
    return frame_fingerprint(split.X_train)[:32] + frame_fingerprint(split.y_train)[:32]


def _record_trial(client, experiment_id: str, parent_run_id: str, dagster_run_id: str,
                  scoring: str, trial: tuning.TrialRecord) -> None:
    """One tuning trial as an MLflow child run of the training run."""
    child = client.create_run(experiment_id, run_name=f"trial-{trial.number}", tags={
        "mlflow.parentRunId": parent_run_id, "tuning.trial": str(trial.number),
        "tuning.state": trial.state, "tuning.dagster_run_id": dagster_run_id,
        **({"tuning.error": trial.error[:500]} if trial.error else {})})
    run_id = child.info.run_id
    status = "FAILED"  # unless every record below is written
    try:
        for name, value in trial.params.items():
            client.log_param(run_id, name, value)
        for step, score in enumerate(trial.fold_scores):
            client.log_metric(run_id, f"cv_{scoring}_fold", float(score), step=step)
        if trial.score is not None:
            client.log_metric(run_id, f"cv_{scoring}", float(trial.score))
        client.log_metric(run_id, "seconds", trial.seconds)
        status = {"complete": "FINISHED", "pruned": "KILLED"}.get(trial.state, "FAILED")
    finally:
        client.set_terminated(run_id, status)


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
    stratified = not data_split.is_regression
    scoring = config.scoring_for(task)
    try:
        user = config.user_model(task)
    except estimators.UserModelError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    preprocessor = None if user is not None and user.owns_preprocessing else feature_preprocessor
    base = user.fresh() if user is not None else modeling.build_estimator(
        config.model_params(task))
    estimator_name = estimators.describe(base)
    user_tags = user.code.as_tags() if user is not None else {}
    fingerprint = training_fingerprint(data_split)
    version = code_version()
    libraries = library_versions()
    schema, _ = data_source.schema_for(validated_data)
    target = data_source.target_column
    excluded = excluded_columns(schema, target)
    tags = {"data_fingerprint": fingerprint, "code_version": version,
            "dagster_job": context.job_name, "data_source": data_source.kind,
            "task": task, "task_reason": data_split.task_reason, "estimator": estimator_name,
            "model_preprocessing": "own" if preprocessor is None else "platform",
            **user_tags,
            **({"user_code_version": user.code.version} if user is not None else {}),
            **{f"library.{name}": v for name, v in libraries.items()}}
    tuned: dict = {}
    with mlflow_tracking.active_run(context.run_id, run_name=f"{context.job_name}-"
                                    f"{context.run_id[:8]}") as run:
        run_id = run.info.run_id
        mlflow.set_tags(tags)
        mlflow.set_tags({"excluded_columns": json.dumps(excluded, sort_keys=True),
                         "datetime_policy": DATETIME_POLICY})
        if config.tuning_trials > 0:
            client, experiment_id = mlflow_tracking.client, run.info.experiment_id
            try:
                space = config.search_space(user)
                result = tuning.tune(
                    lambda params: modeling.assemble(preprocessor,
                                                     clone(base).set_params(**params)),
                    data_split.X_train, data_split.y_train, space,
                    n_trials=config.tuning_trials,
                    timeout_seconds=config.tuning_timeout_seconds, seed=config.seed,
                    folds=config.cv_folds, scoring=scoring, stratified=stratified,
                    on_trial=lambda trial: _record_trial(client, experiment_id, run_id,
                                                         context.run_id, scoring, trial))
            except (tuning.TuningError, ValueError) as exc:
                raise Failure(description=f"tuning failed: {exc}", allow_retries=False) from None
            base = clone(base).set_params(**result.best_params)
            tuned = {"trials": len(result.trials), **result.counts,
                     "best_params": result.best_params, "best_score": result.best_score,
                     "scoring": scoring, "seconds": round(result.seconds, 3),
                     "budget_trials": config.tuning_trials,
                     "budget_seconds": config.tuning_timeout_seconds}
            mlflow.set_tags({"tuning.trials": str(len(result.trials)),
                             **{f"tuning.{k}": str(v) for k, v in result.counts.items()},
                             "tuning.best_params": json.dumps(result.best_params,
                                                              sort_keys=True, default=str),
                             "tuning.best_score": repr(result.best_score),
                             "tuning.scoring": scoring})
            mlflow.log_params({f"tuned.{k}": v for k, v in result.best_params.items()})
            context.log.info("tuning: %d trials (%s), best %s %.4f with %s",
                             len(result.trials), result.counts, scoring, result.best_score,
                             result.best_params)
        try:
            cv = modeling.cross_validate_pipeline(preprocessor, base, data_split.X_train,
                                                  data_split.y_train, config.cv_folds,
                                                  config.seed, scoring, stratified)
            pipeline = modeling.fit_final_pipeline(preprocessor, base, data_split.X_train,
                                                   data_split.y_train)
        except Exception as exc:  # noqa: BLE001 - the user's code: named, never a traceback
            if user is None:
                raise
            raise Failure(description=f"{estimator_name} failed to train: "
                          f"{type(exc).__name__}: {exc}", allow_retries=False) from None
        # Checked before anything is logged: a model nobody can load is never registered.
        try:
            needed = check_trusted(pipeline, f"the trained {estimator_name} model")
        except UntrustedModelError as exc:
            mlflow.set_tag("skops.untrusted_types", ",".join(exc.types))
            context.log.error("%s", exc)
            raise Failure(
                description=f"training stopped before the model was logged or registered: "
                f"{exc}. Types to review: {', '.join(exc.types)}; list every one in "
                f"{TRUSTED_TYPES_ENV} once reviewed.",
                metadata={"untrusted_types": MetadataValue.json(exc.types)},
                allow_retries=False) from None
        context.log.info("the model needs skops types: %s (beyond skops' defaults)",
                         ", ".join(needed) or "none")
        mlflow.set_tag("skops.types_needed", ",".join(needed))
        mlflow.log_params({**config.model_dump(), "train_rows": len(data_split.X_train),
                           "features": data_split.X_train.shape[1]})
        mlflow.log_metrics({f"cv_{cv.metric}_mean": cv.mean, f"cv_{cv.metric}_std": cv.std})
        package = user.code.package_version if user is not None else None
        info = log_pipeline(pipeline, data_split.X_train, schema, target, task=task,
                            needed_types=needed,
                            extra_requirements=[package] if package else None,
                            extra_metadata={
                                "data_fingerprint": fingerprint, "code_version": version,
                                "dagster_run_id": context.run_id,
                                "estimator": estimator_name, "skops_types_needed": needed,
                                **({"user_code": user_tags,
                                    "user_code_version": user.code.version}
                                   if user is not None else {}),
                                **({"tuned_params": tuned["best_params"]} if tuned else {})})
        mlflow.log_text(schema_yaml(schema), "feature_schema.yaml")
    context.log.info("CV %s %.4f ± %.4f; logged %s", cv.metric, cv.mean, cv.std,
                     info.model_uri)
    classes = [] if data_split.is_regression else list(pipeline.classes_)
    trained = modeling.TrainedModel(
        pipeline=pipeline, classes=classes, mlflow_run_id=run_id,
        model_uri=info.model_uri, model_id=getattr(info, "model_id", None), cv=cv,
        params=config.model_dump(), data_fingerprint=fingerprint, code_version=version,
        task=task, estimator=estimator_name, user_code=user_tags, skops_types=needed,
        tuning=tuned)
    return Output(trained, metadata={
        "task": task,
        "task_reason": data_split.task_reason,
        "model_type": config.model_type if user is None else "user",
        "estimator": estimator_name,
        "model_preprocessing": "own" if preprocessor is None else "platform",
        f"cv_{cv.metric}_mean": cv.mean,
        f"cv_{cv.metric}_std": cv.std,
        "cv_folds": config.cv_folds,
        "cv_scoring": scoring,
        "mlflow_run_id": run_id,
        "model_uri": info.model_uri,
        "data_fingerprint": fingerprint,
        "code_version": version,
        "user_code": MetadataValue.json(user_tags),
        "skops_types_needed": MetadataValue.json(needed),
        "tuning": MetadataValue.json(tuned or {"trials": 0}),
        **({"tuned_params": MetadataValue.json(tuned["best_params"])} if tuned else {}),
        "dagster_run_id": context.run_id,
        "library_versions": MetadataValue.json(libraries),
        "params": MetadataValue.json(config.model_dump()),
        "excluded_columns": MetadataValue.json(not_features(schema, target)),
        "datetime_policy": DATETIME_POLICY,
    })
