"""A prediction-log day read a segment at a time (`day_mark`, `read_segments`): the
segments joined are read_day's frame, each segment is whole commits of about the asked
size, a commit after the mark is not read, and the mark's row count says when the log
below it changed. The same checks run on PostgreSQL (production/test_prediction_log_postgres)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from ml_assets.core.prediction_log import PredictionLog, PredictionRecord, SQLitePredictionLog
from ml_assets.core.prediction_log.columnar import concat_frames

DAY = datetime(2026, 5, 4, 10, tzinfo=timezone.utc)
NAMES = ("mean radius", "texture", "island")


def _records(start: int, count: int, when: datetime = DAY) -> list[PredictionRecord]:
    """`count` rows: a float, an int then a float (typed per commit), a text feature."""
    return [PredictionRecord(
        timestamp=when + timedelta(seconds=i), request_id=f"req-{i}", row_index=0,
        model_name="m", model_version="2", feature_names=NAMES,
        feature_values=[i / 7, i if i % 2 else i + 0.5, "Biscoe" if i % 3 else None],
        prediction="benign" if i % 4 else "malignant",
        probabilities={"benign": 0.8, "malignant": 0.2} if i % 4 else
        {"benign": 0.3, "malignant": 0.7}) for i in range(start, start + count)]


def write_commits(log: PredictionLog, sizes: list[int]) -> int:
    """One commit per size, in order (request ids numbered across them); the rows."""
    start = 0
    for size in sizes:
        log.append_many(_records(start, size)).result(30)
        start += size
    log.append_many(_records(10_000, 3, DAY + timedelta(days=1))).result(30)  # next day
    return start


def check_segments(writer: PredictionLog, reader: PredictionLog) -> None:
    """The checks of this module on one backend (`writer` appends, `reader` reads)."""
    day = DAY.date().isoformat()
    assert reader.day_mark(day).rows == 0 and list(reader.read_segments(day, 0)) == []
    rows = write_commits(writer, [40, 25, 60, 10, 33, 50])
    mark = reader.day_mark(day)
    assert mark.rows == rows == reader.row_count(day) == 218
    whole = reader.read_day(day)
    for size in (1, 64, 100, 10_000):
        segments = list(reader.read_segments(day, mark.through, segment_rows=size))
        # whole commits, each segment closed at the first commit reaching the size
        lengths = [len(s) for s in segments]
        assert sum(lengths) == rows
        if size == 1:
            assert lengths == [40, 25, 60, 10, 33, 50]
        if size == 64:
            assert lengths == [65, 70, 83]
        if size == 10_000:
            assert lengths == [rows]
        pd.testing.assert_frame_equal(concat_frames(segments), whole)
        assert all(list(s.attrs["feature_columns"]) == list(NAMES) for s in segments)
    # a commit after the mark is not read, and the mark's rows still count what was read
    writer.append_many(_records(500, 7)).result(30)
    again = list(reader.read_segments(day, mark.through, segment_rows=64))
    assert sum(len(s) for s in again) == rows
    assert reader.day_mark(day, mark.through).rows == rows
    assert reader.day_mark(day).rows == rows + 7
    # by request id, within the day and the mark
    ids = ["req-3", "req-501", "req-10000"]
    assert set(reader.read_requests(ids)["request_id"]) == set(ids)
    assert list(reader.read_requests(ids, day=day, through=mark.through)["request_id"]) == [
        "req-3"]
    assert set(reader.read_requests(ids, day=day)["request_id"]) == {"req-3", "req-501"}


def test_segments_of_a_sqlite_day(tmp_path):
    path = tmp_path / "log.db"
    with (SQLitePredictionLog(path) as writer,
          SQLitePredictionLog(path, read_only=True) as reader):
        check_segments(writer, reader)


def test_a_batch_lost_below_the_mark_changes_its_count_and_is_never_silently_skipped(
        tmp_path):
    path = tmp_path / "log.db"
    with SQLitePredictionLog(path) as writer:
        write_commits(writer, [30, 30, 30])
    reader = SQLitePredictionLog(path, read_only=True)
    day = DAY.date().isoformat()
    mark = reader.day_mark(day)
    segments = reader.read_segments(day, mark.through, segment_rows=30)
    first = next(segments)
    with sqlite3.connect(path) as conn:  # the last batch of the day goes while being read
        conn.execute("DELETE FROM prediction_batches WHERE id = ?", (mark.through,))
    assert len(first) == 30
    with pytest.raises(Exception, match="went missing while being read"):
        list(segments)
    assert reader.day_mark(day, mark.through).rows == mark.rows - 30


def test_a_batch_committed_late_inside_a_segments_span_is_not_read(tmp_path):
    """On PostgreSQL an identity id is taken before its commit lands: a batch the index
    did not list (committed after it was read) may lie between two listed ones. The
    segment reads the listed batches only, and its rows are what the index counted."""
    path = tmp_path / "log.db"
    with SQLitePredictionLog(path) as writer:
        write_commits(writer, [40, 25, 60, 10, 33, 50])
    day = DAY.date().isoformat()

    class LateCommit(SQLitePredictionLog):
        """The index as read before the fourth batch (10 rows) committed."""

        def _day_index(self, day, after, through, limit):
            listed = super()._day_index(day, after, through, limit)
            return [entry for entry in listed if entry[1] != 10]

    reader = LateCommit(path, read_only=True)
    mark = reader.day_mark(day)
    segments = list(reader.read_segments(day, mark.through, segment_rows=10_000))
    assert [len(s) for s in segments] == [208]
    assert "req-125" not in set(segments[0]["request_id"])  # the fourth batch's first row
    assert mark.rows == 218  # so a reader comparing counts sees the difference


def test_the_index_is_read_a_page_at_a_time(tmp_path, monkeypatch):
    """A day of many small commits: the index is paged, the segments are the same."""
    from ml_assets.core.prediction_log import base

    path = tmp_path / "log.db"
    with SQLitePredictionLog(path) as writer:
        write_commits(writer, [3] * 25)
    day = DAY.date().isoformat()
    reader = SQLitePredictionLog(path, read_only=True)
    mark = reader.day_mark(day)
    whole = [len(s) for s in reader.read_segments(day, mark.through, segment_rows=10)]
    monkeypatch.setattr(base, "INDEX_PAGE", 4)
    pages = []
    original = SQLitePredictionLog._day_index

    def counted(self, *args):
        pages.append(args)
        return original(self, *args)

    monkeypatch.setattr(SQLitePredictionLog, "_day_index", counted)
    paged = list(reader.read_segments(day, mark.through, segment_rows=10))
    assert [len(s) for s in paged] == whole == [12] * 6 + [3]
    assert len(pages) == 7 and all(limit == 4 for *_, limit in pages)
    pd.testing.assert_frame_equal(concat_frames(paged), reader.read_day(day))
