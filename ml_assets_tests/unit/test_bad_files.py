"""A clear word on every bad file: what is wrong, where, the one step to fix it, and no
schema file left behind where none should be."""

from importlib.resources import files

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.data.datasets import DataSourceError, load_tabular_files
from ml_assets.core.data.schema_inference import SchemaInferenceError
from ml_assets.core.data.schemas import SchemaStore, validate_frame
from ml_assets.resources import DataSourceResource

PENGUINS = files("palmerpenguins") / "data" / "penguins.csv"


def _source(tmp_path, path, target="y"):
    return DataSourceResource(kind="files", path=str(path), target=target,
                              schema_dir=str(tmp_path / "schemas"))


def _infer(tmp_path, path, target="y"):
    """Load and infer through the resource, as the graph does."""
    source = _source(tmp_path, path, target)
    return source.schema_for(source.load())


def _no_schema(tmp_path):
    return not (tmp_path / "schemas").exists() or not any((tmp_path / "schemas").rglob("*.yaml"))


def _frame(n=40, **extra):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=n), "y": ["a", "b"] * (n // 2), **extra})


def test_empty_file(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"")
    with pytest.raises(DataSourceError, match=r"d.csv is empty \(0 bytes\): write a header"):
        _infer(tmp_path, tmp_path / "d.csv")
    assert _no_schema(tmp_path)


def test_header_only_file(tmp_path):
    (tmp_path / "d.csv").write_text("species,island,bill_length_mm\n")
    with pytest.raises(DataSourceError, match="has a header but 0 data rows: add rows"):
        _infer(tmp_path, tmp_path / "d.csv", "species")
    assert _no_schema(tmp_path)


def test_zero_rows_never_give_a_schema():
    from ml_assets.core.data.schema_inference import infer_schema

    with pytest.raises(SchemaInferenceError, match="has 0 data rows"):
        infer_schema(_frame().head(0), "y")


def test_all_null_target(tmp_path):
    _frame(y=[None] * 40).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SchemaInferenceError, match="target column 'y' is empty in all 40 rows"):
        _infer(tmp_path, tmp_path / "d.csv")
    assert _no_schema(tmp_path)


def test_single_class_target(tmp_path):
    _frame(y=["a"] * 40).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SchemaInferenceError,
                       match=r"has a single class \('a' in all 40 rows .*add rows of another"):
        _infer(tmp_path, tmp_path / "d.csv")
    assert _no_schema(tmp_path)


def test_unknown_target_lists_columns_and_suggests(tmp_path):
    with pytest.raises(DataSourceError, match=r"target column 'speceis' is not in .*"
                       r"'island'.*Did you mean 'species'\?"):
        load_tabular_files(PENGUINS, "speceis")


def test_no_usable_feature(tmp_path):
    pd.DataFrame({"id": range(40), "y": ["a", "b"] * 20}).to_csv(tmp_path / "d.csv",
                                                                 index=False)
    with pytest.raises(SchemaInferenceError, match=r"no usable feature.*'id' \(identifier\)"):
        _infer(tmp_path, tmp_path / "d.csv")
    assert _no_schema(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"PAR1\x00\x01garbage", "could not read .*d.parquet as Parquet"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "is not a CSV text file"),
])
def test_unreadable_files(tmp_path, content, message):
    name = "d.parquet" if content.startswith(b"PAR1") else "d.csv"
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataSourceError, match=message):
        _infer(tmp_path, tmp_path / name)
    assert _no_schema(tmp_path)


def test_not_a_table_file(tmp_path):
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    with pytest.raises(DataSourceError, match="is not a .csv or .parquet file"):
        load_tabular_files(tmp_path / "d.xlsx", "y")


def test_mixed_types_name_column_rows_values_and_fix(tmp_path):
    frame = _frame()
    frame["x"] = frame["x"].round(3).astype(object)
    frame.loc[[4, 17], "x"] = ["oops", "twelve"]
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SchemaInferenceError, match=(
            r"column 'x' holds numbers except for 2 value\(s\) that are not numbers, in data "
            r"row\(s\) 5, 18 .*'oops', 'twelve'\. Fix those values")):
        _infer(tmp_path, tmp_path / "d.csv")
    assert _no_schema(tmp_path)


def test_semicolon_decimal_comma_csv(tmp_path):
    (tmp_path / "d.csv").write_text("x;z;y\n" + "".join(
        f"{i},5;{i % 3};{'ab'[i % 2]}\n" for i in range(40)), encoding="latin-1")
    frame = load_tabular_files(tmp_path / "d.csv", "y")
    assert list(frame.columns) == ["x", "z", "y"] and frame["x"].iloc[1] == 1.5


def test_tab_override_and_latin1(tmp_path):
    (tmp_path / "d.csv").write_bytes("x\tnom\ty\n1\tcafé\ta\n2\tthé\tb\n".encode("latin-1"))
    from ml_assets.core.data.datasets import CsvOptions

    frame = load_tabular_files(tmp_path / "d.csv", "y", CsvOptions(delimiter="\\t"))
    assert list(frame["nom"]) == ["café", "thé"]


def test_directory_columns_matched_by_name_or_named(tmp_path):
    frame = _frame()
    frame.head(20).to_csv(tmp_path / "a.csv", index=False)
    frame.tail(20)[["y", "x"]].to_csv(tmp_path / "b.csv", index=False)
    loaded = load_tabular_files(tmp_path, "y")
    assert list(loaded.columns) == ["x", "y"] and len(loaded) == 40
    frame.tail(20).assign(z=1).drop(columns="x").to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataSourceError, match=r"b.csv does not have the same columns as .*a.csv "
                       r"\(missing 'x'; extra 'z'\)"):
        load_tabular_files(tmp_path, "y")


@pytest.fixture
def penguins_v1(tmp_path):
    frame = pd.read_csv(PENGUINS)
    path = tmp_path / "penguins.csv"
    frame.to_csv(path, index=False)
    schema, origin = _infer(tmp_path, path, "species")
    return frame, schema, tmp_path / "schemas" / "penguins" / "v1.yaml"


def test_column_added_since_the_schema(penguins_v1):
    frame, schema, v1 = penguins_v1
    _, report = validate_frame(frame.assign(colour="blue"), schema, schema_file=v1)
    assert not report.passed
    assert (f"column 'colour' is in the data but not in schema v1 ({v1}): copy v1.yaml to "
            "v2.yaml and add column 'colour', or drop it from the data.") in report.message


def test_column_removed_since_the_schema(penguins_v1):
    frame, schema, v1 = penguins_v1
    _, report = validate_frame(frame.drop(columns="year"), schema, schema_file=v1)
    assert (f"column 'year' is in schema v1 ({v1}) but not in the data: copy v1.yaml to "
            "v2.yaml and remove column 'year', or add it back to the data.") in report.message


def test_unseen_category_names_rows_and_fix(penguins_v1):
    frame, schema, v1 = penguins_v1
    frame = frame.copy()
    frame.loc[2, "island"] = "Atlantis"
    _, report = validate_frame(frame, schema, schema_file=v1)
    assert "column 'island' has 1 value(s) outside the allowed values" in report.message
    assert "data rows 3 ('Atlantis')" in report.message and "isin list" in report.message


def test_datetime_parquet_validates_against_its_own_schema(tmp_path):
    frame = _frame(when=pd.date_range("2024-01-01", periods=40, freq="D", tz="Europe/Paris"))
    frame.to_parquet(tmp_path / "d.parquet")
    schema, origin = _infer(tmp_path, tmp_path / "d.parquet")
    assert str(schema.columns["when"].dtype) == "datetime64[ns, Europe/Paris]"
    assert schema.columns["when"].metadata["role"] == "datetime"
    # The second run reads the file back and the same data passes.
    latest = SchemaStore(tmp_path / "schemas", "d").latest()
    assert latest is not None
    assert validate_frame(frame, latest[1])[1].passed


def test_roles_ids_constants_free_text_and_dates():
    from ml_assets.core.data.schema_inference import infer_schema

    n = 200
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "Unnamed: 0": range(n), "customer_id": [f"C{i:04d}" for i in range(n)],
        "order": rng.permutation(n), "code": [f"k{i}" for i in rng.permutation(n)],
        "price": rng.normal(size=n), "country": rng.choice(["fr", "de", None], n),
        "flag": rng.choice([True, False], n), "empty": [None] * n, "same": ["v"] * n,
        "comment": [f"the parcel {i} came late again" for i in range(n)],
        "y": rng.choice(["a", "b"], n)})
    schema = infer_schema(frame, "y")
    roles = {c: (col.metadata or {}).get("role", "feature")
             for c, col in schema.columns.items()}
    assert roles == {"Unnamed: 0": "identifier", "customer_id": "identifier",
                     "order": "identifier", "code": "identifier", "price": "feature",
                     "country": "feature", "flag": "feature", "empty": "constant",
                     "same": "constant", "comment": "free_text", "y": "feature"}
    assert str(schema.columns["order"].dtype) == "int64"
    assert str(schema.columns["flag"].dtype) == "bool"
    assert all(col.metadata["note"] for c, col in schema.columns.items()
               if roles[c] != "feature" and c != "y")
