"""Dagster objects that more than one module of the code location uses, kept here so the
stage modules (ingestion ... batch) import this module and the core, never each other:
the daily partitions of monitoring and batch scoring, the names of the checks that
sensors and the CLI look for, how a check's evaluation is read from the event log, and
the model lineage production rows are scoped to. It imports no stage module."""

from dagster import AssetCheckEvaluation, DailyPartitionsDefinition, EventLogEntry, Failure

from ml_assets.core.data.production_rows import Lineage
from ml_assets.core.registry.lineage import model_lineage
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.settings import PlatformSettings

# One UTC day of production data, drift scores, live performance and batch predictions.
daily_partitions = DailyPartitionsDefinition(
    start_date=PlatformSettings.from_env().monitoring_start_date, end_offset=1)

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
