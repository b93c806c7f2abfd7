"""Production rows as evidence (ml_assets/core/data/production_rows.py): scoped to the
lineage that answered them, labels and landing files read one by one, and the held-out
rows `simulate` sends (ml_assets/core/data/held_out.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.data.held_out import held_out_record, unseen_rows
from ml_assets.core.data.production_rows import (
    Lineage,
    labelled_rows,
    read_label_files,
    read_landing_files,
    scope_rows,
)


def corrupt_bytes(seed: int = 3, size: int = 4096) -> bytes:
    """`size` seeded random bytes whose first non-ASCII byte is 0x87 (a continuation
    byte: never valid UTF-8 where a character starts), as the corrupt file of the issue."""
    data = bytearray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8))
    data[:3] = b"ab\x87"  # the first byte that is not ASCII
    return bytes(data)


def _logged(names, versions) -> pd.DataFrame:
    frame = pd.DataFrame({"request_id": [f"r{i}" for i in range(len(names))],
                          "model_name": names, "model_version": versions,
                          "x": np.arange(len(names), dtype=float)})
    frame.attrs["feature_columns"] = ["x"]
    return frame


LINEAGE = Lineage("credit", "credit", frozenset({"2", "3"}),
                  {"1": "trained on dataset 'breast_cancer'"})


def test_rows_of_another_model_or_dataset_never_enter():
    logged = _logged(["credit", "ml_platform_model", "credit", "credit", "credit"],
                     ["2", "1", "1", "3", "9"])
    scoped = scope_rows(logged, LINEAGE)
    assert scoped.rows["request_id"].tolist() == ["r0", "r3"]
    assert scoped.rows.attrs["feature_columns"] == ["x"]
    assert scoped.excluded == {
        "answered by another registered model ('ml_platform_model')": 1,
        "version 1 of 'credit' (trained on dataset 'breast_cancer')": 1,
        "version 9 of 'credit' (not a registered version)": 1}
    assert scoped.excluded_rows == 3
    # A model with no version of this dataset yet: nothing is used.
    assert not len(scope_rows(logged, Lineage("credit", "credit")).rows)
    # Rows that do not say who answered them are not evidence for anyone.
    bare = logged.drop(columns="model_name")
    assert scope_rows(bare, LINEAGE).excluded == {"no model name or version recorded": 5}
    assert "versions: 2, 3" in LINEAGE.describe()


def test_a_corrupt_labels_file_is_named_and_the_others_still_count(tmp_path):
    pd.DataFrame({"request_id": ["a", "b"], "label": ["good", "bad"]}).to_csv(
        tmp_path / "1.csv", index=False)
    (tmp_path / "2.csv").write_bytes(corrupt_bytes())
    pd.DataFrame({"request_id": ["b", "c"], "label": ["good", "bad"]}).to_csv(
        tmp_path / "3.csv", index=False)
    pd.DataFrame({"id": ["d"], "y": ["bad"]}).to_csv(tmp_path / "4.csv", index=False)
    files = read_label_files(sorted(tmp_path.glob("*.csv")))
    assert files.files == 4
    assert dict(zip(files.labels["request_id"], files.labels["label"], strict=True)) == {
        "a": "good", "b": "good", "c": "bad"}  # a later file wins
    corrupt, columns = files.skipped
    assert corrupt.path == str(tmp_path / "2.csv")
    assert "not UTF-8" in corrupt.reason and "0x87" in corrupt.reason
    assert columns.path == str(tmp_path / "4.csv")
    assert "has no request_id and label column" in columns.reason
    assert corrupt.sentence().startswith(str(tmp_path / "2.csv") + ": ")


def test_landing_files_are_read_one_by_one(tmp_path):
    good = pd.DataFrame({"x": [1.0, 2.0], "Status": ["good", "bad"]})
    good.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "b.parquet").write_bytes(corrupt_bytes(seed=5))
    good.drop(columns="Status").to_csv(tmp_path / "c.csv", index=False)  # no target
    good.assign(extra=1).to_csv(tmp_path / "d.csv", index=False)  # other columns
    good[["Status", "x"]].to_csv(tmp_path / "e.csv", index=False)  # same, other order
    frame, skipped = read_landing_files(sorted(tmp_path.iterdir()), "Status")
    assert len(frame) == 4 and list(frame.columns) == ["x", "Status"]
    assert [s.path for s in skipped] == [str(tmp_path / n) for n in
                                         ("b.parquet", "c.csv", "d.csv")]
    assert "Status" in skipped[1].reason and "extra ['extra']" in skipped[2].reason
    empty, none = read_landing_files([], "Status")
    assert empty.empty and none == []


def test_labelled_rows_take_the_label_as_the_target():
    logged = _logged(["credit"] * 3, ["2"] * 3)
    labels = pd.DataFrame({"request_id": ["r2", "r0", "zz"], "label": ["bad", "good", "x"]})
    rows = labelled_rows(logged, labels, ["x", "missing_feature", "Status"], "Status")
    assert list(rows.columns) == ["x", "missing_feature", "Status"]
    assert rows["x"].tolist() == [0.0, 2.0] and rows["Status"].tolist() == ["good", "bad"]
    assert rows["missing_feature"].isna().all()  # a feature the log never had
    assert labelled_rows(logged.iloc[0:0], labels, ["x", "Status"], "Status").empty


def test_the_held_out_record_names_source_rows_only():
    source = pd.DataFrame({"x": np.arange(10.0), "y": list("ababababab")})
    validated_index = pd.RangeIndex(12)  # 10 source rows, then 2 production rows
    test_target = pd.Series(["b", "a", "b", "a"], index=[7, 2, 11, 4])
    record = held_out_record(validated_index, test_target, production_rows=2)
    assert record["positions"] == [2, 4, 7] and record["source_rows"] == 10
    assert record["test_rows"] == 4
    chosen = unseen_rows(source, "y", record)
    assert chosen.rows["x"].tolist() == [2.0, 4.0, 7.0]
    assert "3 held-out rows" in chosen.note
    # Numbers read alike before and after validation (326 in a CSV, 326.0 in the split).
    numbers = source.assign(y=np.arange(10))
    numeric = held_out_record(pd.RangeIndex(10), pd.Series([3.0, 5.0], index=[3, 5]))
    assert unseen_rows(numbers, "y", numeric).rows["x"].tolist() == [3.0, 5.0]


def test_rows_that_cannot_be_told_held_out_are_refused_with_the_reason():
    source = pd.DataFrame({"x": np.arange(10.0), "y": list("ababababab")})
    record = held_out_record(pd.RangeIndex(10), pd.Series(["a", "b"], index=[2, 3]))
    with pytest.raises(ValueError, match="now has 11 rows; the champion was trained when "
                       "it had 10"):
        unseen_rows(pd.concat([source, source.head(1)], ignore_index=True), "y", record)
    with pytest.raises(ValueError, match="rows changed"):
        unseen_rows(source.assign(y=list("bbbbbbbbbb")), "y", record)
    with pytest.raises(ValueError, match="records no held-out rows"):
        unseen_rows(source, "y", None)
    with pytest.raises(ValueError, match="not rows of the validated frame"):
        held_out_record(pd.RangeIndex(3), pd.Series(["a"], index=[5]))
