"""Prediction logs as the first format wrote them (one SQL row per prediction, features
and probabilities as JSON), built by that format's own SQL: the tests that show such
logs stay readable, and that the columnar format reads back the same frame."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from datetime import timezone
from pathlib import Path

import orjson

from ml_assets.core.prediction_log import PredictionRecord

SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS predictions (id INTEGER PRIMARY KEY, day TEXT NOT NULL,"
    " logged_at TEXT NOT NULL, request_id TEXT NOT NULL, row_index INTEGER NOT NULL,"
    " model_name TEXT NOT NULL, model_version TEXT NOT NULL, prediction TEXT NOT NULL,"
    " confidence REAL, probabilities TEXT NOT NULL, features TEXT NOT NULL,"
    " input_flags TEXT, variant TEXT, latency_ms REAL, error TEXT)",
    "CREATE INDEX IF NOT EXISTS predictions_by_day ON predictions (day)")
POSTGRES_DDL = (
    "CREATE TABLE IF NOT EXISTS predictions (id BIGINT GENERATED ALWAYS AS IDENTITY"
    " PRIMARY KEY, day DATE NOT NULL, logged_at TIMESTAMPTZ NOT NULL, request_id TEXT NOT"
    " NULL, row_index INTEGER NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT"
    " NULL, prediction TEXT NOT NULL, confidence DOUBLE PRECISION, probabilities JSON NOT"
    " NULL, features JSON NOT NULL, batch_id UUID NOT NULL, input_flags TEXT, variant TEXT,"
    " latency_ms DOUBLE PRECISION, error TEXT)",
    "CREATE INDEX IF NOT EXISTS predictions_by_day ON predictions (day)")
_COLUMNS = ("day, logged_at, request_id, row_index, model_name, model_version, prediction,"
            " confidence, probabilities, features, input_flags, variant, latency_ms, error")


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def first_format_rows(records: Sequence[PredictionRecord]) -> list[tuple]:
    """The rows the first format's writer stored for `records` (its `_write`)."""
    return [(r.timestamp.date().isoformat(), r.timestamp.isoformat(), r.request_id,
             r.row_index, r.model_name, r.model_version, r.prediction, r.confidence,
             orjson.dumps(r.probabilities).decode(), orjson.dumps(r.features).decode(),
             r.input_flags or None, r.variant or None, _finite(r.latency_ms),
             r.error or None) for r in records]


def write_sqlite(path: Path, records: Sequence[PredictionRecord]) -> None:
    """Append `records` to the first format's table in the SQLite file at `path`."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            for statement in SQLITE_DDL:
                conn.execute(statement)
            conn.executemany(f"INSERT INTO predictions ({_COLUMNS}) VALUES "
                             f"({', '.join('?' * 14)})", first_format_rows(records))
    finally:
        conn.close()


def write_postgres(dsn: str, records: Sequence[PredictionRecord]) -> None:
    """Append `records` to the first format's table in the PostgreSQL database `dsn`."""
    import psycopg2

    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            for statement in POSTGRES_DDL:
                cur.execute(statement)
            for record, row in zip(records, first_format_rows(records), strict=True):
                stamp = record.timestamp  # naive means UTC, as that writer read it
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=timezone.utc)
                row = (row[0], stamp, *row[2:])
                cur.execute(f"INSERT INTO predictions ({_COLUMNS}, batch_id) VALUES "
                            f"({', '.join(['%s'] * 14)}, gen_random_uuid())", row)
    finally:
        conn.close()
