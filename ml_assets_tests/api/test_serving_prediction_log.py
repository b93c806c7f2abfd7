"""The prediction log: durable, readable by day, nothing lost under bursts or failures."""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone

import orjson
import pytest

from ml_assets.core.prediction_log import (
    META_COLUMNS,
    PredictionLogError,
    PredictionLogUnavailable,
    PredictionRecord,
    SQLitePredictionLog,
)

NAMES = ("mean radius", "colour")


def _record(i: int, when: datetime | None = None, request_id: str | None = None,
            names=NAMES) -> PredictionRecord:
    return PredictionRecord(
        timestamp=when or datetime.now(timezone.utc), request_id=request_id or f"req-{i}",
        row_index=0, model_name="m", model_version="3", feature_names=names,
        feature_values=[float(i), None], prediction="benign",
        probabilities={"benign": 0.75, "malignant": 0.25})


def test_append_flush_and_read_day(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db")
    yesterday = datetime(2026, 3, 1, 23, 59, 59, tzinfo=timezone.utc)
    log.append_many([_record(0, yesterday)])
    log.append_many([_record(i, yesterday + timedelta(seconds=2)) for i in range(1, 4)])
    assert log.flush(timeout=10)
    assert log.backlog == 0
    assert log.days() == [date(2026, 3, 1), date(2026, 3, 2)]
    frame = log.read_day(date(2026, 3, 2))
    assert list(frame.columns) == META_COLUMNS + list(NAMES)
    assert frame.attrs["feature_columns"] == list(NAMES)
    assert frame["request_id"].tolist() == ["req-1", "req-2", "req-3"]
    assert frame["mean radius"].tolist() == [1.0, 2.0, 3.0]
    assert frame["colour"].isna().all()
    assert frame["probabilities"][0] == {"benign": 0.75, "malignant": 0.25}
    assert frame["confidence"][0] == 0.75
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert len(log.read_day("2026-03-01")) == 1
    empty = log.read_day(date(2020, 1, 1))
    assert empty.empty and list(empty.columns) == META_COLUMNS
    log.close()


def test_entries_are_durable_after_close(tmp_path):
    path = tmp_path / "log.db"
    log = SQLitePredictionLog(path)
    log.append_many([_record(i) for i in range(100)])
    log.close()  # no flush: close must store what was accepted
    with pytest.raises(RuntimeError, match="closed"):
        log.append_many([_record(0)])
    reopened = SQLitePredictionLog(path)
    today = datetime.now(timezone.utc).date()
    assert reopened.days() == [today]
    assert reopened.read_day(today)["request_id"].tolist() == [f"req-{i}" for i in range(100)]
    reopened.close()


def test_a_burst_beyond_the_queue_waits_for_room_and_loses_nothing(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db", max_queue_rows=50, batch_rows=20)
    threads = [threading.Thread(target=lambda t=t: [
        log.append_many([_record(i, request_id=f"t{t}-{i}-{j}") for j in range(5)])
        for i in range(100)]) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    log.close()
    assert log.producer_waits > 0  # the queue did fill up
    frame = SQLitePredictionLog(tmp_path / "log.db").read_day(datetime.now(timezone.utc).date())
    assert len(frame) == 6 * 100 * 5
    assert frame["request_id"].is_unique


class FlakyLog(SQLitePredictionLog):
    """Storage that fails the first `failures` writes."""

    def __init__(self, path, failures: int, **kwargs):
        self.failures_left = failures
        super().__init__(path, **kwargs)

    def _write(self, records):
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("disk on fire")
        super()._write(records)


class GatedLog(SQLitePredictionLog):
    """Storage whose writes wait for `gate` and are counted (rows per transaction)."""

    def __init__(self, path, **kwargs):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.transactions: list[int] = []
        super().__init__(path, **kwargs)

    def _write(self, records):
        self.entered.set()
        assert self.gate.wait(30)
        super()._write(records)
        self.transactions.append(len(records))


def test_failed_writes_are_retried(tmp_path):
    log = FlakyLog(tmp_path / "log.db", failures=2, retry_seconds=0.01)
    log.append_many([_record(i) for i in range(10)])
    assert log.flush(timeout=10)
    assert log.write_failures == 2
    assert len(log.read_day(datetime.now(timezone.utc).date())) == 10
    log.close()


def test_rows_that_cannot_be_stored_are_spilled_at_close(tmp_path):
    log = FlakyLog(tmp_path / "log.db", failures=10**9, retry_seconds=0.01)
    log.append_many([_record(i) for i in range(7)])
    assert log.close(timeout=0.3) == 0  # nothing lost: spilled
    assert log.spilled_rows == 7 and log.lost_rows == 0
    spilled = list(tmp_path.glob("log.unwritten-*.jsonl"))
    assert len(spilled) == 1
    rows = [orjson.loads(line) for line in spilled[0].read_bytes().splitlines()]
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(7)]
    assert rows[0]["features"] == {"mean radius": 0.0, "colour": None}


def test_feature_named_like_a_meta_column_keeps_its_values(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db")
    log.append_many([_record(1, names=("prediction", "x"))])
    log.close()
    frame = SQLitePredictionLog(tmp_path / "log.db").read_day(
        datetime.now(timezone.utc).date())
    assert frame["prediction"][0] == "benign"
    assert frame["feature.prediction"][0] == 1.0
    assert frame.attrs["feature_columns"] == ["feature.prediction", "x"]


def test_read_only_log_reads_without_creating_or_writing(tmp_path):
    missing = SQLitePredictionLog(tmp_path / "nothing.db", read_only=True)
    assert missing.days() == [] and missing.read_day("2026-01-01").empty
    assert not (tmp_path / "nothing.db").exists()
    writer = SQLitePredictionLog(tmp_path / "log.db")
    writer.append_many([_record(1)])
    writer.flush(timeout=10)
    reader = SQLitePredictionLog(tmp_path / "log.db", read_only=True)
    assert len(reader.read_day(reader.days()[0])) == 1  # read while the writer is open
    with pytest.raises(RuntimeError, match="read-only"):
        reader.append_many([_record(2)])
    reader.close()
    writer.close()


# --- group commit: a future per request, resolved by the commit ---------------------------

def test_concurrent_appends_share_few_transactions(tmp_path):
    log = GatedLog(tmp_path / "log.db")
    first = log.append([_record(0)])
    assert log.entered.wait(10)  # the writer is inside the first transaction
    futures = []

    def produce(t: int) -> None:
        for i in range(25):
            futures.append(log.append([_record(i, request_id=f"t{t}-{i}")]))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(futures) == 200
    assert not first.done() and not any(f.done() for f in futures)  # nothing committed yet
    log.gate.set()
    for future in [first, *futures]:
        assert future.result(timeout=10) is None
    # 201 requests, two transactions: the one in flight and everything queued behind it.
    assert log.transactions == [1, 200] and log.commits == 2
    assert log.backlog == 0
    assert log.row_count(datetime.now(timezone.utc).date()) == 201
    log.close()


def test_a_future_resolves_only_once_its_rows_are_readable(tmp_path):
    log = GatedLog(tmp_path / "log.db")
    log.gate.set()
    reader = SQLitePredictionLog(tmp_path / "log.db", read_only=True)
    today = datetime.now(timezone.utc).date()
    for i in range(20):
        log.append([_record(i, request_id=f"r{i}")]).result(timeout=10)
        assert f"r{i}" in set(reader.read_day(today)["request_id"])  # another connection
    log.close()


def test_batches_never_split_a_request_and_respect_the_cap(tmp_path):
    log = GatedLog(tmp_path / "log.db", batch_rows=10)
    blocker = log.append([_record(0)])
    assert log.entered.wait(10)
    futures = [log.append([_record(i, request_id=f"b{i}-{j}") for j in range(4)])
               for i in range(6)]
    log.gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert log.transactions == [1, 8, 8, 8]  # whole requests, at most 10 rows
    log.close()


def test_a_failing_log_keeps_the_rows_and_refuses_until_it_recovers(tmp_path):
    log = FlakyLog(tmp_path / "log.db", failures=10**9, retry_seconds=0.05)
    waiting = log.append([_record(i) for i in range(3)])
    with pytest.raises(PredictionLogUnavailable, match="disk on fire"):
        waiting.result(timeout=10)  # told at once, not after a timeout
    assert log.backlog == 3  # kept for the retry
    assert "disk on fire" in (log.unavailable_reason() or "")
    with pytest.raises(PredictionLogUnavailable, match="cannot store rows"):
        log.append([_record(9)])  # refused while storage fails: nothing queued
    assert log.backlog == 3
    log.failures_left = 0  # storage is back: the kept rows land
    assert log.flush(timeout=10)
    assert log.unavailable_reason() is None
    log.append([_record(4)]).result(timeout=10)
    assert log.row_count(datetime.now(timezone.utc).date()) == 4
    assert log.write_failures >= 1
    log.close()


def test_a_full_queue_refuses_append_and_drops_offer(tmp_path):
    log = GatedLog(tmp_path / "log.db", max_queue_rows=10)
    inflight = log.append([_record(0)])
    assert log.entered.wait(10)
    queued = log.append([_record(i) for i in range(1, 11)])  # exactly fills the queue
    with pytest.raises(PredictionLogUnavailable, match="queue is full"):
        log.append([_record(11)])
    assert log.offer([_record(12), _record(13)]) is False
    assert log.dropped_rows == 2
    log.gate.set()
    inflight.result(timeout=10)
    queued.result(timeout=10)
    assert log.offer([_record(14)]) is True  # room again
    assert log.flush(timeout=10)
    assert log.row_count(datetime.now(timezone.utc).date()) == 12
    log.close()


def test_a_stalled_write_makes_append_refuse(tmp_path):
    log = GatedLog(tmp_path / "log.db", stall_seconds=0.2)
    log.append([_record(0)])
    assert log.entered.wait(10)
    time.sleep(0.3)
    with pytest.raises(PredictionLogUnavailable, match="running for"):
        log.append([_record(1)])
    assert log.offer([_record(2)])  # fire-and-forget still queues while there is room
    log.gate.set()
    assert log.flush(timeout=10)
    assert log.unavailable_reason() is None
    log.close()


def test_busy_timeout_bounds_a_write_behind_another_connections_lock(tmp_path):
    import sqlite3

    log = SQLitePredictionLog(tmp_path / "log.db", busy_timeout=0.2, retry_seconds=0.05)
    holder = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        future = log.append([_record(0)])
        with pytest.raises(PredictionLogUnavailable, match="locked"):
            future.result(timeout=10)
        assert time.monotonic() - started < 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert log.flush(timeout=10)  # kept and retried once the lock is gone
    assert log.row_count(datetime.now(timezone.utc).date()) == 1
    log.close()


# --- shutdown: spill, fall back, count what is lost ---------------------------------------

def test_spill_falls_back_to_the_temp_dir_then_counts_lost_rows(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    log = FlakyLog(tmp_path / "log.db", failures=10**9, retry_seconds=0.01,
                   spill_path=blocker / "log.db")  # parent is a file: writes fail
    log.append_many([_record(i) for i in range(5)])
    assert log.close(timeout=0.2) == 0
    (spilled,) = fallback.glob("log.unwritten-*.jsonl")
    assert log.spilled_to == [spilled] and log.spilled_rows == 5
    assert len(spilled.read_bytes().splitlines()) == 5

    monkeypatch.setattr(tempfile, "tempdir", str(blocker))  # the fallback fails too
    lost = FlakyLog(tmp_path / "log2.db", failures=10**9, retry_seconds=0.01,
                    spill_path=blocker / "log.db")
    lost.offer([_record(i) for i in range(4)])
    assert lost.close(timeout=0.2) == 4
    assert lost.lost_rows == 4 and lost.spilled_rows == 0


def test_close_refuses_new_rows(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db")
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.append([_record(0)])
    with pytest.raises(RuntimeError, match="closed"):
        log.offer([_record(0)])


def test_an_unopenable_sqlite_file_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PredictionLogError, match=f"cannot open SQLite file {blocker}/log.db"):
        SQLitePredictionLog(blocker / "log.db")


def test_normal_mode_fsyncs_the_wal_in_the_background_and_at_close(tmp_path, monkeypatch):
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    log = SQLitePredictionLog(tmp_path / "log.db", synchronous="NORMAL", sync_interval=0.05)
    log.append([_record(0)]).result(timeout=10)
    deadline = time.monotonic() + 5
    while not log.syncs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.syncs >= 1 and any(p.endswith("log.db-wal") for p in synced)
    idle = log.syncs
    time.sleep(0.2)
    assert log.syncs == idle  # nothing committed since: nothing to sync
    log.append([_record(1)]).result(timeout=10)
    log.close()  # the final fsync covers the last commit
    assert log.syncs == idle + 1
    assert len(SQLitePredictionLog(tmp_path / "log.db", read_only=True).read_day(
        datetime.now(timezone.utc).date())) == 2


def test_full_mode_needs_no_background_sync(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db", synchronous="FULL", sync_interval=0.05)
    log.append([_record(0)]).result(timeout=10)
    time.sleep(0.2)
    assert log._syncer is None and log.syncs == 0
    log.close()
