"""Monitoring: the champion's reference profile, daily production data, drift scores
and live performance once labels arrive."""

import dataclasses
import io
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AutomationCondition,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from ml_assets.core.artifacts.loading import UntrustedModelError, load_pipeline
from ml_assets.core.data.preprocessing import Split, feature_kinds
from ml_assets.core.drift.config import DriftConfig
from ml_assets.core.drift.profile import ReferenceProfile, build_reference_profile
from ml_assets.core.drift.scoring import model_outputs, score_drift
from ml_assets.core.estimation.store import calibrate_model, log_estimation
from ml_assets.core.modeling.metrics import classification_metrics
from ml_assets.core.modeling.pipeline import TrainedModel
from ml_assets.core.modeling.tasks import regression_metrics
from ml_assets.core.prediction_log import numeric_predictions
from ml_assets.core.registry import champion as registry
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource, answered_rows
from ml_assets.shared import DRIFT_CHECK, daily_partitions

PROFILE_ARTIFACT = "reference_profile/profile.npz"


def _profile_for(pipeline, split: Split) -> ReferenceProfile:
    """Features profiled on the training split; model outputs on the held-out split
    (predictions on training rows are over-confident, so they are a biased reference).
    A regressor's predicted values are profiled as a numeric 'prediction' column."""
    features = build_reference_profile(split.X_train, feature_kinds(split.X_train, ""))
    outputs, output_kinds = model_outputs(pipeline, split.X_test)
    predictions = build_reference_profile(outputs, {}, output_kinds)
    return dataclasses.replace(features, predictions=predictions.predictions)


@asset(group_name="monitoring", kinds={"numpy", "mlflow"})
def reference_profile(context: AssetExecutionContext, champion_model: dict,
                      trained_model: TrainedModel, data_split: Split,
                      mlflow_tracking: MlflowTracking) -> Output[ReferenceProfile]:
    """What the champion was trained on, per feature (quantile sketch and PSI bins,
    category frequencies, missing rates) and what it predicts on held-out data.

    Built once when a champion is promoted and stored as an artifact of its MLflow
    run, so drift scoring never re-reads the training data.
    """
    client = mlflow_tracking.client
    name = champion_model["name"]
    # The registry's champion now: after a rollout's promotion it is no longer the
    # version this run's champion_model recorded.
    version = (registry.alias_version(client, name, registry.CHAMPION)
               or client.get_model_version(name, champion_model["version"]))
    built_here = version.run_id == trained_model.mlflow_run_id
    if built_here:
        profile = _profile_for(trained_model.pipeline, data_split)
        _log_profile(client, trained_model.mlflow_run_id, profile)
        _log_calibrator(client, trained_model, data_split)
    else:
        if champion_model.get("challenger_version"):  # in rollout: ready for its promotion
            _log_profile(client, trained_model.mlflow_run_id,
                         _profile_for(trained_model.pipeline, data_split))
            _log_calibrator(client, trained_model, data_split)
        try:
            local = mlflow.artifacts.download_artifacts(run_id=version.run_id,
                                                        artifact_path=PROFILE_ARTIFACT,
                                                        tracking_uri=mlflow_tracking.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - name what is missing
            raise Failure(description=f"champion version {version.version} has no stored "
                          f"reference profile ({exc}); retrain to create one",
                          allow_retries=False) from None
        profile = ReferenceProfile.from_bytes(Path(local).read_bytes())
    size = len(profile.to_bytes())
    return Output(profile, metadata={
        "champion_version": str(version.version), "mlflow_run_id": version.run_id,
        "features": len(profile.features), "prediction_columns": len(profile.predictions),
        "reference_rows": profile.n_rows, "stored_bytes": size,
        "source": "built from this run's split" if built_here else "champion's artifact"})


def _log_calibrator(client, trained_model: TrainedModel, data_split: Split) -> None:
    """The probabilities' calibrator on the held-out rows (JSON beside the profile, in
    performance_estimation/): what estimated_performance estimates each day with."""
    log_estimation(client, trained_model.mlflow_run_id, calibrate_model(
        trained_model.pipeline, data_split.X_test, data_split.y_test, data_split.task))


def _log_profile(client, run_id: str, profile: ReferenceProfile) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.npz"
        path.write_bytes(profile.to_bytes())
        client.log_artifact(run_id, str(path), "reference_profile")


# Recent days only: labels and batch files for a day long past re-materialize nothing.
RECENT_DAYS = AutomationCondition.in_latest_time_window(timedelta(days=7))

# A day's production data is rebuilt when that day's batch scoring lands (the API's
# log and the landing area are watched by production_data_sensor).
BATCH_SCORED = (RECENT_DAYS & AutomationCondition.any_deps_updated().since_last_handled()
                & ~AutomationCondition.in_progress()).with_label("batch scored")

# Live performance follows its day's production data (new rows; the labels sensor
# requests it when labels arrive).
AFTER_PRODUCTION_DATA = (RECENT_DAYS & AutomationCondition.any_deps_updated()
                         .since_last_handled() & ~AutomationCondition.any_deps_missing()
                         & ~AutomationCondition.in_progress()).with_label(
                             "after production data")


@asset(group_name="monitoring", partitions_def=daily_partitions, kinds={"pandas"},
       deps=["batch_predictions"], automation_condition=BATCH_SCORED)
def production_data(context: AssetExecutionContext, production: ProductionDataResource,
                    data_source: DataSourceResource,
                    mlflow_tracking: MlflowTracking) -> Output[pd.DataFrame]:
    """One UTC day of production rows: what the API saw and answered (from its
    prediction log) plus labelled drops from the landing directory, if any, which
    the current champion scores so their predictions are monitored too."""
    day = context.partition_key
    logged = production.predictions(day)
    logged = answered_rows(logged)  # no shadow copies, no failed canary attempts
    target = data_source.target_column
    frames = []
    if len(logged):
        feature_names = logged.attrs.get("feature_columns") or [
            c for c in logged.columns if c not in _LOG_META]
        frame = logged[feature_names].copy()
        frame["request_id"] = logged["request_id"].astype(str).values
        frame["model_version"] = logged["model_version"].astype(str).values
        frame["variant"] = (logged["variant"].fillna("champion").astype(str).values
                            if "variant" in logged else "champion")
        values = numeric_predictions(logged)  # a regressor's rows: numbers
        frame["prediction"] = (logged["prediction"].astype(str).values if values is None
                               else values.to_numpy(dtype=float))
        probabilities = pd.DataFrame(list(logged["probabilities"]))
        for label in probabilities.columns:
            frame[f"proba_{label}"] = probabilities[label].to_numpy(dtype=float)
        frame["source"] = "prediction_log"
        frames.append(frame)
    batch = production.batch_predictions(day)  # rows scored by batch_predictions
    if len(batch):
        frames.append(batch)
    landed = production.landing(day, target)
    if len(landed):
        labels = landed.pop(target).astype(str)
        landed = _score_with_champion(landed, mlflow_tracking)
        landed["label"] = labels.to_numpy()
        landed["source"] = "landing"
        frames.append(landed)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    versions = sorted(set(data.get("model_version", pd.Series(dtype=str)).dropna()))
    flagged, by_reason = _flagged(logged)
    return Output(data, metadata={
        "dagster/row_count": len(data),
        "from_prediction_log": int(len(logged)),
        "flagged_rows": flagged,
        "flags_by_reason": MetadataValue.json(by_reason),
        "from_batch": int(len(batch)),
        "from_landing": int(len(landed)),
        "model_versions": MetadataValue.json(versions),
    })


def _score_with_champion(rows: pd.DataFrame, mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    name = mlflow_tracking.registered_model_name
    champion = registry.alias_version(mlflow_tracking.client, name, registry.CHAMPION)
    if champion is None:
        return rows
    try:
        model = load_pipeline(f"models:/{name}/{champion.version}")
    except UntrustedModelError as exc:  # the safe loader never opened it
        raise Failure(description=f"landed rows cannot be scored: champion version "
                      f"{champion.version} of {name} was refused: {exc}",
                      allow_retries=False) from exc
    outputs, _ = model_outputs(model.pipeline, rows)
    return pd.concat([rows, outputs], axis=1).assign(model_version=str(champion.version))


_LOG_META = {"timestamp", "request_id", "row_index", "model_name", "model_version",
             "prediction", "confidence", "probabilities", "input_flags", "variant",
             "latency_ms", "error"}


def _flagged(logged: pd.DataFrame) -> tuple[int, dict[str, int]]:
    """Logged rows the API answered although the schema's checks exclude a value
    (ML_API_INPUT_POLICY=accept), and the count of flags per reason."""
    if "input_flags" not in logged:
        return 0, {}
    flags = logged["input_flags"].fillna("").astype(str)
    flags = flags[flags != ""]
    reasons: dict[str, int] = {}
    for flag in (f for row in flags for f in row.split(";")):
        reason = flag.rpartition(":")[2]
        reasons[reason] = reasons.get(reason, 0) + 1
    return len(flags), reasons


class DriftScoringConfig(Config):
    warn_share: float = Field(default=0.3, description="Share of drifted features at which "
                              "the drift check warns.")
    fail_share: float = Field(default=0.5, description="Share of drifted features at which "
                              "the drift check fails (and the retrain sensor fires).")
    fail_on_prediction_drift: bool = Field(default=True, description="Also fail when the "
                                           "prediction distribution itself drifts.")
    min_rows: int = Field(default=30, description="Fewer rows than this: no verdict.")
    tests: dict[str, str] = Field(default_factory=dict, description="Per-column test "
                                  "override: ks, wasserstein, psi, chi2, jensenshannon.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Per-column "
                                         "threshold override.")


def drift_picture(table: pd.DataFrame) -> str:
    """A bar chart of each feature's drift statistic against its threshold (PNG, base64)."""
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = table.head(40)
    values = np.where(shown["test"].isin(["ks", "chi2"]), 1 - shown["p_value"].fillna(1.0),
                      shown["statistic"].fillna(0.0))
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(shown) + 1.2), dpi=100)
    colors = ["#d62728" if d else "#1f77b4" for d in shown["drifted"]]
    ax.barh(shown["feature"].astype(str), values, color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("statistic (1 - p for p-value tests); red = drifted")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


@asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    kinds={"numpy", "scipy"},
    automation_condition=AutomationCondition.eager(),
    check_specs=[AssetCheckSpec(
        DRIFT_CHECK, asset="drift_scores",
        description="Warns when the share of drifted features reaches warn_share; fails "
        "at fail_share or on prediction drift. A failure triggers retrain_on_drift.")],
)
def drift_scores(context: AssetExecutionContext, config: DriftScoringConfig,
                 production_data: pd.DataFrame,
                 reference_profile: ReferenceProfile) -> Iterator:
    """Drift of one day's production data against the champion's reference profile:
    a test per feature chosen by type and reference size, the share of drifted
    features, and drift of the predictions themselves."""
    drift_config = DriftConfig(share_threshold=config.fail_share, tests=config.tests,
                               thresholds=config.thresholds)
    # Features drift whoever answered; the outputs are the champion's (the profile's) only:
    # a canary's answers come from another model.
    served = (production_data[production_data["variant"].fillna("champion") == "champion"]
              if "variant" in production_data else production_data)
    report = score_drift(reference_profile, production_data, drift_config, served)
    table = report.features
    share = report.share_drifted if np.isfinite(report.share_drifted) else 0.0
    enough = len(production_data) >= config.min_rows
    prediction_drift = report.prediction_drifted and config.fail_on_prediction_drift
    failing = enough and (share >= config.fail_share or prediction_drift)
    warning = enough and not failing and share >= config.warn_share
    summary: dict[str, int | float | bool | list[str]] = {
        "rows": len(production_data), "share_drifted": round(float(share), 4),
        "drifted_features": report.drifted_features,
        "prediction_drifted": report.prediction_drifted,
        "dataset_drifted": report.dataset_drifted}
    columns = ["feature", "test", "statistic", "p_value", "threshold", "drifted",
               "missing_rate_ref", "missing_rate_cur", "status"]
    shown = table[[c for c in columns if c in table.columns]]
    yield Output(report.to_dict(), metadata={
        **{k: MetadataValue.json(v) if isinstance(v, list) else v for k, v in summary.items()},
        "per_feature": MetadataValue.md(shown.to_markdown(index=False, floatfmt=".4g")),
        "predictions": MetadataValue.md(report.predictions[
            [c for c in columns if c in report.predictions.columns]].to_markdown(
                index=False, floatfmt=".4g")),
        "drift_plot": MetadataValue.md(f"![drift](data:image/png;base64,"
                                       f"{drift_picture(shown)})") if len(shown) else "none",
    })
    if not enough:
        description = f"only {len(production_data)} rows (< {config.min_rows}): no verdict"
    else:
        drifted = ", ".join(report.drifted_features) or "none"
        description = (f"{share:.0%} of features drifted ({drifted})"
                       + ("; predictions drifted" if report.prediction_drifted else ""))
    yield AssetCheckResult(
        check_name=DRIFT_CHECK, passed=not (failing or warning),
        severity=AssetCheckSeverity.ERROR if failing else AssetCheckSeverity.WARN,
        description=description,
        metadata={**{k: MetadataValue.json(v) if isinstance(v, list) else v
                     for k, v in summary.items()},
                  "partition": context.partition_key, "warn_share": config.warn_share,
                  "fail_share": config.fail_share})


@asset(group_name="monitoring", partitions_def=daily_partitions, kinds={"scikit-learn"},
       automation_condition=AFTER_PRODUCTION_DATA)
def live_performance(context: AssetExecutionContext, production_data: pd.DataFrame,
                     production: ProductionDataResource) -> Output[dict]:
    """Accuracy and friends (a classifier) or RMSE, MAE, R² and MAPE (a regressor) for
    one day, on the predictions whose true labels have arrived (labels files joined on
    request_id, or labelled landing rows scored by the current champion). The rows say
    which: numeric predictions are a regressor's (its labels, text in the files, are
    read as numbers; a label that is no number is left out and counted)."""
    labels = production.labels()
    rows = production_data
    scored = pd.DataFrame()
    if len(rows) and "request_id" in rows:
        scored = rows.merge(labels, on="request_id", how="inner", suffixes=("", "_true"))
        if "label_true" in scored:
            scored["label"] = scored["label_true"]
    if not len(scored):
        return Output({"labelled_rows": 0}, metadata={"labelled_rows": 0,
                      "note": "no labels yet for this day's predictions"})
    extra: dict[str, int | str] = {}
    if pd.api.types.is_float_dtype(scored["prediction"]):
        y_num = pd.to_numeric(scored["label"], errors="coerce").to_numpy(dtype=float)
        y_hat = scored["prediction"].to_numpy(dtype=float)
        usable = np.isfinite(y_num) & np.isfinite(y_hat)
        extra = {"task": "regression", "unusable_labels": int((~usable).sum())}
        scored = scored[usable]
        if not len(scored):
            return Output({"labelled_rows": 0, **extra}, metadata={
                "labelled_rows": 0, **extra, "note": "no label is a number"})
        metrics = regression_metrics(y_num[usable], y_hat[usable])
    else:
        proba_columns = [c for c in scored.columns if c.startswith("proba_")]
        classes = [c.removeprefix("proba_") for c in proba_columns]
        y_true = scored["label"].astype(str).to_numpy()
        y_pred = scored["prediction"].astype(str).to_numpy()
        if proba_columns and set(np.unique(y_true)) <= set(classes):
            metrics = classification_metrics(y_true, y_pred,
                                             scored[proba_columns].to_numpy(float), classes)
        else:
            metrics = {"accuracy": float(np.mean(y_true == y_pred))}
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    return Output({"labelled_rows": len(scored), **metrics, **extra}, metadata={
        "labelled_rows": len(scored), **{k: MetadataValue.float(v) for k, v in metrics.items()},
        **extra, "labelled_share": round(len(scored) / max(len(rows), 1), 4)})
