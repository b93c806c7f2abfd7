"""Real, packaged tables nobody on this project wrote, through the whole graph.

palmerpenguins: numeric, categorical, missing values, three classes, an integer year.
vega_datasets' seattle-weather: a datetime column, as CSV and as Parquet.
"""

from importlib.resources import files

import mlflow
import pandas as pd
import pytest
import yaml

from ml_assets.core.data.schemas import schema_from_yaml
from ml_assets.resources import DataSourceResource
from ml_assets.validation import SCHEMA_CHECK
from ml_assets_tests.support.graph import check_evaluation, run_graph

PENGUINS = files("palmerpenguins") / "data" / "penguins.csv"
SEATTLE = files("vega_datasets") / "_data" / "seattle-weather.csv"
FAST = {"n_estimators": 10, "cv_folds": 2}
ISLANDS = ["Biscoe", "Dream", "Torgersen"]


def _columns(schema_file):
    """column -> {dtype, nullable, checks, role} as written in the YAML file."""
    document = yaml.safe_load(schema_file.read_text())
    known = {"dtype", "nullable", "coerce", "metadata", "required", "unique", "regex",
             "title", "description"}
    return {name: {"dtype": spec["dtype"], "nullable": spec.get("nullable", False),
                   "checks": {k: v for k, v in spec.items() if k not in known},
                   "role": (spec.get("metadata") or {}).get("role", "feature")}
            for name, spec in document["columns"].items()}


def test_penguins_infer_a_signed_off_schema_and_train(tmp_path, mlflow_tracking, instance):
    source = DataSourceResource(kind="files", path=str(PENGUINS), target="species",
                                schema_dir=str(tmp_path / "schemas"))
    result = run_graph(source, mlflow_tracking, instance, training=FAST)
    assert result.success
    schema_file = tmp_path / "schemas" / "penguins" / "v1.yaml"
    ge0 = {"greater_than_or_equal_to": 0}
    assert _columns(schema_file) == {
        "species": {"dtype": "str", "nullable": False, "role": "feature",
                    "checks": {"isin": ["Adelie", "Chinstrap", "Gentoo"]}},
        "island": {"dtype": "str", "nullable": False, "role": "feature",
                   "checks": {"isin": ISLANDS}},
        "bill_length_mm": {"dtype": "float64", "nullable": True, "role": "feature",
                           "checks": ge0},
        "bill_depth_mm": {"dtype": "float64", "nullable": True, "role": "feature",
                          "checks": ge0},
        "flipper_length_mm": {"dtype": "Int64", "nullable": True, "role": "feature",
                              "checks": ge0},
        "body_mass_g": {"dtype": "Int64", "nullable": True, "role": "feature", "checks": ge0},
        "sex": {"dtype": "str", "nullable": True, "role": "feature",
                "checks": {"isin": ["female", "male"]}},
        "year": {"dtype": "int64", "nullable": False, "role": "feature", "checks": ge0},
    }
    trained = result.output_for_node("trained_model")
    assert trained.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert result.output_for_node("model_metrics")["accuracy"] > 0.9
    # Integer features are numeric (long, or double when nullable), and served rows in
    # plain float64/int64/object frames (no pandas nullable dtypes) predict.
    model = mlflow.pyfunc.load_model(trained.model_uri)
    inputs = {c.name: str(c.type) for c in model.metadata.get_input_schema().inputs}
    assert inputs["flipper_length_mm"] == "DataType.double"
    assert inputs["year"] == "DataType.long" and inputs["island"] == "DataType.string"
    rows = pd.read_csv(PENGUINS).drop(columns="species").head(8)
    assert rows["flipper_length_mm"].isna().any()
    assert set(model.predict(rows)) <= set(trained.classes)
    # A fractional year no longer passes as an integer.
    bad = pd.read_csv(PENGUINS).assign(year=lambda f: f["year"].astype(float))
    bad.loc[3, "year"] = 2007.5
    bad_path = tmp_path / "penguins.csv"
    bad.to_csv(bad_path, index=False)
    again = DataSourceResource(kind="files", path=str(bad_path), target="species",
                               schema_dir=str(tmp_path / "schemas"))
    check = check_evaluation(run_graph(again, mlflow_tracking, instance,
                                       selection=["raw_data", "validated_data"]), SCHEMA_CHECK)
    assert not check.passed and "column 'year'" in check.description
    assert "data rows 4 ('2007.5')" in check.description


def _seattle_expected():
    float_ge0 = {"dtype": "float64", "nullable": False, "role": "feature",
                 "checks": {"greater_than_or_equal_to": 0}}
    plain = {"dtype": "float64", "nullable": False, "role": "feature", "checks": {}}
    return {
        "date": {"dtype": "datetime64[ns]", "nullable": False, "role": "datetime",
                 "checks": {}},
        "precipitation": float_ge0, "temp_max": plain, "temp_min": plain, "wind": float_ge0,
        "weather": {"dtype": "str", "nullable": False, "role": "feature",
                    "checks": {"isin": ["drizzle", "fog", "rain", "snow", "sun"]}},
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_seattle_weather_datetime_is_validated_not_a_feature(fmt, tmp_path, mlflow_tracking,
                                                             instance):
    path = tmp_path / f"seattle.{fmt}"
    if fmt == "csv":
        path.write_bytes(SEATTLE.read_bytes())
    else:
        pd.read_csv(SEATTLE, parse_dates=["date"]).to_parquet(path)
    source = DataSourceResource(kind="files", path=str(path), target="weather",
                                schema_dir=str(tmp_path / "schemas"))
    gate = {"min_accuracy": 0.5, "min_precision_weighted": 0.3, "min_recall_weighted": 0.5,
            "min_f1_weighted": 0.3, "min_roc_auc": 0.6}
    result = run_graph(source, mlflow_tracking, instance, training=FAST, gate=gate)
    assert result.success
    schema_file = tmp_path / "schemas" / "seattle" / "v1.yaml"
    assert _columns(schema_file) == _seattle_expected()
    text = schema_file.read_text()
    assert "# Datetime columns are never features" in text and "#   date: datetime" in text
    schema = schema_from_yaml(text)
    assert str(schema.columns["date"].dtype) == "datetime64[ns]"
    # The decision is in the run's metadata and the MLflow run, not only the file.
    validated = result.asset_materializations_for_node("validated_data")[0].metadata
    assert "date" in validated["excluded_columns"].value
    assert "timestamp" in validated["datetime_policy"].value
    trained = result.output_for_node("trained_model")
    run = mlflow_tracking.client.get_run(trained.mlflow_run_id)
    assert '"date": "datetime"' in run.data.tags["excluded_columns"]
    model = mlflow.pyfunc.load_model(trained.model_uri)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == [
        "precipitation", "temp_max", "temp_min", "wind"]
    assert "date" not in trained.pipeline[0].feature_names_in_
