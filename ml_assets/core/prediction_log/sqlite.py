"""The embedded default prediction log: one SQLite file in WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import date
from pathlib import Path

import orjson
import pandas as pd

from ml_assets.core.prediction_log.base import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
    _day,
    _frame,
)


class SQLitePredictionLog(PredictionLog):
    """The embedded default: one SQLite file (WAL), one table indexed by day."""

    _DDL = (
        "CREATE TABLE IF NOT EXISTS predictions ("
        " id INTEGER PRIMARY KEY,"
        " day TEXT NOT NULL,"
        " logged_at TEXT NOT NULL,"
        " request_id TEXT NOT NULL,"
        " row_index INTEGER NOT NULL,"
        " model_name TEXT NOT NULL,"
        " model_version TEXT NOT NULL,"
        " prediction TEXT NOT NULL,"
        " confidence REAL,"
        " probabilities TEXT NOT NULL,"
        " features TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS predictions_by_day ON predictions (day)",
    )
    _INSERT = ("INSERT INTO predictions (day, logged_at, request_id, row_index, model_name,"
               " model_version, prediction, confidence, probabilities, features)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    _SELECT = ("SELECT logged_at, request_id, row_index, model_name, model_version, prediction,"
               " confidence, probabilities, features FROM predictions WHERE day = ? ORDER BY id")

    def __init__(self, path: str | Path, read_only: bool = False,
                 busy_timeout: float = 5.0, synchronous: str = "FULL", **kwargs):
        """`read_only`: only read_day/days (monitoring); nothing is created or written.
        `busy_timeout`: how long a write waits for another connection's lock before it
        fails (and is retried). `synchronous`: FULL (a commit survives a power cut) or
        NORMAL (survives a process crash; a power cut may lose the last commits).
        PredictionLogError, naming the file, when it cannot be opened or created."""
        self.path = Path(path)
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r}: use FULL or NORMAL")
        self._conn = None
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = self._connect()
                with self._conn:
                    for statement in self._DDL:
                        self._conn.execute(statement)
            except (OSError, sqlite3.Error) as exc:
                if self._conn is not None:
                    self._conn.close()
                raise PredictionLogError(f"prediction log: cannot open SQLite file "
                                         f"{self.path} for writing: {exc}") from exc
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"SQLitePredictionLog({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        # Used by the writer thread only, after the table is created at open.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives a power cut, not only a crash.
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.isolation_level = "DEFERRED"
        return conn

    def _write(self, records: Sequence[PredictionRecord]) -> None:
        if self._conn is None:
            raise RuntimeError(f"{self.path} was opened read-only")
        rows = []
        for r in records:
            stamp = r.timestamp
            rows.append((stamp.date().isoformat(), stamp.isoformat(), r.request_id, r.row_index,
                         r.model_name, r.model_version, r.prediction, r.confidence,
                         orjson.dumps(r.probabilities).decode(),
                         orjson.dumps(r.features).decode()))
        conn = self._conn
        try:
            with conn:  # one transaction: all rows or none
                conn.executemany(self._INSERT, rows)
        except sqlite3.Error as exc:
            raise PredictionLogError(f"prediction log: writing {len(rows)} rows to "
                                     f"{self.path}: {exc}") from exc

    def read_day(self, day: date | str) -> pd.DataFrame:
        return _frame(self._query(self._SELECT, (_day(day),)))

    def days(self) -> list[date]:
        found = self._query("SELECT DISTINCT day FROM predictions ORDER BY day")
        return [date.fromisoformat(day) for (day,) in found]

    def row_count(self, day: date | str) -> int:
        found = self._query("SELECT COUNT(*) FROM predictions WHERE day = ?", (_day(day),))
        return int(found[0][0]) if found else 0

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of `sql` on a short-lived connection (WAL: readers never block the writer);
        none when the log does not exist yet."""
        if not self.path.exists():
            return []
        with closing(sqlite3.connect(self.path, timeout=30.0)) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def _close_storage(self) -> None:
        if self._conn is not None:
            self._conn.close()
