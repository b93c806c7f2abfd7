"""The durable prediction log the monitoring stage reads, one UTC day at a time.

`PredictionLog` owns the buffering: `append_many` puts rows on a bounded
in-memory queue that a background thread writes in batches, so a response
never waits for the disk; when the queue is full the rows are written
synchronously instead of dropped; `flush`/`close` wait until everything
accepted is stored. A backend implements only storage (`_write`, `read_day`,
`days`, `_close_storage`): SQLite here, PostgreSQL later behind the same API.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import orjson
import pandas as pd

logger = logging.getLogger(__name__)

# Columns of read_day's frame besides the features (one column per feature).
META_COLUMNS = ["timestamp", "request_id", "row_index", "model_name", "model_version",
                "prediction", "confidence", "probabilities"]


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One predicted row: what was asked, what was answered, by which model, when."""

    timestamp: datetime  # UTC
    request_id: str
    row_index: int
    model_name: str
    model_version: str
    feature_names: Sequence[str]
    feature_values: Sequence
    prediction: str
    probabilities: dict[str, float]

    @property
    def features(self) -> dict:
        return dict(zip(self.feature_names, self.feature_values, strict=False))

    @property
    def confidence(self) -> float:
        return max(self.probabilities.values()) if self.probabilities else float("nan")


def _day(value: date | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


class PredictionLog(ABC):
    """Append-only log of predictions, buffered in memory and written in the background."""

    read_only = False

    def __init__(self, max_queue_rows: int = 50_000, batch_rows: int = 2_000,
                 retry_seconds: float = 0.5):
        self.max_queue_rows = max_queue_rows
        self.batch_rows = batch_rows
        self.retry_seconds = retry_seconds
        self.write_failures = 0
        self.sync_writes = 0
        self._queue: deque[PredictionRecord] = deque()
        self._in_writer = 0  # rows taken by the writer and not yet committed
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._writer: threading.Thread | None = None  # started by the first append

    # -- storage, implemented per backend -----------------------------------------
    @abstractmethod
    def _write(self, records: Sequence[PredictionRecord]) -> None:
        """Store `records` durably in one transaction (or raise, storing none)."""

    @abstractmethod
    def read_day(self, day: date | str) -> pd.DataFrame:
        """Every prediction of one UTC day: META_COLUMNS then one column per feature."""

    @abstractmethod
    def days(self) -> list[date]:
        """The UTC days that hold predictions, oldest first."""

    @abstractmethod
    def _close_storage(self) -> None:
        """Release connections."""

    # -- buffering -----------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Rows accepted but not yet stored."""
        return len(self._queue) + self._in_writer

    def append_many(self, records: Sequence[PredictionRecord]) -> None:
        """Accept rows for storage; returns at once unless the queue is full, in which
        case they are written before returning (never dropped)."""
        if not records:
            return
        if self.read_only:
            raise RuntimeError("prediction log opened read-only")
        with self._cond:
            if self._closed:
                raise RuntimeError("prediction log is closed")
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, daemon=True,
                                                name="prediction-log-writer")
                self._writer.start()
            if len(self._queue) + len(records) <= self.max_queue_rows:
                self._queue.extend(records)
                self._cond.notify_all()
                return
        self.sync_writes += 1
        logger.warning("prediction log queue full (%d rows); writing %d rows synchronously",
                       len(self._queue), len(records))
        try:
            self._write_locked(records)
        except Exception:  # noqa: BLE001 - storage is failing: keep the rows in memory
            self.write_failures += 1
            logger.exception("synchronous prediction log write failed; queueing the rows")
            with self._cond:
                self._queue.extend(records)
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted row is stored; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self.backlog:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Store everything accepted, stop the writer and close storage. Rows that still
        cannot be stored after `timeout` go to a JSON-lines file beside the log."""
        with self._cond:
            if self._closed:
                return
        stored = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=max(1.0, timeout))
        if not stored and self._queue:
            self._spill(list(self._queue))
            self._queue.clear()
        self._close_storage()

    def _write_locked(self, records: Sequence[PredictionRecord]) -> None:
        with self._write_lock:
            self._write(records)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(1.0)
                if not self._queue and self._closed:
                    return
                n = min(len(self._queue), self.batch_rows)
                batch = [self._queue.popleft() for _ in range(n)]
                self._in_writer = n
            try:
                self._write_locked(batch)
            except Exception:  # noqa: BLE001 - keep the rows and retry; never drop them
                self.write_failures += 1
                logger.exception("prediction log write of %d rows failed; retrying", n)
                with self._cond:
                    self._queue.extendleft(reversed(batch))
                    self._in_writer = 0
                    if self._closed:
                        return
                time.sleep(self.retry_seconds)
                continue
            with self._cond:
                self._in_writer = 0
                self._cond.notify_all()

    def _spill(self, records: list[PredictionRecord]) -> None:
        path = Path(getattr(self, "path", "prediction_log")).with_suffix(
            f".unwritten-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.jsonl")
        with open(path, "ab") as out:
            for record in records:
                out.write(orjson.dumps(_as_row(record)) + b"\n")
        logger.error("prediction log: %d rows could not be stored; saved to %s",
                     len(records), path)


def _as_row(record: PredictionRecord) -> dict:
    return {"day": record.timestamp.date().isoformat(),
            "logged_at": record.timestamp.isoformat(),
            "request_id": record.request_id, "row_index": record.row_index,
            "model_name": record.model_name, "model_version": record.model_version,
            "prediction": record.prediction, "confidence": record.confidence,
            "probabilities": record.probabilities, "features": record.features}


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """read_day's frame from stored rows (logged_at, request_id, row_index, model_name,
    model_version, prediction, confidence, probabilities JSON, features JSON)."""
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in META_COLUMNS})
    meta = pd.DataFrame([row[:7] for row in rows], columns=META_COLUMNS[:-1])
    meta["timestamp"] = pd.to_datetime(meta["timestamp"], utc=True, format="ISO8601")
    meta["probabilities"] = [orjson.loads(row[7]) for row in rows]
    features = pd.DataFrame.from_records([orjson.loads(row[8]) for row in rows])
    # A feature named like a meta column keeps its values under "feature.<name>".
    features.columns = [f"feature.{c}" if c in META_COLUMNS else c for c in features.columns]
    frame = pd.concat([meta, features], axis=1)
    frame.attrs["feature_columns"] = list(features.columns)
    return frame


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

    def __init__(self, path: str | Path, read_only: bool = False, **kwargs):
        """`read_only`: only read_day/days (monitoring); nothing is created or written."""
        self.path = Path(path)
        self.read_only = read_only
        self._conn = None
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            with self._conn:
                for statement in self._DDL:
                    self._conn.execute(statement)
        super().__init__(**kwargs)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives a power cut, not only a crash.
        conn.execute("PRAGMA synchronous=FULL")
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
        with self._conn:  # one transaction: all rows or none
            self._conn.executemany(self._INSERT, rows)

    def read_day(self, day: date | str) -> pd.DataFrame:
        return _frame(self._query(self._SELECT, (_day(day),)))

    def days(self) -> list[date]:
        found = self._query("SELECT DISTINCT day FROM predictions ORDER BY day")
        return [date.fromisoformat(day) for (day,) in found]

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
