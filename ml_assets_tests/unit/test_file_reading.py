"""Typed reading of user files: Parquet dates and decimals, 8-bit CSV encodings."""

import datetime
import decimal

import pyarrow as pa
import pyarrow.parquet as pq

from ml_assets.core.data.datasets import load_tabular_files
from ml_assets.core.data.schema_inference import checked_schema


def test_parquet_date32_is_a_datetime_and_decimal_a_number(tmp_path):
    days = [datetime.date(2024, 1, 1) + datetime.timedelta(days=i) for i in range(30)]
    table = pa.table({
        "day": pa.array(days, pa.date32()),
        "price": pa.array([decimal.Decimal(f"{i % 7}.25") for i in range(30)],
                          pa.decimal128(10, 2)),
        "y": ["a", "b", "c"] * 10})
    pq.write_table(table, tmp_path / "t.parquet")
    frame = load_tabular_files(tmp_path / "t.parquet", "y")
    assert str(frame["day"].dtype) == "datetime64[ns]"
    assert str(frame["price"].dtype) == "float64" and frame["price"].iloc[1] == 1.25
    schema = checked_schema(frame, "y")
    assert schema.columns["day"].metadata["role"] == "datetime"  # never a feature
    assert "role" not in (schema.columns["price"].metadata or {})


def test_a_windows_1252_csv_keeps_its_accents(tmp_path):
    path = tmp_path / "cities.csv"
    path.write_bytes("city,y\nGenève,a\nZürich,b\nSão Paulo,a\n".encode("cp1252"))
    assert load_tabular_files(path, "y")["city"].tolist() == ["Genève", "Zürich", "São Paulo"]


def test_a_schema_with_yaml_aliases_or_unknown_metadata_is_refused():
    import pytest

    from ml_assets.core.data.schemas import schema_from_yaml

    levels = "\n".join(f"    a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]"
                       for i in range(1, 8))
    bomb = ("columns:\n  x:\n    dtype: float64\n    metadata:\n      role: identifier\n"
            "  z:\n    dtype: str\n    description: &a0 [x, x, x, x, x, x, x, x, x]\n"
            f"  q:\n    dtype: str\n    title:\n{levels}\n")
    with pytest.raises(ValueError, match="aliases"):
        schema_from_yaml(bomb)
    extra = "columns:\n  x:\n    dtype: float64\n    metadata:\n      role: feature\n      x: 1\n"
    with pytest.raises(ValueError, match="may hold only 'role', 'note' and 'encoding'"):
        schema_from_yaml(extra)
    encoding = "columns:\n  x:\n    dtype: str\n    metadata:\n      encoding: hashing\n"
    with pytest.raises(ValueError, match="encoding must be one of one_hot, one_hot_top_k"):
        schema_from_yaml(encoding)
    unknown = "columns:\n  x:\n    dtype: float64\n    metadata:\n      role: [a, b]\n"
    with pytest.raises(ValueError, match="role must be one of"):
        schema_from_yaml(unknown)
    ok = "columns:\n  x:\n    dtype: float64\n    metadata:\n      role: identifier\n"
    assert schema_from_yaml(ok).columns["x"].metadata == {"role": "identifier"}


def test_a_schema_version_is_never_written_over_one_that_appeared_meanwhile(tmp_path):
    import pandas as pd
    import pytest

    from ml_assets.core.data.schemas import SchemaStore

    frame = pd.DataFrame({"x": [1.5, 2.5, 3.5, 4.5], "y": ["a", "b", "a", "b"]})
    schema = checked_schema(frame, "y")
    store = SchemaStore(tmp_path, "shop")
    store.directory.mkdir(parents=True)
    original = "# written by another run\n"
    (store.directory / "v1.yaml").write_text(original)
    store.versions = lambda: []  # as if v1 appeared after this run looked
    with pytest.raises(FileExistsError):
        store.write(schema)
    assert (store.directory / "v1.yaml").read_text() == original
    assert [p.name for p in store.directory.iterdir()] == ["v1.yaml"]  # no temporary left
