"""The durable prediction log the monitoring stage reads, one UTC day at a time.

`PredictionLog` owns the buffering: `append_many` puts rows on a bounded
in-memory queue that a background thread writes in batches, so a response
never waits for the disk; when the queue is full the rows are written
synchronously instead of dropped; `flush`/`close` wait until everything
accepted is stored. A backend implements only storage (`_write`, `read_day`,
`days`, `_close_storage`, and `row_count` when it can count cheaply): SQLite (the
embedded default, one file) and PostgreSQL (shared by the API replicas and the
Dagster processes of the production profile). `open_prediction_log` picks one from
a URL or a path.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


class PredictionLogError(RuntimeError):
    """The log's storage cannot be reached or used; the message says where (never with
    a password)."""


class PredictionLog(ABC):
    """Append-only log of predictions, buffered in memory and written in the background."""

    read_only = False

    def __init__(self, max_queue_rows: int = 50_000, batch_rows: int = 2_000,
                 retry_seconds: float = 0.5, spill_path: str | Path | None = None):
        """`spill_path`: where rows that still cannot be stored at close go, as
        `<spill_path minus suffix>.unwritten-<UTC time>.jsonl` (default: beside a file
        log, else ./prediction_log.unwritten-*.jsonl)."""
        self.spill_path = Path(spill_path) if spill_path else None
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

    def row_count(self, day: date | str) -> int:
        """How many predictions `day` holds (backends count without decoding rows)."""
        return len(self.read_day(day))

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

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
        base = self.spill_path or Path(getattr(self, "path", "prediction_log"))
        path = base.with_suffix(
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


# -- PostgreSQL -----------------------------------------------------------------------

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,55}")


def redact_url(url: str) -> str:
    """`url` with its password (in the user part or a password= parameter) as ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    if password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{hostport}")
    return re.sub(r"(?i)\bpassword=[^&]*", "password=***", urlunsplit(parts))


def resolve_log_location(url_or_path: str | Path) -> tuple[str, str | Path]:
    """("postgres", libpq URL) or ("sqlite", path) for a URL or a plain path; ValueError
    (naming the value, password hidden) for anything else."""
    if isinstance(url_or_path, Path):
        return "sqlite", url_or_path
    value = str(url_or_path).strip()
    if not value:
        raise ValueError("empty prediction log location: give a postgresql:// URL, a "
                         "sqlite:/// URL or a file path")
    if "://" not in value:
        return "sqlite", Path(value)
    scheme, _, rest = value.partition("://")
    base, plus, driver = scheme.lower().partition("+")
    if base in _POSTGRES_SCHEMES and (driver or not plus):
        return "postgres", f"postgresql://{rest}"  # libpq knows no "+driver"
    if base == "sqlite" and not plus and rest.startswith("/") and rest.strip("/"):
        return "sqlite", Path(rest[1:])  # SQLAlchemy's form: sqlite:////absolute/path
    raise ValueError(f"unsupported prediction log location {redact_url(value)!r}: use "
                     "postgresql://user:password@host:port/database, sqlite:///path/to/"
                     "log.db or a file path")


def open_prediction_log(url_or_path: str | Path, read_only: bool = False,
                        **kwargs) -> PredictionLog:
    """The prediction log at `url_or_path`: `postgresql://` (also `postgres://`,
    `postgresql+psycopg2://`) opens a `PostgresPredictionLog`; `sqlite:///path` or a
    plain path opens a `SQLitePredictionLog`. `kwargs` go to the backend (queue size,
    batch rows, retry delay, spill path; `table` for PostgreSQL). ValueError names a
    location of any other kind."""
    kind, where = resolve_log_location(url_or_path)
    if kind == "postgres":
        return PostgresPredictionLog(str(where), read_only=read_only, **kwargs)
    return SQLitePredictionLog(where, read_only=read_only, **kwargs)


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
                   "prediction, confidence, probabilities, features")
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
            " batch_id UUID NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {index} ON {self._table} (day)",
        )
        self._insert = f"INSERT INTO {self._table} ({columns}, batch_id) VALUES %s"
        self._select = (f"SELECT logged_at, request_id, row_index, model_name, model_version,"
                        f" prediction, confidence, probabilities::text, features::text"
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
                         orjson.dumps(r.features).decode(), batch_id))
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
        rows = self._query(self._select, (_day(day),))
        return _frame([(stamp.isoformat(), *rest) for stamp, *rest in rows])

    def days(self) -> list[date]:
        return [day for (day,) in self._query(self._days)]

    def row_count(self, day: date | str) -> int:
        found = self._query(self._count, (_day(day),))
        return int(found[0][0]) if found else 0

    def _close_storage(self) -> None:
        for guard, name in ((self._writer_guard, "_writer_conn"),
                            (self._reader_guard, "_reader_conn")):
            with guard:
                conn = getattr(self, name)
                setattr(self, name, None)
                if conn is not None and not conn.closed:
                    conn.close()
