"""Dagster objects that more than one module of the code location uses, kept here so the
stage modules (ingestion ... batch) import this module and the core, never each other:
the daily partitions of monitoring and batch scoring, the names of the checks that
sensors and the CLI look for, and how a check's evaluation is read from the event log.
It imports no stage module."""

from dagster import AssetCheckEvaluation, DailyPartitionsDefinition, EventLogEntry

from ml_assets.settings import PlatformSettings

# One UTC day of production data, drift scores, live performance and batch predictions.
daily_partitions = DailyPartitionsDefinition(
    start_date=PlatformSettings.from_env().monitoring_start_date, end_offset=1)

# drift_scores' check: a failure (ERROR) triggers retrain_on_drift.
DRIFT_CHECK = "drift_within_limits"
# champion_comparison's blocking check: a refusal is a normal outcome, not paged.
PROMOTION_CHECK = "challenger_beats_champion"
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
