"""Shard planning for batch scoring (ml_assets/core/batch/shards.py): row groups gathered
up to the shard size, CSV files whole, request-id offsets, a plan id that names the
input, and the refusals (empty or unreadable Parquet, a file changed after planning, a
manifest naming a file outside its day)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.core.batch.scoring import BatchInputError, CheckOutcome
from ml_assets.core.batch.shard_scoring import merge_outcomes
from ml_assets.core.batch.shards import (
    MANIFEST,
    MANIFEST_FORMAT,
    _row_group_ranges,
    check_unchanged,
    manifest_parts,
    plan_shards,
    read_day,
    write_json_atomically,
)


def _parquet(path: Path, rows: int, group: int) -> Path:
    pq.write_table(pa.table({"x": list(range(rows))}), path, row_group_size=group)
    return path


def _plan(files, shard_rows=100):
    return plan_shards(files, day="2026-11-20", model_name="m", model_version="3",
                       scored_at="2026-11-20T00:00:00+00:00", shard_rows=shard_rows)


@pytest.mark.parametrize(("sizes", "limit", "expected"), [
    ([50] * 6, 100, [(0, 2), (2, 4), (4, 6)]),
    ([50] * 5, 100, [(0, 2), (2, 4), (4, 5)]),
    ([30, 80, 10, 10], 100, [(0, 1), (1, 4)]),
    ([250, 10], 100, [(0, 1), (1, 2)]),  # a row group larger than a shard: alone
    ([10] * 3, 1_000, [(0, 3)]),
])
def test_row_groups_are_gathered_up_to_the_shard_size(sizes, limit, expected):
    assert _row_group_ranges(sizes, limit) == expected


def test_a_day_is_planned_file_by_file(tmp_path):
    big = _parquet(tmp_path / "a.parquet", 250, 50)
    pd.DataFrame({"x": [1, 2]}).to_csv(tmp_path / "b.csv", index=False)
    plan = _plan([big, tmp_path / "b.csv"])
    assert [(s.file_name, s.row_groups, s.first_row, s.rows) for s in plan.shards] == [
        ("a.parquet", (0, 2), 0, 100), ("a.parquet", (2, 4), 100, 100),
        ("a.parquet", (4, 5), 200, 50), ("b.csv", None, 0, None)]
    assert [s.name for s in plan.shards] == [f"part-0000{i}" for i in range(4)]
    assert plan.planned_rows is None  # a CSV file's rows are counted when it is read
    assert _plan([big]).planned_rows == 250
    assert plan.part_path(tmp_path, plan.shards[1]) == (
        tmp_path / "parts" / plan.plan_id / "part-00001.parquet")


def test_the_plan_id_names_the_input_model_and_shard_size(tmp_path):
    file = _parquet(tmp_path / "a.parquet", 120, 50)
    first = _plan([file])
    assert _plan([file]).plan_id == first.plan_id  # a re-run writes the same parts
    assert _plan([file], shard_rows=50).plan_id != first.plan_id
    assert plan_shards([file], day="2026-11-20", model_name="m", model_version="4",
                       scored_at="", shard_rows=100).plan_id != first.plan_id
    check_unchanged(first.shards[0])
    _parquet(file, 121, 50)
    os.utime(file, ns=(1, 1))
    assert _plan([file]).plan_id != first.plan_id
    with pytest.raises(BatchInputError, match="changed after the day was planned"):
        check_unchanged(first.shards[0])
    file.unlink()
    with pytest.raises(BatchInputError, match="was removed after the day was planned"):
        check_unchanged(first.shards[0])


def test_unusable_parquet_files_are_refused_when_planning(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"x": pa.array([], pa.int64())}), empty)
    with pytest.raises(BatchInputError, match="0 data rows"):
        _plan([empty])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00garbage" * 10)
    with pytest.raises(BatchInputError, match="could not read .* as Parquet") as refused:
        _plan([broken])
    assert refused.value.file == "broken.parquet"
    with pytest.raises(ValueError, match="shard_rows must be >= 1"):
        _plan([broken], shard_rows=0)


def test_a_manifest_cannot_name_a_file_outside_its_day(tmp_path):
    day = tmp_path / "2026-11-20"
    day.mkdir()
    assert manifest_parts(day, {"parts": [{"path": "parts/p/part-00000.parquet"}]}) == [
        (day / "parts/p/part-00000.parquet").resolve()]
    with pytest.raises(ValueError, match="outside the day"):
        manifest_parts(day, {"parts": [{"path": "../2026-11-21/parts/p/x.parquet"}]})


def test_check_outcomes_of_shards_merge_into_the_day_s():
    ok = CheckOutcome("probabilities_valid", True, "fine", {"rows_outside_unit_interval": 0,
                                                             "max_sum_error": 1e-9})
    bad = CheckOutcome("probabilities_valid", False, "2 rows outside",
                       {"rows_outside_unit_interval": 2, "max_sum_error": 1e-3})
    (merged,) = merge_outcomes([[ok], [bad], [ok]])
    assert not merged.passed and merged.description == "2 rows outside"
    assert merged.metadata == {"rows_outside_unit_interval": 2, "max_sum_error": 1e-3}
    assert merge_outcomes([[ok], [ok]])[0].passed


def test_output_rows_from_arrow_write_a_nan_as_pandas_does(tmp_path):
    """A nullable float feature's NaN, written from a record batch, is a null as
    `Table.from_pandas` makes it; request ids count on from the shard's first row."""
    import numpy as np

    from ml_assets.core.batch.shard_scoring import _output_table

    plan = plan_shards([_parquet(tmp_path / "a.parquet", 4, 2)], day="2026-11-20",
                       model_name="m", model_version="3", scored_at="2026-11-20T00:00:00Z",
                       shard_rows=2)
    batch = pa.RecordBatch.from_pydict({"f": pa.array([1.0, np.nan], pa.float64())})
    outputs = {"prediction": np.array(["a", "b"]), "proba_a": np.array([0.9, 0.2])}
    scored_at = pd.Timestamp(plan.scored_at)
    from_arrow = _output_table(batch, outputs, 2, plan, plan.shards[1], scored_at)
    from_pandas = _output_table(pd.DataFrame({"f": [1.0, np.nan]}), outputs, 2, plan,
                                plan.shards[1], scored_at)
    assert from_arrow.column("f").null_count == 1
    assert from_arrow.equals(from_pandas.replace_schema_metadata(None))
    assert from_arrow.column("request_id").to_pylist() == ["batch-2026-11-20-a-3",
                                                          "batch-2026-11-20-a-4"]


def _day(tmp_path: Path, parts: list[pd.DataFrame], features: list[str]) -> Path:
    """A scored day by hand: the parts as Parquet files without pandas metadata (as
    score_shard writes them) and a manifest naming them."""
    day_dir = tmp_path / "2026-11-20"
    (day_dir / "parts" / "p").mkdir(parents=True)
    entries = []
    for i, part in enumerate(parts):
        path = day_dir / "parts" / "p" / f"part-{i:05d}.parquet"
        table = pa.Table.from_pandas(part, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), path)
        entries.append({"path": f"parts/p/{path.name}", "rows": len(part)})
    write_json_atomically({"format": MANIFEST_FORMAT, "day": "2026-11-20", "parts": entries,
                           "feature_columns": features, "rows": sum(map(len, parts))},
                          day_dir / MANIFEST)
    return day_dir


def _as_pandas_concatenates(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """What the parts give read one by one and concatenated by pandas (the old reader)."""
    return pd.concat([pa.Table.from_pandas(p, preserve_index=False)
                      .replace_schema_metadata(None).to_pandas() for p in parts],
                     ignore_index=True)


def test_read_day_gives_the_parts_rows_in_order_with_the_columns_picked(tmp_path,
                                                                         monkeypatch):
    """Parts of one schema are read as one Arrow table (pandas never concatenates them)
    and give what pandas concatenating the parts gives: integers with a gap in one part,
    text with nulls, a categorical whose parts' categories differ (text, as pandas
    gives). Parts whose types differ fall back to pandas, which upcasts. `columns` picks
    from the parts' names with the manifest's feature columns; a part lacking a picked
    column is a ValueError naming it; a day without a manifest is an empty frame."""
    import ml_assets.core.batch.shards as shards

    a = pd.DataFrame({"x": [1.5, 2.5], "n": pd.array([1, None], dtype="Int64"),
                      "text": ["a", None], "kind": pd.Categorical(["p", "q"]),
                      "request_id": ["r1", "r2"]})
    b = pd.DataFrame({"x": [3.5, float("nan")], "n": pd.array([3, 4], dtype="Int64"),
                      "text": ["c", "d"], "kind": pd.Categorical(["q", "r"]),
                      "request_id": ["r3", "r4"]})
    features = ["x", "n", "text", "kind"]
    concatenations = []
    real_concat = pd.concat

    def counting(*args, **kwargs):
        concatenations.append(1)
        return real_concat(*args, **kwargs)

    expected = _as_pandas_concatenates([a, b])
    assert expected["kind"].dtype == object  # pandas: categories that differ give text
    monkeypatch.setattr(shards.pd, "concat", counting)
    same = read_day(_day(tmp_path / "same", [a, b], features))
    assert not concatenations  # one Arrow table
    pd.testing.assert_frame_equal(same, expected)
    assert same.attrs["feature_columns"] == features
    c = b.assign(n=[3.5, float("nan")])  # another type in this part
    mixed = read_day(_day(tmp_path / "mixed", [a, c], features))
    assert concatenations  # the fallback
    pd.testing.assert_frame_equal(mixed, _as_pandas_concatenates([a, c]))
    assert mixed["n"].dtype == float and mixed["n"].isna().sum() == 2
    seen = []

    def pick(names, features):
        seen.append((names, features))
        return ["request_id", *features[:1], "request_id"]

    picked = read_day(_day(tmp_path / "picked", [a, b], features), columns=pick)
    assert seen == [(["x", "n", "text", "kind", "request_id"], features)]
    pd.testing.assert_frame_equal(picked, expected[["request_id", "x"]])
    with pytest.raises(ValueError, match="part-00000.parquet lacks the column.s. gone"):
        read_day(_day(tmp_path / "lacking", [a, b], features),
                 columns=lambda names, features: ["x", "gone"])
    assert read_day(tmp_path / "nothing").empty
