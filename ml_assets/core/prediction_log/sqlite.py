"""The embedded default prediction log: one SQLite file in WAL mode."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from datetime import date
from pathlib import Path

import orjson
import pandas as pd

from ml_assets.core.prediction_log import columnar
from ml_assets.core.prediction_log.base import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
)

logger = logging.getLogger("ml_assets.core.prediction_log")
# Request ids per lookup statement (SQLite binds them as one JSON array).
_IDS_PER_QUERY = 20_000


class SQLitePredictionLog(PredictionLog):
    """The embedded default: one SQLite file (WAL). Each commit stores its rows of a day
    as one columnar batch (`prediction_batches`, indexed by day; see `columnar`) and
    each request's place in it (`prediction_requests`, keyed by request id), in one
    transaction. A log written by the first format (`predictions`, one SQL row per
    prediction) is read alongside: its rows come first in each day.

    Durability: every commit is written to the WAL file before its requests are
    answered, so a process crash loses nothing committed. With `synchronous="NORMAL"`
    the WAL is fsynced by a background thread every
    `sync_interval` seconds rather than at every commit: a power cut can lose the
    commits of the last interval (never corrupts the file). `"FULL"` fsyncs every
    commit before it is answered (survives a power cut; costs latency, see
    docs/serving.md); the service's default."""

    _DDL = (
        "CREATE TABLE IF NOT EXISTS prediction_batches ("
        " id INTEGER PRIMARY KEY,"
        " day TEXT NOT NULL,"
        " rows INTEGER NOT NULL,"
        " format INTEGER NOT NULL,"
        " data BLOB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS prediction_batches_by_day ON prediction_batches (day)",
        "CREATE TABLE IF NOT EXISTS prediction_requests ("
        " request_id TEXT NOT NULL,"
        " batch INTEGER NOT NULL,"
        " first_row INTEGER NOT NULL,"
        " rows INTEGER NOT NULL,"
        " PRIMARY KEY (request_id, batch, first_row)) WITHOUT ROWID",
    )
    _INSERT_BATCH = "INSERT INTO prediction_batches (day, rows, format, data) VALUES (?, ?, ?, ?)"
    _INSERT_REQUESTS = ("INSERT INTO prediction_requests (request_id, batch, first_row, rows)"
                        " VALUES (?, ?, ?, ?)")
    # The first format's table, read where a log still has one (never written).
    _ADDED = (("input_flags", "TEXT"), ("variant", "TEXT"), ("latency_ms", "REAL"),
              ("error", "TEXT"))
    _BASE = ("logged_at, request_id, row_index, model_name, model_version, prediction,"
             " confidence, probabilities, features")
    _COLUMNS = f"{_BASE}, input_flags, variant, latency_ms, error"

    def __init__(self, path: str | Path, read_only: bool = False,
                 busy_timeout: float = 5.0, synchronous: str = "FULL",
                 sync_interval: float = 1.0, **kwargs):
        """`read_only`: only read_day/days (monitoring); nothing is created or written.
        `busy_timeout`: how long a write waits for another connection's lock before it
        fails (and is retried). `synchronous`: FULL (a commit survives a power cut) or
        NORMAL (survives a process crash; the WAL is fsynced every `sync_interval`
        seconds, so a power cut may lose the commits of the last interval).
        PredictionLogError, naming the file, when it cannot be opened or created."""
        self.path = Path(path)
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r}: use FULL or NORMAL")
        self.sync_interval = sync_interval
        self.syncs = 0
        self._unsynced = 0  # commits since the last fsync of the WAL
        self._stop_syncing = threading.Event()
        self._sync_lock = threading.Lock()
        self._syncer: threading.Thread | None = None
        self._conn = None
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = self._connect()
                with self._conn:
                    for statement in self._DDL:
                        self._conn.execute(statement)
                # Writes wait for another process's lock in _write's own loop (short
                # sleeps), not SQLite's busy handler, whose back-off sleeps grow to
                # 25-100 ms: with several API workers on one file that was the p99.
                self._conn.execute("PRAGMA busy_timeout = 0")
                self._conn.isolation_level = None  # _write opens its own transactions
            except (OSError, sqlite3.Error) as exc:
                if self._conn is not None:
                    self._conn.close()
                raise PredictionLogError(f"prediction log: cannot open SQLite file "
                                         f"{self.path} for writing: {exc}") from exc
        super().__init__(**kwargs)
        if not read_only and self.synchronous == "NORMAL" and sync_interval > 0:
            self._syncer = threading.Thread(target=self._sync_periodically, daemon=True,
                                            name="prediction-log-wal-sync")
            self._syncer.start()

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
        batches = columnar.encode(records)  # before the lock: encoding holds no lock
        conn = self._conn
        try:
            self._locked(conn, "BEGIN IMMEDIATE")  # one transaction: all rows or none
            try:
                for batch in batches:
                    cursor = conn.execute(self._INSERT_BATCH, (
                        batch.day, batch.rows, columnar.FORMAT, memoryview(batch.data)))
                    batch_id = cursor.lastrowid
                    conn.executemany(self._INSERT_REQUESTS, [
                        (request_id, batch_id, first, rows)
                        for request_id, first, rows in batch.runs])
                self._locked(conn, "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise PredictionLogError(f"prediction log: writing {len(records)} rows to "
                                     f"{self.path}: {exc}") from exc
        with self._sync_lock:
            self._unsynced += 1

    def _locked(self, conn: sqlite3.Connection, statement: str) -> None:
        """Run `statement`, retrying while another connection holds the lock, for up to
        busy_timeout: sleeps of 0.5 ms growing to 5 ms, so a write queued behind another
        worker's commit starts within milliseconds of it."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0005
        while True:
            try:
                conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or (
                        time.monotonic() + delay > deadline):
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.005)

    def sync_wal(self) -> None:
        """fsync the WAL file now (what NORMAL defers): everything committed so far then
        survives a power cut. fsync flushes the file whichever descriptor wrote it."""
        with self._sync_lock:
            pending, self._unsynced = self._unsynced, 0
        if not pending:
            return
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed away and removed: nothing to sync
            return
        try:
            os.fsync(fd)
            self.syncs += 1
        except OSError:
            with self._sync_lock:
                self._unsynced += pending  # try again next time
            raise
        finally:
            os.close(fd)

    def _sync_periodically(self) -> None:
        while not self._stop_syncing.wait(self.sync_interval):
            try:
                self.sync_wal()
            except OSError as exc:
                logger.error("prediction log: fsync of %s-wal failed: %s", self.path, exc)

    @property
    def _named(self) -> str:
        return str(self.path)

    def _old_day_rows(self, day: str) -> list[tuple]:
        return self._old_rows(" WHERE day = ? ORDER BY id", (day,))

    def _old_day_count(self, day: str) -> int:
        found = self._query("SELECT COUNT(*) FROM predictions WHERE day = ?", (day,))
        return int(found[0][0]) if found else 0

    def _day_total(self, day: str, through: int | None) -> tuple[int, int]:
        bound = " AND id <= ?" if through is not None else ""
        found = self._query("SELECT MAX(id), SUM(rows) FROM prediction_batches WHERE day = ?"
                            + bound, (day,) if through is None else (day, through))
        return (int(found[0][0] or 0), int(found[0][1] or 0)) if found else (0, 0)

    def _day_index(self, day: str, after: int, through: int,
                   limit: int) -> list[tuple[int, int]]:
        return self._query("SELECT id, rows FROM prediction_batches WHERE day = ? AND id > ?"
                           " AND id <= ? ORDER BY id LIMIT ?", (day, after, through, limit))

    def _day_batches(self, day: str, span: tuple[int, int] | None) -> list[tuple]:
        if span is None:
            return self._query("SELECT id, format, data FROM prediction_batches"
                               " WHERE day = ? ORDER BY id", (day,))
        return self._query("SELECT id, format, data FROM prediction_batches WHERE day = ?"
                           " AND id BETWEEN ? AND ? ORDER BY id", (day, *span))

    def read_requests(self, request_ids: Iterable[str], features: bool = True,
                      day: str | None = None, through: int | None = None) -> pd.DataFrame:
        ids = sorted({str(i) for i in request_ids})
        chunks = [orjson.dumps(ids[start:start + _IDS_PER_QUERY]).decode()
                  for start in range(0, len(ids), _IDS_PER_QUERY)]
        where = " WHERE request_id IN (SELECT value FROM json_each(?))"
        old_where = f"{where} AND day = ?" if day is not None else where
        scope = (day,) if day is not None else ()
        batch_where = where + "".join(
            clause for clause, value in ((" AND b.day = ?", day), (" AND b.id <= ?", through))
            if value is not None)
        bounds = tuple(v for v in (day, through) if v is not None)
        old = (row for chunk in chunks  # each query run when the reader gets to it
               for row in self._old_rows(f"{old_where} ORDER BY id", (chunk, *scope),
                                         with_day=True))
        hits = (hit for chunk in chunks for hit in self._query(
            "SELECT b.id, b.day, b.format, b.data, r.first_row, r.rows FROM"
            f" prediction_requests r JOIN prediction_batches b ON b.id = r.batch{batch_where}",
            (chunk, *bounds)))
        return columnar.requests_frame(old, hits, str(self.path), features)

    def _old_rows(self, where: str, params: tuple, with_day: bool = False) -> list[tuple]:
        """Rows of the first format's table (none when the log has no such table); an
        old table lacking later columns reads them as NULL."""
        day = "day, " if with_day else ""
        try:
            return self._query(f"SELECT {day}{self._COLUMNS} FROM predictions{where}", params)
        except sqlite3.OperationalError as exc:
            if "no such column" not in str(exc):
                raise
        present = {row[1] for row in self._query("PRAGMA table_info(predictions)")}
        added = ", ".join(name if name in present else f"NULL AS {name}"
                          for name, _ in self._ADDED)
        return self._query(f"SELECT {day}{self._BASE}, {added} FROM predictions{where}",
                           params)

    def days(self) -> list[date]:
        found = self._query("SELECT DISTINCT day FROM prediction_batches")
        found += self._query("SELECT DISTINCT day FROM predictions")
        return sorted({date.fromisoformat(day) for (day,) in found})

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
        self._stop_syncing.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        if self._conn is not None:
            try:
                self.sync_wal()
            except OSError as exc:
                logger.error("prediction log: final fsync of %s-wal failed: %s", self.path,
                             exc)
            self._conn.close()
