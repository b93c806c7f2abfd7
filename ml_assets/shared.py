"""Dagster objects that more than one module of the code location uses, kept here so the
stage modules (ingestion ... batch) import this module and the core, never each other:
the daily partitions of monitoring and batch scoring and their automation conditions,
the names of the checks that
sensors and the CLI look for, how a check's evaluation is read from the event log, and
the model lineage production rows are scoped to, and the instance's cache of drift
nulls (filled by reference_profile, read by drift_scores). It imports no stage module."""

import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    AutomationCondition,
    BetaWarning,
    DagsterInstance,
    DailyPartitionsDefinition,
    EventLogEntry,
    EventLogRecord,
    Failure,
    PartitionMapping,
    asset,
    build_input_context,
    input_manager,
)

from ml_assets.core.data.production_rows import Lineage
from ml_assets.core.drift.check import CheckSettings
from ml_assets.core.drift.nulls import NullCache, warm_nulls
from ml_assets.core.drift.profile import ReferenceProfile
from ml_assets.core.registry.lineage import model_lineage
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.settings import PlatformSettings

# One UTC day of production data, drift scores, live performance and batch predictions.
daily_partitions = DailyPartitionsDefinition(
    start_date=PlatformSettings.from_env().monitoring_start_date, end_offset=1)

# Recent days only: labels and batch files for a day long past re-materialize nothing.
RECENT_DAYS = AutomationCondition.in_latest_time_window(timedelta(days=7))

# A day's estimate and live performance follow its production data (a rebuilt day
# included, not only the latest: eager() would leave a past day's estimate stale, and
# its live_performance waiting on it); the labels sensor requests them when labels come.
AFTER_PRODUCTION_DATA = (RECENT_DAYS & AutomationCondition.any_deps_updated()
                         .since_last_handled() & ~AutomationCondition.any_deps_missing()
                         & ~AutomationCondition.in_progress()).with_label(
                             "after production data")

# drift_scores' check: a failure (ERROR) triggers retrain_on_drift.
DRIFT_CHECK = "drift_within_limits"
# champion_comparison's check: a refusal is a decision (WARN), never a failed run.
PROMOTION_CHECK = "challenger_beats_champion"
# Run tag set by champion_model: refused | immediate | canary | shadow (and _version).
PROMOTION_TAG = "ml/promotion"
# production_data's and live_performance's check: a labels or landing file left out.
EVIDENCE_CHECK = "evidence_files_readable"


def lineage_of(mlflow_tracking: MlflowTracking, data_source: DataSourceResource) -> Lineage:
    """The versions of the registered model trained on the data source's dataset: the
    only ones whose production rows train, or are judged with, this model."""
    name = mlflow_tracking.registered_model_name
    try:
        return model_lineage(mlflow_tracking.client, name, data_source.name)
    except Exception as exc:  # noqa: BLE001 - registry down: no row is used unproven
        raise Failure(description=f"the model registry cannot say which versions of {name!r} "
                      f"were trained on dataset {data_source.name!r} ({str(exc)[:300]}); "
                      "production rows are only used once it can") from None


# model_metrics' blocking gate; its recorded thresholds are what estimated_performance uses.
METRICS_CHECK = "metrics_above_thresholds"
# estimated_performance's check: a failure (ERROR) with a failed drift check retrains.
ESTIMATE_CHECK = "estimated_performance_above_gate"


def check_evaluation(entry: EventLogEntry | None) -> AssetCheckEvaluation | None:
    """The check evaluation an event log entry carries, or None for any other entry."""
    if entry is None or entry.dagster_event is None:
        return None
    data = entry.dagster_event.event_specific_data
    return data if isinstance(data, AssetCheckEvaluation) else None


def null_cache(instance: DagsterInstance) -> NullCache:
    """Resampled drift nulls kept beside the instance's storage: every run is a new
    process, so an in-memory cache would start empty every day (docs/drift.md, "Cost")."""
    return NullCache(directory=Path(instance.storage_directory()) / "drift_nulls")


def warm_drift_nulls(instance: DagsterInstance, profile: ReferenceProfile) -> dict[str, Any]:
    """Draw into the instance's null cache the resampled nulls the drift check (default
    settings: drift_scores' config defaults are CheckSettings') will read for `profile`:
    the bridge limits and the grid of day sizes of columns with ties. Run at training
    time, so that no day's scoring draws one. Returns metadata for the profile asset."""
    config = CheckSettings().drift_config(bool(profile.predictions))
    start = time.process_time()
    drawn = warm_nulls(profile, config, null_cache(instance))
    return {"drift_nulls_drawn": drawn,
            "drift_nulls_cpu_seconds": round(time.process_time() - start, 3)}


WINDOW_LOADER = "production_data_window"


@input_manager(required_resource_keys={"io_manager"})
def production_data_window(context) -> dict[str, Callable[[], pd.DataFrame | None]]:
    """production_data's days (a drift window's, or estimated_performance's one) as
    loaders rather than frames: the IO manager reads a day only when its loader is
    called (a day without a usable sketch). A day never materialized loads as None."""
    io_manager = context.resources.io_manager

    def loader(key: str) -> Callable[[], pd.DataFrame | None]:
        def load() -> pd.DataFrame | None:
            return io_manager.load_input(build_input_context(
                asset_key=context.asset_key, partition_key=key,
                asset_partitions_def=context.asset_partitions_def,
                instance=context.instance,
                definition_metadata={"allow_missing_partitions": True}))
        return load

    return {key: loader(key) for key in context.asset_partition_keys}


def production_data_asset(partition_mapping: PartitionMapping | None = None, **kwargs: Any):
    """@asset(**kwargs) of an asset that reads production_data through
    `production_data_window` (its days as loaders, a day read only when called)."""
    with warnings.catch_warnings():  # resource_defs on an asset is a beta parameter
        warnings.simplefilter("ignore", BetaWarning)
        return asset(ins={"production_data": AssetIn(
            partition_mapping=partition_mapping, input_manager_key=WINDOW_LOADER,
            metadata={"allow_missing_partitions": True})},
            resource_defs={WINDOW_LOADER: production_data_window}, **kwargs)


def latest_materialization(instance: DagsterInstance, day: str,
                           asset: str = "production_data") -> EventLogRecord | None:
    """`asset`'s latest materialization of `day` (None: never materialized)."""
    records = instance.fetch_materializations(AssetRecordsFilter(
        asset_key=AssetKey(asset), asset_partitions=[day]), limit=1).records
    return records[0] if records else None
