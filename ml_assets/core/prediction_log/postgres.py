"""The production profile's prediction log: one PostgreSQL table shared by every API
replica and the Dagster processes."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timezone
from typing import Any

import orjson
import pandas as pd

from ml_assets.core.prediction_log.base import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
    _day,
    _finite_or_none,
    _frame,
)
from ml_assets.core.prediction_log.location import redact_url, resolve_log_location

logger = logging.getLogger("ml_assets.core.prediction_log")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,55}")
# Columns added after the first release (created in place at open when missing).
_ADDED = (("input_flags", "TEXT"), ("variant", "TEXT"), ("latency_ms", "DOUBLE PRECISION"),
          ("error", "TEXT"))


def _psycopg2():
    try:
        import psycopg2  # type: ignore[import-untyped]
        import psycopg2.errors  # type: ignore[import-untyped]  # noqa: F401
        import psycopg2.extras  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:  # pragma: no cover - installed with the production extra
        raise PredictionLogError("the PostgreSQL prediction log needs psycopg2: pip install "
                                 "'ml-assets[production]'") from exc
    return psycopg2


@dataclass(frozen=True)
class _Uncertain:
    """A batch whose COMMIT was cut off: stored or not, only the database knows."""

    batch_id: str
    days: list[str]
    records: dict[int, PredictionRecord]  # id -> record (held, so ids stay unique)


class PostgresPredictionLog(PredictionLog):
    """The shared log of the production profile: one PostgreSQL table indexed by day,
    written in one transaction per batch.

    Columns mirror the SQLite table (`day` DATE, `logged_at` TIMESTAMPTZ, probabilities
    and features as JSON text, which keeps the key order), plus `batch_id`: a write whose
    connection breaks during COMMIT is looked up by it on reconnect, so the retry neither
    loses nor duplicates the batch. Writes use one connection and reads another (each
    behind a lock); a broken connection is replaced on next use, and a write that finds
    its idle connection closed by the server reconnects and retries at once."""

    def __init__(self, url: str, read_only: bool = False, table: str = "predictions",
                 connect_timeout: float = 10.0, **kwargs):
        """`read_only`: nothing is created or written and nothing connects until the
        first read; a missing table reads as empty. Otherwise the table and its index
        are created if missing (PredictionLogError if the database is unreachable)."""
        kind, libpq_url = resolve_log_location(url)
        if kind != "postgres":
            raise ValueError(f"not a PostgreSQL URL: {redact_url(str(url))!r}")
        if not all(_IDENTIFIER.fullmatch(part) for part in table.split(".", 1)):
            raise ValueError(f"table {table!r}: use letters, digits and _ (optionally "
                             "schema.table)")
        self._pg = _psycopg2()
        try:
            self._params = self._pg.extensions.parse_dsn(str(libpq_url))
        except self._pg.ProgrammingError as exc:
            raise ValueError(f"invalid PostgreSQL URL {redact_url(str(url))!r}: "
                             f"{self._scrub(exc)}") from None
        self._params.setdefault("connect_timeout", str(max(1, round(connect_timeout))))
        self._params.setdefault("application_name", "ml-platform-prediction-log")
        # Notice a dead peer (server or network gone) within about a minute.
        for name, value in (("keepalives", "1"), ("keepalives_idle", "30"),
                            ("keepalives_interval", "10"), ("keepalives_count", "3")):
            self._params.setdefault(name, value)
        self.url = redact_url(str(libpq_url))
        self.table = table
        self.read_only = read_only
        host = self._params.get("host") or "the local socket"
        port = self._params.get("port") or "5432"
        self.where = (f"PostgreSQL database {self._params.get('dbname', '(default)')!r} on "
                      f"{host}:{port}" + (f" as {self._params['user']!r}"
                                          if self._params.get("user") else ""))
        quoted = [f'"{part}"' for part in table.split(".", 1)]
        self._table = ".".join(quoted)
        index = f'"{table.split(".", 1)[-1]}_by_day"'
        columns = ("day, logged_at, request_id, row_index, model_name, model_version, "
                   "prediction, confidence, probabilities, features, input_flags, variant, "
                   "latency_ms, error")
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {self._table} ("
            " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " day DATE NOT NULL,"
            " logged_at TIMESTAMPTZ NOT NULL,"
            " request_id TEXT NOT NULL,"
            " row_index INTEGER NOT NULL,"
            " model_name TEXT NOT NULL,"
            " model_version TEXT NOT NULL,"
            " prediction TEXT NOT NULL,"
            " confidence DOUBLE PRECISION,"
            " probabilities JSON NOT NULL,"
            " features JSON NOT NULL,"
            " batch_id UUID NOT NULL,"
            " input_flags TEXT,"
            " variant TEXT,"
            " latency_ms DOUBLE PRECISION,"
            " error TEXT)",
            f"CREATE INDEX IF NOT EXISTS {index} ON {self._table} (day)",
        )
        # A table created before a column of _ADDED existed is migrated in place (the
        # ALTER, which locks the table, runs only when a column is missing).
        self._present = ("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                         " AND attnum > 0 AND NOT attisdropped")
        self._insert = f"INSERT INTO {self._table} ({columns}, batch_id) VALUES %s"
        self._base = ("logged_at, request_id, row_index, model_name, model_version,"
                      " prediction, confidence, probabilities::text, features::text")
        self._select = (f"SELECT {self._base}, input_flags, variant, latency_ms, error"
                        f" FROM {self._table} WHERE day = %s ORDER BY id")
        # Distinct days by walking the index (one probe per day, not a scan of the table).
        self._days = (f"WITH RECURSIVE d(day) AS (SELECT min(day) FROM {self._table}"
                      f" UNION ALL SELECT (SELECT min(day) FROM {self._table} t"
                      f" WHERE t.day > d.day) FROM d WHERE d.day IS NOT NULL)"
                      f" SELECT day FROM d WHERE day IS NOT NULL")
        self._count = f"SELECT COUNT(*) FROM {self._table} WHERE day = %s"
        self._writer_conn: Any = None  # psycopg2 connections (untyped library)
        self._reader_conn: Any = None
        self._writer_guard = threading.Lock()
        self._reader_guard = threading.Lock()
        self._uncertain: _Uncertain | None = None
        self._already_stored: dict[int, PredictionRecord] = {}
        super().__init__(**kwargs)
        if not read_only:
            self._create_table()

    def __repr__(self) -> str:
        return f"PostgresPredictionLog({self.url!r}, table={self.table!r})"

    # -- connections ---------------------------------------------------------------
    def _scrub(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        password = getattr(self, "_params", {}).get("password")
        return text.replace(password, "***") if password else text

    def _connect(self, autocommit: bool):
        try:
            conn = self._pg.connect(**self._params)
        except self._pg.Error as exc:
            raise PredictionLogError(f"prediction log: cannot connect to {self.where}: "
                                     f"{self._scrub(exc)}") from exc
        conn.autocommit = autocommit
        return conn

    def _lost(self, conn, exc: BaseException) -> bool:
        return isinstance(exc, self._pg.InterfaceError) or bool(conn.closed)

    def _writer_connection(self):
        """(connection, fresh): the write connection, opened if there is none."""
        if self._writer_conn is not None and not self._writer_conn.closed:
            return self._writer_conn, False
        self._writer_conn = self._connect(autocommit=False)
        return self._writer_conn, True

    def _reset_writer(self, lost: bool) -> None:
        """After a failed statement: drop a lost connection, roll back a live one."""
        conn = self._writer_conn
        if conn is None:
            return
        if not lost:
            try:
                conn.rollback()
                return
            except self._pg.Error:
                pass
        self._writer_conn = None
        conn.close()

    def _create_table(self) -> None:
        with self._writer_guard:
            conn, _ = self._writer_connection()
            try:
                with conn.cursor() as cur:
                    # Replicas starting together must not race on CREATE TABLE.
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                (f"prediction-log:{self.table}",))
                    for statement in self._ddl:
                        cur.execute(statement)
                    cur.execute(self._present, (self._table,))
                    present = {name for (name,) in cur.fetchall()}
                    missing = [(name, kind) for name, kind in _ADDED if name not in present]
                    if missing:
                        # Queued behind a long read, the ALTER's lock would block every
                        # writer behind it: give up after 5 s, with the error below.
                        cur.execute("SET LOCAL lock_timeout = '5s'")
                        cur.execute(f"ALTER TABLE {self._table} " + ", ".join(
                            f"ADD COLUMN IF NOT EXISTS {name} {kind}"
                            for name, kind in missing))
                        logger.info("prediction log %s: added columns %s", self.table,
                                    ", ".join(name for name, _ in missing))
                conn.commit()
            except self._pg.Error as exc:
                self._reset_writer(self._lost(conn, exc))
                raise PredictionLogError(f"prediction log: cannot create table {self.table} "
                                         f"in {self.where}: {self._scrub(exc)}") from exc

    # -- writes ----------------------------------------------------------------------
    def _write(self, records: Sequence[PredictionRecord]) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.url} was opened read-only")
        with self._writer_guard:
            for attempt in (1, 2):
                pending = self._not_yet_stored(records)
                if not pending:
                    return
                conn, fresh = self._writer_connection()
                try:
                    self._insert_batch(conn, pending)
                    return
                except self._pg.Error as exc:
                    lost = self._lost(conn, exc)
                    if lost and not fresh and attempt == 1:
                        # The server closed an idle connection (restart, failover,
                        # idle timeout): reconnect and write again at once.
                        logger.warning("prediction log: connection to %s lost (%s); "
                                       "reconnecting", self.where, self._scrub(exc))
                        continue
                    what = "connection lost" if lost else "write failed"
                    raise PredictionLogError(
                        f"prediction log: {what} writing {len(pending)} rows to "
                        f"{self.where}: {self._scrub(exc)}") from exc

    def _insert_batch(self, conn, records: Sequence[PredictionRecord]) -> None:
        batch_id = str(uuid.uuid4())
        rows = []
        for r in records:
            confidence = float(r.confidence)
            stamp = r.timestamp if r.timestamp.tzinfo else r.timestamp.replace(
                tzinfo=timezone.utc)  # naive means UTC, as read_day reads SQLite's
            rows.append((r.timestamp.date().isoformat(), stamp, r.request_id,
                         int(r.row_index), r.model_name, r.model_version, r.prediction,
                         # NULL like SQLite stores NaN, so both read back the same
                         confidence if confidence == confidence else None,
                         orjson.dumps(r.probabilities).decode(),
                         orjson.dumps(r.features).decode(), r.input_flags or None,
                         r.variant or None, _finite_or_none(r.latency_ms), r.error or None,
                         batch_id))
        try:
            with conn.cursor() as cur:
                self._pg.extras.execute_values(cur, self._insert, rows, page_size=1000)
        except BaseException as exc:
            self._reset_writer(self._lost(conn, exc))
            raise
        try:
            self._commit(conn)
        except BaseException as exc:
            lost = self._lost(conn, exc)
            if lost:  # the COMMIT may or may not have landed
                self._uncertain = _Uncertain(batch_id, sorted({row[0] for row in rows}),
                                             {id(r): r for r in records})
            self._reset_writer(lost)
            raise

    def _commit(self, conn) -> None:
        conn.commit()

    def _not_yet_stored(self, records: Sequence[PredictionRecord]
                        ) -> Sequence[PredictionRecord]:
        """`records` without those of an interrupted batch that the database did store
        (looked up once, on the first write after the interruption)."""
        uncertain = self._uncertain
        if uncertain is not None:
            conn, _ = self._writer_connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT EXISTS (SELECT 1 FROM {self._table} WHERE"
                                f" day = ANY(%s::date[]) AND batch_id = %s)",
                                (uncertain.days, uncertain.batch_id))
                    (stored,) = cur.fetchone()
                conn.rollback()
            except self._pg.Error as exc:
                self._reset_writer(self._lost(conn, exc))
                raise PredictionLogError(
                    f"prediction log: cannot tell whether the {len(uncertain.records)} "
                    f"rows of an interrupted commit are stored in {self.where}: "
                    f"{self._scrub(exc)}") from exc
            self._uncertain = None
            if stored:
                logger.warning("prediction log: the %d rows whose commit was interrupted "
                               "are stored; not writing them again", len(uncertain.records))
                self._already_stored.update(uncertain.records)
        if not self._already_stored:
            return records
        pending = []
        for record in records:
            if self._already_stored.pop(id(record), None) is None:
                pending.append(record)
        return pending

    # -- reads -----------------------------------------------------------------------
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of `sql` (none when the table does not exist yet)."""
        with self._reader_guard:
            for attempt in (1, 2):
                fresh = self._reader_conn is None or bool(self._reader_conn.closed)
                if fresh:
                    self._reader_conn = self._connect(autocommit=True)
                conn = self._reader_conn
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql, params)
                        return cur.fetchall()
                except self._pg.errors.UndefinedTable:
                    return []
                except self._pg.DataError:
                    return []  # not a date: no such day (as in SQLite)
                except self._pg.Error as exc:
                    if not self._lost(conn, exc):
                        raise PredictionLogError(f"prediction log: reading {self.where}: "
                                                 f"{self._scrub(exc)}") from exc
                    self._reader_conn = None
                    conn.close()
                    if fresh or attempt == 2:
                        raise PredictionLogError(
                            f"prediction log: connection to {self.where} lost while "
                            f"reading: {self._scrub(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def read_day(self, day: date | str) -> pd.DataFrame:
        try:
            rows = self._query(self._select, (_day(day),))
        except PredictionLogError as exc:
            if not isinstance(exc.__cause__, self._pg.errors.UndefinedColumn):
                raise
            # An old table read without being migrated (read-only): NULL for the
            # columns it lacks.
            present = {name for (name,) in self._query(self._present, (self._table,))}
            added = ", ".join(name if name in present else f"NULL AS {name}"
                              for name, _ in _ADDED)
            rows = self._query(f"SELECT {self._base}, {added} FROM {self._table}"
                               f" WHERE day = %s ORDER BY id", (_day(day),))
        return _frame([(stamp.isoformat(), *rest) for stamp, *rest in rows])

    def days(self) -> list[date]:
        return [day for (day,) in self._query(self._days)]

    def row_count(self, day: date | str) -> int:
        found = self._query(self._count, (_day(day),))
        return int(found[0][0]) if found else 0

    def _close_storage(self, timeout: float = 5.0) -> None:
        """Close both connections. A connection whose lock is still held after `timeout`
        (a write hung on the network: close() has already spilled its rows) is left to
        the exiting process rather than holding shutdown up."""
        for guard, name in ((self._writer_guard, "_writer_conn"),
                            (self._reader_guard, "_reader_conn")):
            if not guard.acquire(timeout=timeout):
                logger.error("prediction log: %s still busy after %.0fs; not waiting to "
                             "close it", name.strip("_"), timeout)
                continue
            try:
                conn = getattr(self, name)
                setattr(self, name, None)
                if conn is not None and not conn.closed:
                    conn.close()
            finally:
                guard.release()
