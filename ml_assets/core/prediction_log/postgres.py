"""The production profile's prediction log: one PostgreSQL table shared by every API
replica and the Dagster processes."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from ml_assets.core.prediction_log import columnar
from ml_assets.core.prediction_log.base import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
)
from ml_assets.core.prediction_log.location import redact_url, resolve_log_location

logger = logging.getLogger("ml_assets.core.prediction_log")

# 48 characters at most: the batch table's index, "<table>_batches_day", stays within
# PostgreSQL's 63.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_IDS_PER_QUERY = 20_000
# Columns the first format's table gained after its first release (NULL when missing).
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

    commit_id: str
    days: list[str]
    records: dict[int, PredictionRecord]  # id -> record (held, so ids stay unique)


class PostgresPredictionLog(PredictionLog):
    """The shared log of the production profile: each commit stores its rows of a day as
    one columnar batch (`<table>_batches`: day DATE, rows, format, the Arrow IPC bytes as
    BYTEA, `commit_id`) and each request's place in it (`<table>_requests`, keyed by
    request id), in one transaction. A commit whose connection breaks during COMMIT is
    looked up by its `commit_id` on reconnect, so the retry neither loses nor
    duplicates it. A `<table>` of the first format (one row per prediction, JSON
    features) is read alongside, its rows first in each day. Writes use one connection
    and reads another (each behind a lock); a broken connection is replaced on next use,
    and a write that finds its idle connection closed by the server reconnects and
    retries at once."""

    def __init__(self, url: str, read_only: bool = False, table: str = "predictions",
                 connect_timeout: float = 10.0, **kwargs):
        """`read_only`: nothing is created or written and nothing connects until the
        first read; a missing table reads as empty. Otherwise the tables and their
        indexes are created if missing (PredictionLogError if the database is
        unreachable). `table`: the name the log's tables start with (48 characters at
        most, optionally schema.table)."""
        kind, libpq_url = resolve_log_location(url)
        if kind != "postgres":
            raise ValueError(f"not a PostgreSQL URL: {redact_url(str(url))!r}")
        if not all(_IDENTIFIER.fullmatch(part) for part in table.split(".", 1)):
            raise ValueError(f"table {table!r}: use letters, digits and _, at most 48 "
                             "(optionally schema.table)")
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
        parts = table.split(".", 1)
        schema = f'"{parts[0]}".' if len(parts) == 2 else ""
        name = parts[-1]
        self._table = f'{schema}"{name}"'  # the first format's, read only
        self._batches = f'{schema}"{name}_batches"'
        self._requests = f'{schema}"{name}_requests"'
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {self._batches} ("
            " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " day DATE NOT NULL,"
            " rows INTEGER NOT NULL,"
            " format SMALLINT NOT NULL,"
            " commit_id UUID NOT NULL,"
            " data BYTEA NOT NULL)",
            f'CREATE INDEX IF NOT EXISTS "{name}_batches_day" ON {self._batches} (day)',
            f"CREATE TABLE IF NOT EXISTS {self._requests} ("
            " request_id TEXT NOT NULL,"
            " batch_id BIGINT NOT NULL,"
            " first_row INTEGER NOT NULL,"
            " rows INTEGER NOT NULL,"
            " PRIMARY KEY (request_id, batch_id, first_row))",
        )
        # The Arrow bytes are stored as they are: PostgreSQL's own compression of large
        # values (pglz) costs the writer more than it saves on float columns.
        self._storage = f"ALTER TABLE {self._batches} ALTER COLUMN data SET STORAGE EXTERNAL"
        self._present = ("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                         " AND attnum > 0 AND NOT attisdropped")
        self._insert_batch_sql = (f"INSERT INTO {self._batches} (day, rows, format, commit_id,"
                              f" data) VALUES (%s, %s, %s, %s, %s) RETURNING id")
        self._insert_requests = (f"INSERT INTO {self._requests} (request_id, batch_id,"
                                 f" first_row, rows) VALUES %s")
        self._base = ("logged_at, request_id, row_index, model_name, model_version,"
                      " prediction, confidence, probabilities::text, features::text")
        self._old_columns = f"{self._base}, input_flags, variant, latency_ms, error"
        # Distinct days by walking an index (one probe per day, not a scan of the table).
        self._days = [(f"WITH RECURSIVE d(day) AS (SELECT min(day) FROM {t}"
                       f" UNION ALL SELECT (SELECT min(day) FROM {t} t"
                       f" WHERE t.day > d.day) FROM d WHERE d.day IS NOT NULL)"
                       f" SELECT day FROM d WHERE day IS NOT NULL")
                      for t in (self._batches, self._table)]
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
                    cur.execute("SELECT to_regclass(%s)", (self._batches,))
                    (existed,) = cur.fetchone()
                    for statement in self._ddl:
                        cur.execute(statement)
                    if existed is None:
                        cur.execute(self._storage)
                conn.commit()
            except self._pg.Error as exc:
                self._reset_writer(self._lost(conn, exc))
                raise PredictionLogError(f"prediction log: cannot create table "
                                         f"{self.table}_batches in {self.where}: "
                                         f"{self._scrub(exc)}") from exc

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
        commit_id = str(uuid.uuid4())
        batches = columnar.encode(records)
        try:
            with conn.cursor() as cur:
                for batch in batches:
                    cur.execute(self._insert_batch_sql, (batch.day, batch.rows, columnar.FORMAT,
                                                     commit_id, memoryview(batch.data)))
                    (batch_id,) = cur.fetchone()
                    self._pg.extras.execute_values(
                        cur, self._insert_requests,
                        [(request_id, batch_id, first, rows)
                         for request_id, first, rows in batch.runs], page_size=1000)
        except BaseException as exc:
            self._reset_writer(self._lost(conn, exc))
            raise
        try:
            self._commit(conn)
        except BaseException as exc:
            lost = self._lost(conn, exc)
            if lost:  # the COMMIT may or may not have landed
                self._uncertain = _Uncertain(commit_id, sorted({b.day for b in batches}),
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
                    cur.execute(f"SELECT EXISTS (SELECT 1 FROM {self._batches} WHERE"
                                f" day = ANY(%s::date[]) AND commit_id = %s)",
                                (uncertain.days, uncertain.commit_id))
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

    @property
    def _named(self) -> str:
        return self.table

    def _old_day_rows(self, day: str) -> list[tuple]:
        return self._old_rows(" WHERE day = %s ORDER BY id", (day,))

    def _old_day_count(self, day: str) -> int:
        found = self._query(f"SELECT COUNT(*) FROM {self._table} WHERE day = %s", (day,))
        return int(found[0][0]) if found else 0

    def _day_total(self, day: str, through: int | None) -> tuple[int, int]:
        bound = " AND id <= %s" if through is not None else ""
        found = self._query(f"SELECT MAX(id), SUM(rows) FROM {self._batches} WHERE day = %s"
                            + bound, (day,) if through is None else (day, through))
        return (int(found[0][0] or 0), int(found[0][1] or 0)) if found else (0, 0)

    def _day_index(self, day: str, after: int, through: int,
                   limit: int) -> list[tuple[int, int]]:
        return self._query(f"SELECT id, rows FROM {self._batches} WHERE day = %s AND id > %s"
                           " AND id <= %s ORDER BY id LIMIT %s", (day, after, through, limit))

    def _day_batches(self, day: str, span: tuple[int, int] | None) -> list[tuple]:
        if span is None:
            return self._query(f"SELECT id, format, data FROM {self._batches}"
                               " WHERE day = %s ORDER BY id", (day,))
        return self._query(f"SELECT id, format, data FROM {self._batches} WHERE day = %s"
                           " AND id BETWEEN %s AND %s ORDER BY id", (day, *span))

    def read_requests(self, request_ids: Iterable[str], features: bool = True,
                      day: str | None = None, through: int | None = None) -> pd.DataFrame:
        ids = sorted({str(i) for i in request_ids})
        chunks = [ids[start:start + _IDS_PER_QUERY]
                  for start in range(0, len(ids), _IDS_PER_QUERY)]
        old_where = " WHERE request_id = ANY(%s)" + (" AND day = %s" if day is not None else "")
        scope = (day,) if day is not None else ()
        batch_where = " WHERE r.request_id = ANY(%s)" + "".join(
            clause for clause, value in ((" AND b.day = %s", day), (" AND b.id <= %s", through))
            if value is not None)
        bounds = tuple(v for v in (day, through) if v is not None)
        old = (row for chunk in chunks  # each query run when the reader gets to it
               for row in self._old_rows(f"{old_where} ORDER BY id", (chunk, *scope),
                                         with_day=True))
        hits = (hit for chunk in chunks for hit in self._query(
            f"SELECT b.id, b.day, b.format, b.data, r.first_row, r.rows"
            f" FROM {self._requests} r JOIN {self._batches} b ON b.id = r.batch_id"
            f"{batch_where}", (chunk, *bounds)))
        return columnar.requests_frame(old, hits, self.table, features)

    def _old_rows(self, where: str, params: tuple, with_day: bool = False) -> list[tuple]:
        """Rows of the first format's table (none when there is no such table), with
        `logged_at` as ISO text; a table lacking later columns reads them as NULL."""
        day = "day, " if with_day else ""
        try:
            rows = self._query(f"SELECT {day}{self._old_columns} FROM {self._table}{where}",
                               params)
        except PredictionLogError as exc:
            if not isinstance(exc.__cause__, self._pg.errors.UndefinedColumn):
                raise
            present = {name for (name,) in self._query(self._present, (self._table,))}
            added = ", ".join(name if name in present else f"NULL AS {name}"
                              for name, _ in _ADDED)
            rows = self._query(f"SELECT {day}{self._base}, {added} FROM {self._table}"
                               f"{where}", params)
        at = 1 if with_day else 0  # logged_at's place
        return [(*row[:at], row[at].isoformat(), *row[at + 1:]) for row in rows]

    def days(self) -> list[date]:
        return sorted({day for query in self._days for (day,) in self._query(query)})

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
