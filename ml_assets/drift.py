"""Drift: each day's production data (quiet days pooled with the days before) judged
against the champion's reference profile by calibrated tests, and the check that asks
for a retrain."""

import base64
import datetime as dt
import io
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AutomationCondition,
    BetaWarning,
    Config,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    TimeWindowPartitionMapping,
)
from pydantic import Field

from ml_assets.core.drift.check import CheckOutcome, CheckSettings, decide
from ml_assets.core.drift.config import DEFAULT_MAX_POOLED_DAYS, DEFAULT_MIN_ROWS
from ml_assets.core.drift.nulls import NullCache
from ml_assets.core.drift.profile import ReferenceProfile
from ml_assets.core.drift.scoring import DriftReport
from ml_assets.core.drift.sketch_store import SketchBasis
from ml_assets.core.drift.window import WindowDay, judge_window
from ml_assets.in_place import in_place_sketcher, with_rows_in_place
from ml_assets.shared import (
    DRIFT_CHECK,
    daily_partitions,
    latest_materialization,
    null_cache,
    production_data_asset,
)

# The days of production_data one evaluation may pool: the day and the 30 before it. This
# bounds `max_pooled_days` (default 7); a day is pooled from its sketch, and its rows are
# loaded only without one (production_data_window hands drift_scores loaders, not frames).
POOLING_WINDOW_DAYS = 31
with warnings.catch_warnings():  # allow_nonexistent_upstream_partitions is a beta flag
    warnings.simplefilter("ignore", BetaWarning)
    POOLING_WINDOW = TimeWindowPartitionMapping(
        start_offset=-(POOLING_WINDOW_DAYS - 1),
        # the first days after monitoring_start_date have fewer days before them
        allow_nonexistent_upstream_partitions=True)

# Eager, except that earlier days of the window may be missing (a day without traffic is
# never materialized): only the day itself and the profile must exist. Eager considers
# the latest partition only, so "the latest production_data partition" is the day.
_MISSING = AutomationCondition.missing() & ~AutomationCondition.will_be_requested()
_PRODUCTION_DATA = AssetSelection.assets("production_data")
DAY_UPDATED = AutomationCondition.eager().replace("any_deps_missing", (
    AutomationCondition.any_deps_match(_MISSING).ignore(_PRODUCTION_DATA)
    | AutomationCondition.any_deps_match(
        _MISSING & AutomationCondition.in_latest_time_window()).allow(_PRODUCTION_DATA)
).with_label("the day's production data or the profile missing"))


class DriftScoringConfig(Config):
    """The drift check's settings (docs/drift.md, "The drift check")."""

    calibration: str = Field(default="calibrated", description="'calibrated': tests "
                             "against the null distribution at the window's size (a stated "
                             "false-alarm rate); 'fixed': the former fixed thresholds and "
                             "share rule (warn_share / fail_share).")
    alpha: float = Field(default=0.01, description="Per-feature false-alarm rate: a feature "
                         "is flagged on a no-drift day with at most this probability.")
    dataset_alpha: float = Field(default=0.02, description="The check's false-alarm rate: a "
                                 "no-drift day fails it with at most this probability (Holm "
                                 "over the features, and over the prediction columns; "
                                 "split in two when both can fail it).")
    effect_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Practical effect size a significant shift must "
        "reach to count, per measure: wasserstein (normed, default 0.1), jensenshannon "
        "(0.05), psi (0.1).")
    min_rows: int = Field(default=DEFAULT_MIN_ROWS, description="A day with fewer rows is "
                          "pooled with the days before it until the window has this many "
                          "(100: a 0.5-std shift in 1 of 10 features is found on >= 80 % "
                          "of windows; docs/drift.md).")
    max_pooled_days: int = Field(default=DEFAULT_MAX_POOLED_DAYS, description="At most this "
                                 f"many days in a window, the day included (<= "
                                 f"{POOLING_WINDOW_DAYS}); still short of min_rows: "
                                 "'insufficient', no verdict.")
    fail_on_prediction_drift: bool = Field(default=True, description="Also fail when the "
                                           "champion's outputs drift (calibrated the same "
                                           "way).")
    warn_on_feature_drift: bool = Field(default=True, description="Warn when a feature "
                                        "drifts on its own test (alpha) without a dataset "
                                        "verdict.")
    tests: dict[str, str] = Field(default_factory=dict, description="Per-column test "
                                  "override: ks, wasserstein, psi, chi2, jensenshannon.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Per-column "
                                         "effect threshold (fixed mode: the test's "
                                         "threshold).")
    warn_share: float | None = Field(default=None, description="DEPRECATED (former share "
                                     "rule): only with calibration='fixed' (default 0.3).")
    fail_share: float | None = Field(default=None, description="DEPRECATED (former share "
                                     "rule): only with calibration='fixed' (default 0.5).")

    def settings(self) -> CheckSettings:
        if self.max_pooled_days > POOLING_WINDOW_DAYS:
            raise ValueError(f"max_pooled_days must be <= {POOLING_WINDOW_DAYS} (the days of "
                             f"production_data drift_scores reads), not {self.max_pooled_days}")
        return CheckSettings(
            calibration=self.calibration, alpha=self.alpha, dataset_alpha=self.dataset_alpha,
            effect_thresholds=self.effect_thresholds, min_rows=self.min_rows,
            max_pooled_days=self.max_pooled_days,
            fail_on_prediction_drift=self.fail_on_prediction_drift,
            warn_on_feature_drift=self.warn_on_feature_drift, tests=self.tests,
            thresholds=self.thresholds, warn_share=self.warn_share,
            fail_share=self.fail_share)


# What the per-feature tables show: the verdict first (the UI's table scrolls sideways),
# then the statistic against its critical value, the p-value, the effect size against
# its threshold, and the null the threshold came from.
CALIBRATED_COLUMNS = ["feature", "drifted", "statistic", "threshold", "p_value", "p_adjusted",
                      "effect_size", "effect_threshold", "dataset_drifted", "test",
                      "effect_measure", "null", "missing_rate_ref", "missing_rate_cur", "n_cur",
                      "status"]
FIXED_COLUMNS = ["feature", "drifted", "test", "statistic", "p_value", "threshold",
                 "missing_rate_ref", "missing_rate_cur", "status"]


def drift_picture(table: pd.DataFrame, calibrated: bool = True) -> str:
    """A bar chart per feature (PNG, base64). Calibrated: the statistic over its critical
    value (>= 1: significant); red = drifted, orange = significant but below the effect
    size. Fixed: the statistic (1 - p for p-value tests) against its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = table.head(40)
    if calibrated:
        threshold = shown["threshold"].astype(float).replace([np.inf, 0.0], np.nan)
        values = (shown["statistic"].astype(float) / threshold).fillna(0.0)
        colors = ["#d62728" if d else "#ff7f0e" if s else "#1f77b4"
                  for d, s in zip(shown["drifted"], shown["significant"], strict=True)]
        label = "statistic / critical value (>= 1: significant); red = drifted"
    else:
        values = np.where(shown["test"].isin(["ks", "chi2"]),
                          1 - shown["p_value"].fillna(1.0), shown["statistic"].fillna(0.0))
        colors = ["#d62728" if d else "#1f77b4" for d in shown["drifted"]]
        label = "statistic (1 - p for p-value tests); red = drifted"
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(shown) + 1.2), dpi=100)
    ax.barh(shown["feature"].astype(str), values, color=colors)
    if calibrated:
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


@production_data_asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    kinds={"numpy", "scipy"},
    automation_condition=DAY_UPDATED,
    partition_mapping=POOLING_WINDOW,
    required_resource_keys={"production"},  # a day's rows kept in batch parts or the log
    check_specs=[AssetCheckSpec(
        DRIFT_CHECK, asset="drift_scores",
        description="Fails (ERROR) on a calibrated dataset verdict or prediction drift: a "
        "no-drift day fails it with probability <= dataset_alpha (2 %). Warns when a feature "
        "drifts on its own test without a dataset verdict; passes, saying so, when there is "
        "not enough data yet. A failure triggers retrain_on_drift.")],
)
def drift_scores(context: AssetExecutionContext, config: DriftScoringConfig,
                 production_data: Mapping[str, Any] | None,
                 reference_profile: ReferenceProfile) -> Iterator:
    """Drift of one day's production data against the champion's reference profile.

    Each feature is tested against its statistic's null distribution at the window's row
    count (a false-alarm rate of `alpha`, 1 %, at any size) and must also move by a
    practical effect size; the day drifts when Holm's procedure over the features
    rejects (the dataset verdict), and the champion's outputs are judged the same way.
    A day with fewer than `min_rows` rows is pooled with the days just before it (at most
    `max_pooled_days` in all); still too few: "not enough data yet", no verdict.
    The window is judged from its days' merged sketches (production_data's metadata names
    each day's), with the verdicts of its rows; a day is loaded only without a usable
    sketch (`judged_from`, `loaded_days` say so; docs/drift.md)."""
    day = context.partition_key
    try:
        settings = config.settings()
        drift_config = settings.drift_config(bool(reference_profile.predictions))
    except ValueError as exc:
        raise Failure(description=f"drift_scores config: {exc}", allow_retries=False) from None
    version = _profile_version(context)
    days = _window_days(context, day, production_data or {}, settings.max_pooled_days,
                        SketchBasis(reference_profile, version))
    try:
        scored = judge_window(reference_profile, days, settings, drift_config, version,
                              _null_cache(context))
    except ValueError as exc:  # e.g. a per-column override naming an unknown column
        raise Failure(description=f"drift_scores config: {exc}", allow_retries=False) from None
    report, window = scored.report, scored.window
    outcome = decide(report, settings)
    summary = {**_summary(day, window.status, scored.day_rows, report, outcome,
                          scored.prediction_rows, version),
               "judged_from": scored.source, "loaded_days": list(scored.loaded)}
    columns = CALIBRATED_COLUMNS if settings.calibrated else FIXED_COLUMNS
    shown = report.features[[c for c in columns if c in report.features.columns]]
    judged = report.features["status"].isin(["ok", "absent", "all missing"]).any()
    value = {**report.to_dict(), **summary}
    yield Output(value, metadata={
        **_metadata(summary),
        "per_feature": metadata_table(shown),
        "predictions": MetadataValue.md(report.predictions[
            [c for c in columns if c in report.predictions.columns]].to_markdown(
                index=False, floatfmt=".4g")),
        "drift_plot": MetadataValue.md(
            f"![drift](data:image/png;base64,"
            f"{drift_picture(report.features, settings.calibrated)})")
        if len(shown) and judged else "none (no verdict)",
    })
    yield AssetCheckResult(
        check_name=DRIFT_CHECK, passed=outcome.passed,
        severity=AssetCheckSeverity[outcome.severity], description=outcome.description,
        metadata={**_metadata(summary), "alpha": settings.alpha,
                  "check_alpha": settings.dataset_alpha, "min_rows": settings.min_rows,
                  "max_pooled_days": settings.max_pooled_days,
                  **({"warn_share": settings.shares[0], "fail_share": settings.shares[1]}
                     if not settings.calibrated else {})})


def _window_days(context: AssetExecutionContext, day: str, loaded: Mapping[str, Any],
                 count: int, basis: SketchBasis) -> list[WindowDay]:
    """The `count` calendar days ending with `day`, oldest first: each day's rows and
    usable sketch from production_data's latest materialization (a day never
    materialized: no traffic, or before the partitions start, has 0 rows), and how to
    load its frame when it must be read."""
    last = dt.date.fromisoformat(day)
    keys = [(last - dt.timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]
    digest, wanted = basis.digest, basis.version or "any"
    days = []
    for key in keys:
        record = latest_materialization(context.instance, key)
        metadata = record.asset_materialization.metadata if record is not None and (
            record.asset_materialization is not None) else {}
        source = loaded.get(key)
        if source is None or (record is None and callable(source)):
            days.append(WindowDay(key, 0, None, lambda: None))
            continue
        rows = metadata.get("dagster/row_count")
        sketch = {k: str(v.value) for k, v in metadata.items() if k.startswith("drift_sketch")}
        # a sketch on this profile's grid, of this version's answers, still on disk
        usable = (sketch.get("drift_sketch_basis") == digest
                  and sketch.get("drift_sketch_version") == wanted
                  and Path(sketch["drift_sketch"]).is_file())
        production = context.resources.production
        load = with_rows_in_place(_loader(source), metadata, production, key)
        days.append(WindowDay(key, int(str(rows.value)) if rows is not None else None,
                              sketch["drift_sketch"] if usable else None, load,
                              in_place_sketcher(_loader(source), metadata, production, key)))
    return days


def _loader(source: Any) -> Any:
    """production_data's value for a day, loaded when called (the window's input
    manager hands over loaders; a direct call may hand over frames)."""
    if callable(source):
        return source
    return lambda: source


def _null_cache(context: AssetExecutionContext) -> NullCache:
    return null_cache(context.instance)


def _profile_version(context: AssetExecutionContext) -> str | None:
    """The model version whose outputs the profile holds (reference_profile's metadata)."""
    event = context.instance.get_latest_materialization_event(AssetKey("reference_profile"))
    materialization = event.asset_materialization if event is not None else None
    value = materialization.metadata.get("champion_version") if materialization else None
    return str(value.value) if value is not None else None


def _summary(day: str, status: str, day_rows: int, report: DriftReport, outcome: CheckOutcome,
             prediction_rows: int, version: str | None) -> dict[str, Any]:
    """What the asset value adds to the report and what its metadata and the check's show
    (the keys status, the retrain sensor and the CLI read among them). status: the
    window's: 'ok' (the day alone), 'pooled', 'insufficient' or 'empty'."""
    share = report.share_drifted if np.isfinite(report.share_drifted) else 0.0
    return {
        "partition": day, "status": status, "check": outcome.outcome,
        "rows": report.n_rows, "day_rows": day_rows,
        "pooled_days": report.pooled_days, "window_days": list(report.window_days),
        "note": report.note, "share_drifted": round(float(share), 4),
        "drifted_features": list(report.drifted_features),
        "dataset_drifted": report.dataset_drifted,
        "dataset_p_value": _finite(report.dataset_p_value),
        "dataset_drifted_features": list(report.dataset_drifted_features),
        "prediction_drifted": report.prediction_drifted,
        "prediction_p_value": _finite(report.prediction_p_value),
        "prediction_drifted_columns": list(report.prediction_drifted_columns),
        "prediction_rows": prediction_rows, "prediction_version": version or "any",
        "family_alpha": _finite(report.dataset_alpha),
    }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def metadata_table(frame: pd.DataFrame) -> Any:
    """A frame as a Dagster table (floats to 4 significant digits, NaN as empty): the UI
    draws a table on the asset page itself, where markdown over 1,000 characters would
    sit behind a "[Show Markdown]" click."""
    kinds = {"b": "bool", "i": "int", "u": "int", "f": "float"}
    schema = TableSchema(columns=[TableColumn(str(name), kinds.get(dtype.kind, "string"))
                                  for name, dtype in frame.dtypes.items()])

    def cell(value: Any) -> str | int | float | bool | None:
        if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
            return None
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating):
            return float(f"{value:.4g}")
        return str(value)

    records = [TableRecord({str(k): cell(v) for k, v in row.items()})
               for row in frame.to_dict(orient="records")]
    return MetadataValue.table(records, schema=schema)


def _metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster metadata: lists as JSON, None (no p-value) left out."""
    return {key: MetadataValue.json(value) if isinstance(value, list) else value
            for key, value in summary.items() if value is not None}
