"""The durable prediction log: written by the prediction service, read by monitoring.

Shared by both sides (it imports neither Dagster nor `serving`). `open_prediction_log`
picks a backend from a URL or a path: `SQLitePredictionLog` (the embedded default,
one WAL file) or `PostgresPredictionLog` (the production profile). The buffering and
group commit live in `base.PredictionLog` (see its docstring for `append`, `offer`,
`append_many`, `close`); the storage format (a commit's rows of a day as one Arrow IPC
batch, decoded with bounds) in `columnar`.
"""

from __future__ import annotations

from pathlib import Path

from ml_assets.core.prediction_log.base import (
    META_COLUMNS,
    LogMark,
    PredictionLog,
    PredictionLogError,
    PredictionLogUnavailable,
    PredictionRecord,
    numeric_predictions,
)
from ml_assets.core.prediction_log.location import redact_url, resolve_log_location
from ml_assets.core.prediction_log.postgres import PostgresPredictionLog
from ml_assets.core.prediction_log.sqlite import SQLitePredictionLog

__all__ = ["META_COLUMNS", "LogMark", "PostgresPredictionLog", "PredictionLog",
           "PredictionLogError", "PredictionLogUnavailable", "PredictionRecord",
           "SQLitePredictionLog",
           "numeric_predictions", "open_prediction_log", "redact_url", "resolve_log_location"]


def open_prediction_log(url_or_path: str | Path, read_only: bool = False,
                        **kwargs) -> PredictionLog:
    """The prediction log at `url_or_path`: `postgresql://` (also `postgres://`,
    `postgresql+psycopg2://`) opens a `PostgresPredictionLog`; `sqlite:///path` or a
    plain path opens a `SQLitePredictionLog`. `kwargs` go to the backend (queue size,
    batch rows, retry delay, spill path, stall seconds; `busy_timeout` and
    `synchronous` for SQLite; `table` and `connect_timeout` for PostgreSQL). ValueError names a
    location of any other kind."""
    kind, where = resolve_log_location(url_or_path)
    if kind == "postgres":
        return PostgresPredictionLog(str(where), read_only=read_only, **kwargs)
    return SQLitePredictionLog(where, read_only=read_only, **kwargs)
