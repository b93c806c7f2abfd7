"""Dagster objects that more than one module of the code location uses, kept here so the
stage modules (ingestion ... batch) import this module and the core, never each other:
the daily partitions of monitoring and batch scoring, and the names of the checks that
sensors and the CLI look for. It imports no stage module."""

from dagster import DailyPartitionsDefinition

from ml_assets.settings import PlatformSettings

# One UTC day of production data, drift scores, live performance and batch predictions.
daily_partitions = DailyPartitionsDefinition(
    start_date=PlatformSettings.from_env().monitoring_start_date, end_offset=1)

# drift_scores' check: a failure (ERROR) triggers retrain_on_drift.
DRIFT_CHECK = "drift_within_limits"
# champion_comparison's blocking check: a refusal is a normal outcome, not paged.
PROMOTION_CHECK = "challenger_beats_champion"
