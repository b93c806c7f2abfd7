"""Estimation: each day's performance estimated before labels arrive (CBPE from the
calibrator stored at training), with its band and a check against the metrics gate's
thresholds."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    MetadataValue,
    Output,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pydantic import Field

from ml_assets.core.estimation import evidence
from ml_assets.core.estimation.calibration import Calibrator
from ml_assets.core.estimation.cbpe import (
    GATED,
    PerformanceEstimate,
    estimate_from_sketch,
    verdict,
)
from ml_assets.core.estimation.day_scores import DayScores, sketch_rows
from ml_assets.core.estimation.score_sketch import ScoreSketch
from ml_assets.core.estimation.store import NotEstimated, read_estimation
from ml_assets.core.registry import champion as registry
from ml_assets.in_place import scores_in_place
from ml_assets.resources import MlflowTracking
from ml_assets.settings import PlatformSettings
from ml_assets.shared import (
    AFTER_PRODUCTION_DATA,
    ESTIMATE_CHECK,
    METRICS_CHECK,
    check_evaluation,
    daily_partitions,
    latest_materialization,
    production_data_asset,
)


class EstimationConfig(Config):
    level: float = Field(default=0.95, gt=0, lt=1, description="Coverage of the band: the "
                         "realised value falls in it on this share of days when the "
                         "assumptions hold (calibration carries over, no concept drift).")
    draws: int = Field(default=1000, ge=20, description="Simulated label draws per day.")
    seed: int = Field(default=0, description="Seed of the simulation.")
    min_rows: int = Field(default=30, ge=1, description="Fewer answered rows: no verdict.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Metric -> "
                                         "minimum. Empty (default): the thresholds the "
                                         "metrics gate last passed a model with, or its "
                                         "defaults (ML_METRIC_THRESHOLD).")


def gate_thresholds(context: AssetExecutionContext, config: EstimationConfig
                    ) -> tuple[dict[str, float], str]:
    """The minimums to judge the estimate against, and where they came from."""
    if config.thresholds:
        return dict(config.thresholds), "run config"
    records = context.instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("model_metrics"), METRICS_CHECK), limit=20,
        status={AssetCheckExecutionRecordStatus.SUCCEEDED})
    for record in records:  # newest first
        evaluation = check_evaluation(record.event)
        value = evaluation.metadata.get("thresholds") if evaluation else None
        if value is not None and isinstance(value.value, dict) and value.value:
            return ({str(k): float(v) for k, v in value.value.items()},
                    f"metrics gate of run {record.run_id[:8]}")
    default = PlatformSettings.from_env().metric_threshold
    return dict.fromkeys(GATED, default), "metrics gate defaults (ML_METRIC_THRESHOLD)"


def _estimate_version(sketch: ScoreSketch | None, model: Calibrator | NotEstimated,
                      config: EstimationConfig, without: int = 0) -> dict:
    """One version's estimate from its sketch (None: none of its `without` rows had
    probabilities), or why there is none."""
    if isinstance(model, NotEstimated):
        return {"verdict": evidence.NOT_ESTIMATED, "reason": model.reason,
                "rows": (sketch.n_rows if sketch is not None else 0) + without}
    if sketch is None:
        return {"verdict": evidence.TOO_FEW_ROWS, "rows": 0,
                "reason": f"0 rows with probabilities (of {without} answered)"}
    if sorted(sketch.classes) != sorted(model.classes):
        return {"verdict": evidence.NOT_ESTIMATED, "rows": sketch.n_rows + without,
                "reason": f"the rows have probabilities of {list(sketch.classes)[:5]}, the "
                          f"calibrator of {list(model.classes)[:5]}"}
    if sketch.n_rows < config.min_rows:
        return {"verdict": evidence.TOO_FEW_ROWS, "rows": sketch.n_rows,
                "reason": f"{sketch.n_rows} rows with probabilities (< {config.min_rows})"}
    estimate = estimate_from_sketch(sketch, model, level=config.level, draws=config.draws,
                                    seed=config.seed)
    return {"verdict": None, "rows": sketch.n_rows, "estimate": estimate,
            "reference": model.reference, "calibration": sorted(
                {c.method for c in model.per_class}), "notes": estimate.notes}


def day_scores(context: AssetExecutionContext, production_data: Any
               ) -> tuple[DayScores, str]:
    """The day's score sketches, and where they came from: the file production_data's
    latest materialization of the day names, or (none, or unreadable) its rows, loaded
    only then (`production_data`: a frame, or {day: loader} from the window loader)."""
    day = context.partition_key
    record = latest_materialization(context.instance, day)
    event = record.asset_materialization if record is not None else None
    named = event.metadata.get("score_sketch") if event is not None else None
    if named is not None:
        try:
            return (DayScores.from_bytes(Path(str(named.value)).read_bytes()),
                    "production_data's score sketches")
        except (OSError, ValueError) as exc:
            context.log.warning("the day's score sketches are not usable (%s): reading "
                                "its rows", exc)
    source = production_data.get(day) if isinstance(production_data, dict) else production_data
    rows = source() if callable(source) else source
    scores = sketch_rows(rows if rows is not None else pd.DataFrame())
    if event is not None:  # and the rows it kept in place, a batch or segment at a time
        scores = scores.merged(scores_in_place(context.resources.production, day,
                                               event.metadata))
    return scores, "production_data's rows"


@production_data_asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    kinds={"numpy", "mlflow"},
    deps=["reference_profile"],
    required_resource_keys={"mlflow_tracking", "production"},  # resource_defs: no args
    automation_condition=AFTER_PRODUCTION_DATA,
    check_specs=[AssetCheckSpec(
        ESTIMATE_CHECK, asset="estimated_performance",
        description="Fails when the day is estimated below the metrics gate's minimums "
        "beyond its noise, with a family-wise error over the gated metrics (Bonferroni: "
        "P(realised >= minimum) <= (1 - level) / 2 / k for some of the k metrics); warns "
        "when only a point estimate is under its minimum. With a failed drift check, a "
        "failure asks retrain_on_drift for a retrain.")],
)
def estimated_performance(context: AssetExecutionContext, config: EstimationConfig,
                          production_data: Any) -> Iterator:
    """The day's accuracy, precision, recall, F1 and ROC AUC estimated before any label
    arrives (confidence-based performance estimation: the model's probabilities
    calibrated on its held-out rows at training, labels simulated from them), each with a
    band that holds the realised value on `level` of days when calibration carries over
    and labels still follow the features as at training. Per model version answering the
    day's rows; the headline is the current champion's. Regressors are not estimated
    (the reason is recorded). Estimated from the day's score sketches (production_data
    writes them, merging batch shards'), so the day's rows are not loaded."""
    mlflow_tracking: MlflowTracking = context.resources.mlflow_tracking
    minimums, source = gate_thresholds(context, config)
    scores, scores_from = day_scores(context, production_data)
    client, name = mlflow_tracking.client, mlflow_tracking.registered_model_name
    champion = registry.alias_version(client, name, registry.CHAMPION)
    per_version: dict[str, dict] = {}
    for version in sorted(set(scores.versions) | set(scores.unsketched)):
        try:
            run_id = client.get_model_version(name, str(version)).run_id or ""
            model: Calibrator | NotEstimated = read_estimation(run_id,
                                                               mlflow_tracking.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - a version the registry does not hold
            model = NotEstimated(f"version {version} of {name} cannot be read: {exc}"[:300])
        per_version[str(version)] = _estimate_version(
            scores.versions.get(version), model, config, scores.unsketched.get(version, 0))
    # The headline (its verdict feeds the retrain rule) is the champion's, never another
    # version's: a day the champion did not answer has no estimate of it.
    headline = (str(champion.version) if champion is not None
                and str(champion.version) in per_version else None)
    result = per_version.get(headline) if headline else None
    if result is None:
        outcome = evidence.TOO_FEW_ROWS
        reasons = {"rows": "no row answered by the champion this day"}
    elif result["verdict"] is not None:
        outcome, reasons = result["verdict"], {"reason": result["reason"]}
    else:
        outcome, reasons = verdict(result["estimate"], minimums)
    for entry in per_version.values():  # stored as plain numbers
        if isinstance(entry.get("estimate"), PerformanceEstimate):
            entry["estimate"] = entry["estimate"].to_dict()
    value = {"partition": context.partition_key, "verdict": outcome, "model_version": headline,
             "thresholds": minimums, "per_version": per_version, "reasons": reasons}
    metrics = (result or {}).get("estimate", {}).get("metrics", {})
    yield Output(value, metadata={
        "verdict": outcome, "model_version": str(headline or "-"),
        "rows": int((result or {}).get("rows", 0)),
        **{f"estimated_{k}": MetadataValue.float(v["estimate"]) for k, v in metrics.items()},
        "estimate": MetadataValue.md(_table(metrics, minimums, (result or {}).get(
            "reference", {})) if metrics else f"not estimated: {reasons}"),
        "bands": MetadataValue.json(metrics),
        "thresholds": MetadataValue.json(minimums), "thresholds_from": source,
        "per_version": MetadataValue.json({v: {k: r[k] for k in ("verdict", "rows", "reason")
                                               if k in r} for v, r in per_version.items()}),
        "level": config.level, "estimated_from": scores_from,
        "rows_left_out": MetadataValue.json(scores.left_out)})
    description = {
        evidence.BELOW: "estimated below the gate: ",
        evidence.POSSIBLY_BELOW: "estimate under the gate, band reaches it: ",
        evidence.WITHIN: "estimated within the gate",
        evidence.NOT_ESTIMATED: "not estimated: ",
        evidence.TOO_FEW_ROWS: "no verdict: "}[outcome] + "; ".join(
            f"{k} {v}" for k, v in reasons.items())
    yield AssetCheckResult(
        check_name=ESTIMATE_CHECK, passed=outcome not in (evidence.BELOW,
                                                          evidence.POSSIBLY_BELOW),
        severity=(AssetCheckSeverity.ERROR if outcome == evidence.BELOW
                  else AssetCheckSeverity.WARN),
        description=description[:1000],
        metadata={"verdict": outcome, "partition": context.partition_key,
                  "reasons": MetadataValue.json(reasons),
                  "thresholds": MetadataValue.json(minimums),
                  "model_version": str(headline or "-"),
                  **{f"estimated_{k}": MetadataValue.float(v["estimate"])
                     for k, v in metrics.items()}})


def _table(metrics: dict, minimums: dict[str, float], reference: dict[str, float]) -> str:
    frame = pd.DataFrame([{
        "metric": name, "estimate": band["estimate"], "low": band["low"],
        "high": band["high"], "gate minimum": minimums.get(name, np.nan),
        "held-out (training)": reference.get(name, np.nan)} for name, band in metrics.items()])
    return frame.to_markdown(index=False, floatfmt=".4f")
