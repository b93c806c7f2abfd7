"""The prediction log's columnar format: it reads back exactly the frame the first
format (one JSON row per prediction) gave, logs of the first format stay readable
beside it, the request-id index finds a request without decoding whole days, and
damaged or crafted batches are refused by name, in bounded memory."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog, columnar
from ml_assets.core.prediction_log.columnar import CorruptBatch
from ml_assets_tests.support.first_format_log import write_sqlite

DAY = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
NAMES = ("radius", "colour", "count", "flag")
FLOATS = ("radius", "area", "texture")


def _row(request_id: str, i: int = 0, names=NAMES, values=(1.5, "red", 3, True),
         when: datetime = DAY, **fields) -> PredictionRecord:
    base = dict(timestamp=when, request_id=request_id, row_index=i, model_name="m",
                model_version="3", feature_names=names, feature_values=list(values),
                prediction="benign", probabilities={"benign": 0.75, "malignant": 0.25})
    return PredictionRecord(**{**base, **fields})


def _variety() -> list[list[PredictionRecord]]:
    """Requests (one commit each) covering what a feature value and a row can be."""
    later = DAY + timedelta(seconds=1)
    return [
        [_row("plain"), _row("plain", 1, values=(2.0, "blue", 4, False))],
        [_row("missing", values=(None, None, None, None))],
        [_row("ints-then-floats", values=(2, "x", 5, True))],
        [_row("nan-inf", values=(float("nan"), "y", float("inf"), None))],
        [_row("mixed", values=("text", 1, 2.5, "yes"))],  # kinds mixed within a column
        [_row("bool-and-number", values=(True, 1, False, 0))],
        [_row("big-int", values=(2**63 + 5, "z", -(2**62), None))],
        [_row("other-schema", names=("radius", "extra"), values=(9.0, "e"))],
        [_row("meta-named", names=("prediction", "radius"), values=(7, 1.0))],
        [_row("duplicates", names=("radius", "radius", "count"), values=(1.0, 2.0, 3))],
        [_row("ragged", names=NAMES, values=(1.0, "short"))],
        [_row("regressor", prediction="12.5", probabilities={})],
        [_row("canary-failed", prediction="", probabilities={}, variant="canary",
              error="ValueError: boom", latency_ms=3.5)],
        [_row("shadow", variant="shadow", input_flags="colour:unseen_category",
              latency_ms=float("nan"))],
        [_row("empty-variant", variant="")],
        [_row("elsewhere", when=later.astimezone(timezone(timedelta(hours=5))))],
        [_row(f"burst-{i}", values=(float(i), "c", i, i % 2 == 0)) for i in range(50)],
        [_row("floats", names=FLOATS, values=(1.0, None, float("inf")))],  # one block
        [_row("floats-2", names=FLOATS, values=(2.0, float("nan"), 3.0))],
    ]


def _columnar(tmp_path, commits) -> SQLitePredictionLog:
    log = SQLitePredictionLog(tmp_path / "columnar.db")
    for records in commits:
        log.append_many(records).result(10)
    return log


def _first_format(tmp_path, commits) -> SQLitePredictionLog:
    path = tmp_path / "first.db"
    for records in commits:
        write_sqlite(path, records)
    return SQLitePredictionLog(path, read_only=True)


def _kind(value) -> type:
    # A missing value of a text (or mixed) column may read as None where the first
    # format had NaN (a row without the feature) or the reverse: both are missing.
    return type(None) if value is None or value != value else type(value)


def _assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, expected)
    assert got.attrs == expected.attrs
    for column in got.columns:  # the same Python types, value by value
        assert [_kind(v) for v in got[column]] == [_kind(v) for v in expected[column]], column


# pandas warns that it will tell None from NaN in text columns; _assert_same does.
@pytest.mark.filterwarnings("ignore:Mismatched null-like values:FutureWarning")
@pytest.mark.parametrize("grouping", ["commit per request", "one commit"])
def test_reads_back_the_frame_the_first_format_gave(tmp_path, grouping):
    commits = _variety()
    stored = commits if grouping == "commit per request" else [
        [r for records in commits for r in records]]
    new = _columnar(tmp_path, stored)
    old = _first_format(tmp_path, commits)
    assert new.days() == old.days() == [DAY.date()]
    assert new.row_count(DAY.date()) == old.row_count(DAY.date()) == 69
    _assert_same(new.read_day(DAY.date()), old.read_day(DAY.date()))
    meta = new.read_day(DAY.date(), features=False)
    _assert_same(meta, old.read_day(DAY.date(), features=False))
    assert list(meta.columns) == list(columnar.META_COLUMNS)
    new.close()


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_a_day_of_one_kind_reads_the_same(tmp_path, kind):
    extra = {} if kind == "classifier" else {"prediction": "0.25", "probabilities": {}}
    # Float features only: each batch holds them as one block.
    commits = [[_row(f"r{i}", names=FLOATS, values=(float(i), None, i / 3), **extra)]
               for i in range(5)]
    new = _columnar(tmp_path, commits)
    expected = _first_format(tmp_path, commits).read_day(DAY.date())
    got = new.read_day(DAY.date())
    _assert_same(got, expected)
    assert (got["prediction"].dtype == "float64") == (kind == "regressor")
    new.close()


def test_a_first_format_log_is_read_beside_new_batches(tmp_path):
    path = tmp_path / "log.db"
    write_sqlite(path, [_row("old-1"), _row("old-2", when=DAY - timedelta(days=1))])
    with sqlite3.connect(path) as conn:  # as before its later columns existed
        conn.execute("ALTER TABLE predictions DROP COLUMN variant")
    conn.close()
    reader = SQLitePredictionLog(path, read_only=True)
    assert reader.read_day(DAY.date())["variant"].tolist() == ["champion"]
    log = SQLitePredictionLog(path)  # opened for writing: the old table is left as it is
    log.append_many([_row("new-1", names=("radius", "other"), values=(5.0, "o"))]).result(10)
    log.append_many([_row("old-1", 1)]).result(10)  # a retry of an old request
    frame = log.read_day(DAY.date())
    assert frame["request_id"].tolist() == ["old-1", "new-1", "old-1"]
    assert frame.attrs["feature_columns"] == [*NAMES, "other"]
    assert frame["radius"].tolist() == [1.5, 5.0, 1.5]
    assert log.days() == [(DAY - timedelta(days=1)).date(), DAY.date()]
    assert log.row_count(DAY.date()) == 3
    found = log.read_requests(["old-2", "old-1", "absent"])
    assert list(zip(found["request_id"], found["row_index"], strict=True)) == [
        ("old-2", 0), ("old-1", 0), ("old-1", 1)]  # days in order, then log order
    log.close()


def test_read_requests_decodes_only_the_batches_that_hold_them(tmp_path, monkeypatch):
    log = SQLitePredictionLog(tmp_path / "log.db")
    for day in range(3):
        when = DAY + timedelta(days=day)
        for commit in range(4):
            log.append_many([_row(f"d{day}-c{commit}-r{i}", i, when=when)
                             for i in range(3)]).result(10)
    decoded = []
    real = columnar.decode
    monkeypatch.setattr(columnar, "decode", lambda *a: decoded.append(a[1]) or real(*a))
    found = log.read_requests(["d2-c1-r2", "d0-c3-r0", "d2-c1-r0", "nowhere"])
    assert found["request_id"].tolist() == ["d0-c3-r0", "d2-c1-r0", "d2-c1-r2"]
    assert found["row_index"].tolist() == [0, 0, 2]
    assert len(decoded) == 2  # two batches of twelve
    expected = log.read_day((DAY + timedelta(days=2)).date())
    expected = expected[expected["request_id"].isin(["d2-c1-r0", "d2-c1-r2"])]
    pd.testing.assert_frame_equal(found.iloc[1:].reset_index(drop=True),
                                  expected.reset_index(drop=True))
    assert log.read_requests([]).empty
    log.close()


def test_a_naive_timestamp_means_utc(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db")
    log.append_many([_row("naive", when=DAY.replace(tzinfo=None)),
                     _row("aware", when=DAY.astimezone(timezone(timedelta(hours=-3))))]
                    ).result(10)
    assert log.read_day(DAY.date())["timestamp"].tolist() == [pd.Timestamp(DAY)] * 2
    log.close()


def test_a_commit_across_midnight_stores_one_batch_per_day(tmp_path):
    log = SQLitePredictionLog(tmp_path / "log.db")
    midnight = datetime(2026, 3, 2, tzinfo=timezone.utc)
    log.append_many([_row("late", when=midnight - timedelta(microseconds=1)),
                     _row("early", when=midnight)]).result(10)
    assert log.commits == 1
    assert log.read_day("2026-03-01")["request_id"].tolist() == ["late"]
    assert log.read_day("2026-03-02")["request_id"].tolist() == ["early"]
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("SELECT day, rows FROM prediction_batches").fetchall() == [
            ("2026-03-01", 1), ("2026-03-02", 1)]
    log.close()


# --- damaged and crafted batches -------------------------------------------------------

def _stream(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema,
                           options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _good_table() -> pa.Table:
    (batch,) = columnar.encode([_row("a"), _row("b", 1)])
    return pa.ipc.open_stream(batch.data).read_all()


def _crafted() -> dict[str, bytes]:
    good = _good_table()
    meta = good.select(columnar.META_COLUMNS)
    blob = _stream(good)
    huge = pa.table({**{n: meta.column(n) for n in columnar.META_COLUMNS},
                     **{f"f:x{i}": pa.nulls(2) for i in range(3)}})
    return {
        "truncated": blob[:len(blob) // 2],
        "noise": bytes(range(256)) * 4,
        "empty": b"",
        "compressed": _stream(good, compression="zstd"),
        "dictionary": _stream(meta.append_column(
            "f:colour", pa.array(["a", "b"]).dictionary_encode())),
        "wrong meta type": _stream(meta.set_column(2, "row_index", pa.array(["0", "1"]))),
        "unknown column": _stream(meta.append_column("surprise", pa.array([1, 2]))),
        "nested feature": _stream(meta.append_column("f:x", pa.array([[1], [2]]))),
        "two batches": blob[:-8] + blob[len(_stream(good.slice(0, 0))) - 8:],
        "declares too many rows": _declare_rows(_stream(huge), 10**12),
        "unnamed block": _stream(meta.append_column(
            "features", pa.array([[1.0], [2.0]], pa.list_(pa.float64(), 1)))),
        "missing request ids": _stream(good.set_column(
            1, "request_id", pa.nulls(2, pa.string()))),
        "block with missing rows": _stream(meta.append_column(pa.field(
            "features", pa.list_(pa.float64(), 1), metadata={"names": '["x"]'}),
            pa.array([[1.0], None], pa.list_(pa.float64(), 1)))),
    }


def _declare_rows(blob: bytes, rows: int) -> bytes:
    """`blob` whose record batch header claims `rows` rows (every length field)."""
    table = pa.ipc.open_stream(blob).read_all()
    old = table.num_rows.to_bytes(8, "little", signed=True)
    marker = blob.index(b"\xff\xff\xff\xff", 8)  # the record batch message
    head, tail = blob[:marker], blob[marker:]
    return head + tail.replace(old, rows.to_bytes(8, "little", signed=True))


def test_the_float_block_shortcut_stores_what_the_general_path_stores(monkeypatch):
    """Rows of one all-float schema take a shortcut to the block of features (and reuse
    text columns that hold one value); the table must be the one the general path
    writes, infinities missing, NaN missing, several requests and models in turn."""
    rows = [_row(f"r{i}", i % 3, names=FLOATS, values=(float(i), 0.5, float("nan")),
                 model_name=f"m{i % 2}", prediction="benign" if i % 4 else "malignant")
            for i in range(9)]
    rows[4] = _row("inf", names=FLOATS, values=(float("inf"), -float("inf"), 1.0))
    fast = [columnar.decode(b.data, "fast") for b in columnar.encode(rows)]
    fast_one = columnar.decode(columnar.encode(rows[:1])[0].data, "fast")
    monkeypatch.setattr(columnar, "_float_block", lambda records: None)
    monkeypatch.setattr(columnar, "_text", lambda values: pa.array(values, pa.string()))
    general = [columnar.decode(b.data, "general") for b in columnar.encode(rows)]
    assert [t.equals(g) for t, g in zip(fast, general, strict=True)] == [True]
    names = fast[0].schema.field(columnar.BLOCK).metadata[b"names"]
    assert names == b'["radius","area","texture"]'
    assert fast_one.equals(columnar.decode(columnar.encode(rows[:1])[0].data, "general"))
    assert fast[0].column("model_name").to_pylist() == [r.model_name for r in rows]


@pytest.mark.parametrize("kind", list(_crafted()))
def test_a_damaged_or_crafted_batch_is_refused_by_name(tmp_path, kind):
    log = SQLitePredictionLog(tmp_path / "log.db")
    log.append_many([_row("fine")]).result(10)
    with sqlite3.connect(log.path) as conn:
        conn.execute("UPDATE prediction_batches SET data = ?", (_crafted()[kind],))
    conn.close()
    with pytest.raises(CorruptBatch, match=r"batch 1 of 2026-03-01 in .*log\.db"):
        log.read_day(DAY.date())
    with pytest.raises(CorruptBatch, match="batch 1 of 2026-03-01"):
        log.read_requests(["fine"])
    assert log.row_count(DAY.date()) == 1  # counting decodes nothing
    log.close()


def test_a_batch_of_an_unknown_format_is_named():
    (batch,) = columnar.encode([_row("a")])
    with pytest.raises(CorruptBatch, match="batch 7 of 2026-03-01 is in format 9"):
        columnar.decode(batch.data, "batch 7 of 2026-03-01", 9)
    assert columnar.decode(batch.data, "batch 7", columnar.FORMAT).num_rows == 1


def test_decoding_bounds_cells_by_the_bytes_stored():
    table = pa.table({**{n: _good_table().column(n) for n in columnar.META_COLUMNS},
                      **{f"f:x{i}": pa.nulls(2) for i in range(3)}})
    blob = _stream(table)
    assert columnar.decode(blob, "batch 1").num_rows == 2
    budget = columnar.CELLS_PER_BYTE * len(blob) + columnar.CELL_FLOOR
    rows = budget // table.num_columns + 1  # just over what the bytes may declare
    with pytest.raises(CorruptBatch, match=f"declares {rows} rows"):
        columnar.decode(_declare_rows(blob, rows), "batch 1")


def test_text_that_is_not_json_is_refused_by_name(tmp_path):
    """Valid Arrow whose JSON-written text is damaged: a CorruptBatch saying so, never a
    JSONDecodeError from the reader."""
    good = _good_table()
    index = good.schema.get_field_index("probabilities")
    damaged = _stream(good.set_column(index, "probabilities", pa.array(["{", "{"])))
    log = SQLitePredictionLog(tmp_path / "log.db")
    log.append_many([_row("fine")]).result(10)
    with sqlite3.connect(log.path) as conn:
        conn.execute("UPDATE prediction_batches SET data = ?", (damaged,))
    conn.close()
    with pytest.raises(CorruptBatch, match="not JSON"):
        log.read_day(DAY.date())
    log.close()


def test_all_missing_columns_are_bounded_on_their_own():
    """Null-typed columns cost no stored bytes, so the byte budget does not bound them;
    they become object arrays in pandas, so a batch may declare at most NULL_CELLS."""
    good = _good_table()
    meta = {n: good.column(n) for n in columnar.META_COLUMNS}
    padding = pa.array(["x" * 600_000] * 2)  # bytes enough for the byte budget to pass
    wide = _stream(pa.table({**meta, "f:note": padding,
                             **{f"f:x{i}": pa.nulls(2) for i in range(2000)}}))
    assert columnar.decode(wide, "batch 1").num_rows == 2
    rows = columnar.NULL_CELLS // 2000 + 1
    with pytest.raises(CorruptBatch, match="all-missing columns"):
        columnar.decode(_declare_rows(wide, rows), "batch 1")


def test_a_text_column_and_a_json_column_of_one_name_are_two_shapes():
    """A feature stored as plain text in one batch and as JSON text (mixed kinds) in the
    next reads back as each was sent: the schema cache tells the two apart."""
    first = [_row("plain", names=("x",), values=("text",))]
    mixed = [_row("mixed", names=("x",), values=("text",)),
             _row("mixed", 1, names=("x",), values=(1,))]
    for records, expected in ((first, ["text"]), (mixed, ["text", 1])):
        (batch,) = columnar.encode(records)
        assert columnar.frame([columnar.decode(batch.data, "b")])["x"].tolist() == expected
