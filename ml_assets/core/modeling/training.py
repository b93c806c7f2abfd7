"""Training, without Dagster: the estimator (built in, or the user's class or factory)
behind the platform's preprocessing or its own, optionally tuned (each trial an MLflow
child run), cross-validated (preprocessing refitted per fold), fitted on the training
split, checked for skops types nobody has reviewed (before anything is logged) and
logged to the active MLflow run with its params (a user's estimator: its effective
parameters, `run_params`), CV scores, signature, feature schema,
data fingerprint and code versions.

The `trained_model` asset (ml_assets/training.py) resolves its configuration, opens the
MLflow run and adds lineage and metadata. A failure the user can fix (a bad search
space, their estimator failing to train, an untrusted type) raises TrainingFailed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import mlflow
import pandera.pandas as pa
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV
from ml_assets.core.artifacts.saving import UntrustedModelError, check_trusted, log_pipeline
from ml_assets.core.data.preprocessing import Split
from ml_assets.core.data.provenance import code_version, frame_fingerprint, library_versions
from ml_assets.core.data.schemas import schema_yaml
from ml_assets.core.modeling import estimators, tuning
from ml_assets.core.modeling.catboost_model import wrap_catboost
from ml_assets.core.modeling.labels import encode_labels_for
from ml_assets.core.modeling.native_logs import summarised_native_logs
from ml_assets.core.modeling.pipeline import (
    CVResult,
    ModelParams,
    TrainedModel,
    assemble,
    build_estimator,
    cross_validate_pipeline,
    fit_final_pipeline,
)
from ml_assets.core.modeling.run_params import run_params


class Log(Protocol):
    """Where progress is told (a logging.Logger, Dagster's context.log)."""

    def info(self, msg: str, *args: Any) -> Any: ...

    def error(self, msg: str, *args: Any) -> Any: ...


class TrainingFailed(Exception):
    """Training stopped for a reason to report, not retry; the message says why.
    `untrusted_types`: the skops types to review, when that was the reason."""

    def __init__(self, message: str, untrusted_types: list[str] | None = None):
        super().__init__(message)
        self.untrusted_types = list(untrusted_types or [])


def training_fingerprint(split: Split) -> str:
    return frame_fingerprint(split.X_train)[:32] + frame_fingerprint(split.y_train)[:32]


@dataclass(frozen=True)
class TrainingPlan:
    """What is trained, decided before the MLflow run opens."""

    task: str
    task_reason: str
    scoring: str
    user: estimators.UserModel | None
    preprocessor: Pipeline | None  # None: the user's own Pipeline takes the raw columns
    base: Any  # the unfitted estimator (or the user's unfitted Pipeline)
    estimator_name: str
    fingerprint: str
    code_version: str
    libraries: dict[str, str]

    @property
    def stratified(self) -> bool:
        return self.task != "regression"

    @property
    def model_preprocessing(self) -> str:
        return "own" if self.preprocessor is None else "platform"

    @property
    def user_tags(self) -> dict[str, str]:
        return self.user.code.as_tags() if self.user is not None else {}

    def run_tags(self, lineage: Mapping[str, str]) -> dict[str, str]:
        """The MLflow run's tags; `lineage` (the job, the data source) after the data
        fingerprint and code version."""
        return {"data_fingerprint": self.fingerprint, "code_version": self.code_version,
                **lineage, "task": self.task, "task_reason": self.task_reason,
                "estimator": self.estimator_name,
                "model_preprocessing": self.model_preprocessing, **self.user_tags,
                **({"user_code_version": self.user.code.version}
                   if self.user is not None else {}),
                **{f"library.{name}": v for name, v in self.libraries.items()}}


def plan_training(split: Split, feature_preprocessor: Pipeline, params: ModelParams,
                  scoring: str, user: estimators.UserModel | None) -> TrainingPlan:
    """The built-in estimator from `params`, or the user's (`user`, behind the fitted
    `feature_preprocessor` unless it owns its preprocessing)."""
    preprocessor = None if user is not None and user.owns_preprocessing else feature_preprocessor
    base = user.fresh() if user is not None else build_estimator(params)
    return TrainingPlan(
        task=split.task, task_reason=split.task_reason, scoring=scoring, user=user,
        preprocessor=preprocessor, base=base, estimator_name=estimators.describe(base),
        fingerprint=training_fingerprint(split), code_version=code_version(),
        libraries=library_versions())


@dataclass(frozen=True)
class TrainingSettings:
    """How to train: folds and seed, the tuning budget and space, and the configuration
    recorded as the run's params (and the TrainedModel's)."""

    cv_folds: int
    seed: int
    params: dict
    tuning_trials: int = 0
    tuning_timeout_seconds: float = 600.0
    # The search space, resolved only when tuning (a bad one fails the run as tuning).
    search_space: Callable[[], list[tuning.ParamRange]] | None = None


def record_trial(client, experiment_id: str, parent_run_id: str, lineage: Mapping[str, str],
                 scoring: str, trial: tuning.TrialRecord) -> None:
    """One tuning trial as an MLflow child run of the training run (tagged with
    `lineage` as tuning.<key>)."""
    child = client.create_run(experiment_id, run_name=f"trial-{trial.number}", tags={
        "mlflow.parentRunId": parent_run_id, "tuning.trial": str(trial.number),
        "tuning.state": trial.state, **{f"tuning.{k}": v for k, v in lineage.items()},
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


def tune_in_run(plan: TrainingPlan, split: Split, settings: TrainingSettings, *,
                on_trial: Callable[[tuning.TrialRecord], None], log: Log) -> tuple[Any, dict]:
    """The search (settings.tuning_trials trials) recorded on the active MLflow run;
    returns the base estimator with the best parameters and a summary of the search."""
    if settings.search_space is None:
        raise ValueError("tuning needs settings.search_space")
    try:
        space = settings.search_space()
        result = tuning.tune(
            lambda params: assemble(plan.preprocessor, platform_estimator(
                clone(plan.base).set_params(**params), split.y_train)),
            split.X_train, split.y_train, space, n_trials=settings.tuning_trials,
            timeout_seconds=settings.tuning_timeout_seconds, seed=settings.seed,
            folds=settings.cv_folds, scoring=plan.scoring, stratified=plan.stratified,
            on_trial=on_trial)
    except (tuning.TuningError, ValueError) as exc:
        raise TrainingFailed(f"tuning failed: {exc}") from None
    base = clone(plan.base).set_params(**result.best_params)
    tuned = {"trials": len(result.trials), **result.counts,
             "best_params": result.best_params, "best_score": result.best_score,
             "scoring": plan.scoring, "seconds": round(result.seconds, 3),
             "budget_trials": settings.tuning_trials,
             "budget_seconds": settings.tuning_timeout_seconds}
    mlflow.set_tags({"tuning.trials": str(len(result.trials)),
                     **{f"tuning.{k}": str(v) for k, v in result.counts.items()},
                     "tuning.best_params": json.dumps(result.best_params, sort_keys=True,
                                                      default=str),
                     "tuning.best_score": repr(result.best_score),
                     "tuning.scoring": plan.scoring})
    mlflow.log_params({f"tuned.{k}": v for k, v in result.best_params.items()})
    log.info("tuning: %d trials (%s), best %s %.4f with %s", len(result.trials),
             result.counts, plan.scoring, result.best_score, result.best_params)
    return base, tuned


def platform_estimator(base: Any, y: Any) -> Any:
    """`base` as the platform fits it: class labels encoded for an estimator that needs
    numbers (`labels`), a CatBoost estimator held by `CatBoostModel` (stored as checked
    JSON, its labels and categorical columns handled)."""
    return wrap_catboost(encode_labels_for(base, y))


def fit(plan: TrainingPlan, base: Any, split: Split, settings: TrainingSettings
        ) -> tuple[CVResult, Pipeline]:
    """k-fold CV, then the final fit on the whole training split (`platform_estimator`).
    The user's code failing is a TrainingFailed naming it; the built-in estimator
    failing is a bug."""
    base = platform_estimator(base, split.y_train)
    try:
        cv = cross_validate_pipeline(plan.preprocessor, base, split.X_train, split.y_train,
                                     settings.cv_folds, settings.seed, plan.scoring,
                                     plan.stratified)
        pipeline = fit_final_pipeline(plan.preprocessor, base, split.X_train, split.y_train)
    except Exception as exc:  # noqa: BLE001 - the user's code: named, never a traceback
        if plan.user is None:
            raise
        raise TrainingFailed(f"{plan.estimator_name} failed to train: "
                             f"{type(exc).__name__}: {exc}") from None
    return cv, pipeline


def trusted_types(plan: TrainingPlan, pipeline: Pipeline, log: Log) -> list[str]:
    """The skops types the fitted pipeline needs; checked before anything is logged, so
    a model nobody can load is never registered."""
    try:
        needed = check_trusted(pipeline, f"the trained {plan.estimator_name} model")
    except UntrustedModelError as exc:
        mlflow.set_tag("skops.untrusted_types", ",".join(exc.types))
        log.error("%s", exc)
        raise TrainingFailed(
            f"training stopped before the model was logged or registered: {exc}. Types "
            f"to review: {', '.join(exc.types)}; list every one in {TRUSTED_TYPES_ENV} "
            "once reviewed.", untrusted_types=exc.types) from None
    log.info("the model needs skops types: %s (beyond skops' defaults)",
             ", ".join(needed) or "none")
    mlflow.set_tag("skops.types_needed", ",".join(needed))
    return needed


def train_in_run(plan: TrainingPlan, split: Split, schema: pa.DataFrameSchema, target: str,
                 settings: TrainingSettings, *, run_id: str, experiment_id: str, client,
                 lineage: Mapping[str, str], log: Log) -> TrainedModel:
    """Everything inside the active MLflow run `run_id`: tuning when asked (trials as
    child runs through `client`), CV, the final fit, the trusted-types check, then the
    params, CV metrics, the pipeline and its feature schema logged. `lineage` (the
    orchestrator's run id) goes into the model's metadata and the trials' tags."""
    base: Any = plan.base
    tuned: dict[str, Any] = {}
    with summarised_native_logs() as native:
        if settings.tuning_trials > 0:
            base, tuned = tune_in_run(plan, split, settings, log=log, on_trial=lambda trial:
                                      record_trial(client, experiment_id, run_id, lineage,
                                                   plan.scoring, trial))
        cv, pipeline = fit(plan, base, split, settings)
    if (said := native.summary()) is not None:
        log.info("%s", said)
    needed = trusted_types(plan, pipeline, log)
    mlflow.log_params(run_params(settings.params, pipeline, plan.user is not None,
                                 {"train_rows": len(split.X_train),
                                  "features": split.X_train.shape[1]}))
    mlflow.log_metrics({f"cv_{cv.metric}_mean": cv.mean, f"cv_{cv.metric}_std": cv.std})
    user = plan.user
    package = user.code.package_version if user is not None else None
    info = log_pipeline(pipeline, split.X_train, schema, target, task=plan.task,
                        needed_types=needed,
                        extra_requirements=[package] if package else None,
                        extra_metadata={
                            "data_fingerprint": plan.fingerprint,
                            "code_version": plan.code_version, **lineage,
                            "estimator": plan.estimator_name, "skops_types_needed": needed,
                            **({"user_code": plan.user_tags,
                                "user_code_version": user.code.version}
                               if user is not None else {}),
                            **({"tuned_params": tuned["best_params"]} if tuned else {})})
    mlflow.log_text(schema_yaml(schema), "feature_schema.yaml")
    return TrainedModel(
        pipeline=pipeline, classes=[] if split.is_regression else list(pipeline.classes_),
        mlflow_run_id=run_id, model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None), cv=cv, params=settings.params,
        data_fingerprint=plan.fingerprint, code_version=plan.code_version, task=plan.task,
        estimator=plan.estimator_name, user_code=plan.user_tags, skops_types=needed,
        tuning=tuned)
