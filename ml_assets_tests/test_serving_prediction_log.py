"""The prediction log: durable, readable by day, nothing lost under bursts or failures."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone

import orjson
import pytest

from serving.prediction_log import META_COLUMNS, PredictionRecord, SQLitePredictionLog

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


def test_burst_overflows_to_synchronous_writes_and_loses_nothing(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db", max_queue_rows=50, batch_rows=20)
    threads = [threading.Thread(target=lambda t=t: [
        log.append_many([_record(i, request_id=f"t{t}-{i}-{j}") for j in range(5)])
        for i in range(100)]) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    log.close()
    assert log.sync_writes > 0  # the queue did fill up
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
    log.close(timeout=0.3)
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
