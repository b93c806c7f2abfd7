"""Data sources: the packaged dataset, user files and the synthetic generator."""

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.data.datasets import (
    BREAST_CANCER_TARGET,
    DataSourceError,
    SyntheticSpec,
    load_breast_cancer_frame,
    load_tabular_files,
    make_synthetic,
)


def test_breast_cancer_has_named_columns_and_class_names():
    frame = load_breast_cancer_frame()
    assert frame.shape == (569, 31)
    assert "mean radius" in frame.columns
    assert set(frame[BREAST_CANCER_TARGET]) == {"malignant", "benign"}
    assert (frame[BREAST_CANCER_TARGET] == "malignant").sum() == 212


def test_synthetic_is_seeded_and_shaped():
    spec = SyntheticSpec(n_rows=500, n_numeric=4, n_categorical=2, n_classes=3,
                         missing_fraction=0.1, seed=7)
    first, second = make_synthetic(spec), make_synthetic(spec)
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == ["num_00", "num_01", "num_02", "num_03", "cat_00", "cat_01",
                                   "label"]
    assert set(first["label"]) == {"class_0", "class_1", "class_2"}
    assert first["cat_00"].dropna().isin(spec.category_names).all()
    missing = first.drop(columns="label").isna().to_numpy().mean()
    assert 0.05 < missing < 0.15
    assert first["label"].notna().all()
    other = make_synthetic(SyntheticSpec(n_rows=500, n_numeric=4, seed=8))
    assert not np.allclose(other["num_00"], first["num_00"])


def test_synthetic_shift_moves_half_the_numeric_columns():
    base = make_synthetic(SyntheticSpec(n_rows=5000, n_numeric=4, seed=1))
    shifted = make_synthetic(SyntheticSpec(n_rows=5000, n_numeric=4, seed=1, shift=2.0))
    delta = (shifted.drop(columns="label") - base.drop(columns="label")).mean()
    assert delta["num_00"] == pytest.approx(2.0) and delta["num_01"] == pytest.approx(2.0)
    assert delta["num_02"] == pytest.approx(0.0) and delta["num_03"] == pytest.approx(0.0)


def test_synthetic_rejects_impossible_specs():
    with pytest.raises(DataSourceError, match="n_classes >= 2"):
        make_synthetic(SyntheticSpec(n_classes=1))


def test_files_csv_parquet_and_directory(tmp_path):
    frame = make_synthetic(SyntheticSpec(n_rows=60, n_numeric=2, n_categorical=1, seed=3))
    frame.to_csv(tmp_path / "one.csv", index=False)
    loaded = load_tabular_files(tmp_path / "one.csv", "label")
    pd.testing.assert_frame_equal(loaded, frame, check_dtype=False)
    folder = tmp_path / "drops"
    folder.mkdir()
    frame.iloc[:30].to_parquet(folder / "day1.parquet")
    frame.iloc[30:].to_parquet(folder / "day2.parquet")
    (folder / "notes.txt").write_text("ignored")
    combined = load_tabular_files(folder, "label")
    assert len(combined) == 60
    pd.testing.assert_frame_equal(combined, frame.reset_index(drop=True))


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "absent.csv", "does not exist"),
    (lambda p: (p / "x.txt").write_text("a") and p / "x.txt", "not a .csv or .parquet"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no .csv"),
])
def test_files_errors_name_the_problem(tmp_path, setup, message):
    with pytest.raises(DataSourceError, match=message):
        load_tabular_files(setup(tmp_path), "label")


def test_files_missing_target_and_mismatched_columns(tmp_path):
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataSourceError, match="target column 'label'"):
        load_tabular_files(tmp_path / "a.csv", "label")
    pd.DataFrame({"b": [1, 2]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataSourceError, match="does not have the same columns"):
        load_tabular_files(tmp_path, "a")
