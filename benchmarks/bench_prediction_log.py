"""Benchmark: the prediction log's columnar batches against the first format (one SQL
row per prediction, features and probabilities as JSON), both behind the same queue,
writer thread and group commit.

    python benchmarks/bench_prediction_log.py [--rounds 3] [--read-rows 1000000] [--small-rows 5000]
        [--dir /var/tmp] [--synchronous FULL] [--postgres postgresql://...] [--json out.json]

Writes: `append(records).result()` round trips (a request's rows queued, committed,
acknowledged) of 1-row requests from 1 and 16 producer threads and of 1,000-row
requests from 1 and 4 threads, for `--seconds` each; rows of the breast-cancer shape
(30 float features, two classes). Reads: `read_day` of a day of `--read-rows` rows
written as 1,000-row requests, and a label join of 1% of that day's requests, their
ids spread over the day (the first format reads the whole day and merges; the columnar
log looks the ids up in its request-id index: `read_requests`), and `read_day` of a quiet day of
`--small-rows` one-row requests each committed alone (one batch per row: the columnar
format's worst case). Formats alternate within each round (first
format, columnar; the order flips every round) so the load of a shared machine hits
both alike; every figure is the median over `--rounds`, and each ratio is of medians
from the same run. SQLite by default (a file under `--dir`, WAL, `--synchronous`);
PostgreSQL instead when `--postgres` names a server (a scratch database is created and
dropped).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_assets.core.prediction_log import (  # noqa: E402
    PostgresPredictionLog,
    PredictionLog,
    PredictionRecord,
    SQLitePredictionLog,
)
from ml_assets_tests.support.first_format_log import (  # noqa: E402
    POSTGRES_DDL,
    SQLITE_DDL,
    first_format_rows,
)

FEATURES = tuple(f"feature {i:02d}" for i in range(30))
DAY = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
SMALL_DAY = DAY + timedelta(days=1)
COLUMNS = ("day, logged_at, request_id, row_index, model_name, model_version, prediction,"
           " confidence, probabilities, features, input_flags, variant, latency_ms, error")


class FirstFormatSQLite(SQLitePredictionLog):
    """The first format's SQLite writer: one row per prediction, JSON text."""

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        if self._conn is not None:
            for statement in SQLITE_DDL:
                self._conn.execute(statement)

    def _write(self, records):
        rows = first_format_rows(records)
        conn = self._conn
        self._locked(conn, "BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT INTO predictions ({COLUMNS}) VALUES "
                             f"({', '.join('?' * 14)})", rows)
            self._locked(conn, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class FirstFormatPostgres(PostgresPredictionLog):
    """The first format's PostgreSQL writer: one row per prediction, JSON columns."""

    def __init__(self, url, **kwargs):
        super().__init__(url, **kwargs)
        with self._writer_guard:
            conn, _ = self._writer_connection()
            with conn.cursor() as cur:
                for statement in POSTGRES_DDL:  # under this log's table name
                    cur.execute(statement.replace("predictions", self.table))
            conn.commit()

    def _insert_batch(self, conn, records):
        batch_id = str(uuid.uuid4())
        rows = [(*row, batch_id) for row in first_format_rows(records)]
        try:
            with conn.cursor() as cur:
                self._pg.extras.execute_values(
                    cur, f"INSERT INTO {self._table} ({COLUMNS}, batch_id) VALUES %s",
                    rows, page_size=1000)
            conn.commit()
        except BaseException as exc:
            self._reset_writer(self._lost(conn, exc))
            raise


def records(request_id: str, rows: int, when: datetime, rng: random.Random
            ) -> list[PredictionRecord]:
    p = rng.random()
    return [PredictionRecord(when, request_id, i, "bench_model", "1", FEATURES,
                             [rng.gauss(10, 3) for _ in FEATURES],
                             "benign" if p > 0.5 else "malignant",
                             {"benign": p, "malignant": 1 - p}, "", "champion", 0.4)
            for i in range(rows)]


def write_rate(log: PredictionLog, rows: int, threads: int, seconds: float) -> float:
    """Rows per second acknowledged by `threads` producers each looping append(rows)
    -> commit for `seconds`."""
    done = [0] * threads
    stop = time.perf_counter() + seconds
    rng = random.Random(0)
    template = records("x", rows, DAY, rng)  # built once: the log's cost, not the rows'

    def produce(t: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            request_id = f"w{t}-{n}"
            batch = [PredictionRecord(r.timestamp, request_id, r.row_index, r.model_name,
                                      r.model_version, r.feature_names, r.feature_values,
                                      r.prediction, r.probabilities, r.input_flags,
                                      r.variant, r.latency_ms) for r in template]
            log.append_many(batch).result(60)
            n += 1
        done[t] = n * rows

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - began)


def fill(log: PredictionLog, rows: int) -> list[str]:
    """`rows` rows on DAY as 1,000-row requests; returns the ids of 1% of them, spread
    over the day (what a label file names)."""
    rng = random.Random(1)
    ids = []
    for n in range(rows // 1000):
        request_id = f"day-{n}"
        ids.append(request_id)
        log.append_many(records(request_id, 1000, DAY + timedelta(seconds=n), rng))
    assert log.flush(timeout=3600)
    return random.Random(2).sample(ids, max(1, len(ids) // 100))


def label_join_whole_day(log: PredictionLog, ids: list[str]) -> int:
    frame = log.read_day(DAY.date())
    return int(frame["request_id"].isin(set(ids)).sum())


def label_join_index(log: PredictionLog, ids: list[str]) -> int:
    return len(log.read_requests(ids))


def timed(fn, *args) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - began, result


def fill_small(log: PredictionLog, rows: int) -> None:
    """`rows` one-row requests on SMALL_DAY, each committed before the next (a quiet
    service: one row per commit, one batch per row)."""
    rng = random.Random(3)
    for n in range(rows):
        log.append_many(records(f"small-{n}", 1, SMALL_DAY, rng)).result(60)


def backend_cases(name: str, make_old, make_new, read_rows: int, small_rows: int,
                  rounds: int, seconds: float) -> dict:
    loads = [("1 row, 1 producer", 1, 1), ("1 row, 16 producers", 1, 16),
             ("1,000 rows, 1 producer", 1000, 1), ("1,000 rows, 4 producers", 1000, 4)]
    results: dict = {"writes": {}, "reads": {}}
    formats = {"first format": make_old, "columnar": make_new}
    samples: dict = {load: {f: [] for f in formats} for load, *_ in loads}
    for round_ in range(rounds):
        order = list(formats) if round_ % 2 == 0 else list(reversed(formats))
        for load, rows, threads in loads:
            for fmt in order:
                log = formats[fmt](f"w{round_}")
                try:
                    samples[load][fmt].append(write_rate(log, rows, threads, seconds))
                finally:
                    log.close()
    for load, by_format in samples.items():
        old, new = (statistics.median(by_format[f]) for f in formats)
        results["writes"][load] = {"first format": old, "columnar": new, "ratio": new / old}
        print(f"{name} write {load}: first {old:,.0f} rows/s, columnar {new:,.0f} rows/s,"
              f" x{new / old:.2f}", flush=True)
    logs = {fmt: formats[fmt]("read") for fmt in formats}
    ids = {}
    for fmt, log in logs.items():
        began = time.perf_counter()
        ids[fmt] = fill(log, read_rows)
        fill_small(log, small_rows)
        print(f"{name} filled {fmt} with {read_rows:,} rows and {small_rows:,} one-row "
              f"commits in {time.perf_counter() - began:.1f}s", flush=True)
    reads = {"read_day": {f: [] for f in formats}, "label join": {f: [] for f in formats},
             f"read_day of {small_rows:,} one-row commits": {f: [] for f in formats}}
    for round_ in range(rounds):
        order = list(formats) if round_ % 2 == 0 else list(reversed(formats))
        for fmt in order:
            seconds_, frame = timed(logs[fmt].read_day, DAY.date())
            assert len(frame) == read_rows
            del frame
            reads["read_day"][fmt].append(seconds_)
            seconds_, frame = timed(logs[fmt].read_day, SMALL_DAY.date())
            assert len(frame) == small_rows
            reads[f"read_day of {small_rows:,} one-row commits"][fmt].append(seconds_)
            join = label_join_whole_day if fmt == "first format" else label_join_index
            seconds_, found = timed(join, logs[fmt], ids[fmt])
            assert found == len(ids[fmt]) * 1000, found
            reads["label join"][fmt].append(seconds_)
    for what, by_format in reads.items():
        old, new = (statistics.median(by_format[f]) for f in formats)
        results["reads"][what] = {"first format": old, "columnar": new, "speedup": old / new}
        print(f"{name} {what}: first {old:.3f}s, columnar {new:.3f}s, x{old / new:.1f}",
              flush=True)
    results["stored bytes"] = {fmt: stored_bytes(log) for fmt, log in logs.items()}
    for log in logs.values():
        log.close()
    return results


def stored_bytes(log: PredictionLog) -> int | None:
    if isinstance(log, SQLitePredictionLog):
        with sqlite3.connect(log.path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return log.path.stat().st_size
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--read-rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=5_000)
    parser.add_argument("--dir", default=None, help="where the SQLite files go")
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--postgres", default="", help="a server URL (a database is "
                        "created on it and dropped)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-log-", dir=args.dir))
    report = {"machine": platform.platform(), "python": platform.python_version(),
              "rounds": args.rounds, "seconds": args.seconds, "read_rows": args.read_rows,
              "synchronous": args.synchronous, "dir": str(workdir)}
    try:
        def sqlite_log(kind):
            def make(tag):
                return kind(workdir / f"{kind.__name__}-{tag}-{uuid.uuid4().hex[:6]}.db",
                            synchronous=args.synchronous, max_queue_rows=200_000)
            return make

        if args.postgres:
            report["postgres"] = postgres_cases(args)
        else:
            report["sqlite"] = backend_cases("sqlite", sqlite_log(FirstFormatSQLite),
                                             sqlite_log(SQLitePredictionLog), args.read_rows,
                                             args.small_rows, args.rounds, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def postgres_cases(args) -> dict:
    import psycopg2

    database = f"bench_log_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{args.postgres.rstrip('/')}/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    url = f"{args.postgres.rstrip('/')}/{database}"
    try:
        def make(kind):
            return lambda tag: kind(url, table=f"t_{tag}_{uuid.uuid4().hex[:6]}",
                                    max_queue_rows=200_000,
                                    spill_path=Path(tempfile.gettempdir()) / "bench-log.db")

        return backend_cases("postgres", make(FirstFormatPostgres),
                             make(PostgresPredictionLog), args.read_rows,
                             args.small_rows, args.rounds, args.seconds)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
