"""The request models generated from Pandera schemas, the settings, and the MLflow
scoring-protocol parser (pure units: no MLflow store, no HTTP)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from pydantic import ValidationError

from ml_assets.core.data.datasets import (
    BREAST_CANCER_TARGET,
    SyntheticSpec,
    load_breast_cancer_frame,
)
from ml_assets.core.data.schemas import breast_cancer_schema, synthetic_schema
from serving.model.feature_specs import example_rows, feature_specs, frame_from_rows
from serving.model.request_models import build_request_models
from serving.protocols.mlflow import InvocationError, parse_rows
from serving.settings import ServingSettings, SettingsError


@pytest.fixture(scope="module")
def bc_frame() -> pd.DataFrame:
    return load_breast_cancer_frame()


@pytest.fixture(scope="module")
def bc_models(bc_frame):
    features = [c for c in bc_frame.columns if c != BREAST_CANCER_TARGET]
    specs = feature_specs(breast_cancer_schema(features), BREAST_CANCER_TARGET)
    return build_request_models(specs, max_batch=3)


SPEC = SyntheticSpec(n_rows=200, n_numeric=2, n_categorical=1, n_categories=3,
                     missing_fraction=0.1)


@pytest.fixture(scope="module")
def mixed_models():
    specs = feature_specs(synthetic_schema(SPEC), SPEC.target)
    return build_request_models(specs, max_batch=10)


def _errors(exc: ValidationError) -> dict:
    return {tuple(e["loc"]): e["type"] for e in exc.errors()}


def test_specs_follow_the_schema(bc_frame):
    features = [c for c in bc_frame.columns if c != BREAST_CANCER_TARGET]
    specs = {s.name: s for s in feature_specs(breast_cancer_schema(features),
                                              BREAST_CANCER_TARGET)}
    assert list(specs) == features  # target excluded, schema order kept
    assert specs["mean radius"].kind == "number" and specs["mean radius"].ge == 0
    assert specs["mean smoothness"].le == 1  # unit-interval feature
    assert not specs["mean radius"].nullable

    mixed = {s.name: s for s in feature_specs(synthetic_schema(SPEC), SPEC.target)}
    assert mixed["cat_00"].kind == "string" and mixed["cat_00"].allowed == ("c0", "c1", "c2")
    assert mixed["num_00"].nullable  # missing_fraction > 0


def test_checks_and_dtypes_map_to_constraints():
    schema = pa.DataFrameSchema({
        "ratio": pa.Column(float, checks=[pa.Check.in_range(0, 5, include_max=False),
                                          pa.Check.gt(-1)]),
        "count": pa.Column(int, checks=pa.Check.le(10)),
        "flag": pa.Column(bool, nullable=True),
        "code": pa.Column(str, checks=[pa.Check.str_matches(r"[A-Z]\d"),
                                       pa.Check.str_length(2, 2)]),
        "y": pa.Column(str),
    })
    specs = {s.name: s for s in feature_specs(schema, "y")}
    assert (specs["ratio"].ge, specs["ratio"].lt, specs["ratio"].gt) == (0, 5, -1)
    assert specs["count"].kind == "integer" and specs["flag"].kind == "boolean"
    models = build_request_models(list(specs.values()), max_batch=2)
    ok = models.record.model_validate({"ratio": 4.5, "count": 3, "code": "A1"})
    assert models.row_of(ok) == [4.5, 3, None, "A1"]  # nullable flag may be left out
    with pytest.raises(ValidationError) as caught:
        models.record.model_validate({"ratio": 5.0, "count": 3.5, "flag": "yes",
                                      "code": "a1"})
    assert _errors(caught.value) == {("ratio",): "less_than", ("count",): "int_type",
                                     ("flag",): "bool_type", ("code",): "string_pattern_mismatch"}


@pytest.mark.parametrize("body, loc, kind", [
    ({"drop": "mean radius"}, ("mean radius",), "missing"),
    ({"set": ("surprise", 1.0)}, ("surprise",), "extra_forbidden"),
    ({"set": ("mean radius", "12.5")}, ("mean radius",), "float_type"),
    ({"set": ("mean radius", True)}, ("mean radius",), "float_type"),
    ({"set": ("mean radius", None)}, ("mean radius",), "float_type"),
    ({"set": ("mean radius", -1.0)}, ("mean radius",), "greater_than_equal"),
    ({"set": ("mean smoothness", 1.5)}, ("mean smoothness",), "less_than_equal"),
], ids=["missing", "extra", "string", "bool", "null", "below-min", "above-max"])
def test_bad_record_names_the_field(bc_models, bc_frame, body, loc, kind):
    row = bc_frame.drop(columns=[BREAST_CANCER_TARGET]).iloc[0].to_dict()
    if "drop" in body:
        row.pop(body["drop"])
    else:
        row[body["set"][0]] = body["set"][1]
    with pytest.raises(ValidationError) as caught:
        bc_models.record.model_validate_json(json.dumps(row))
    assert _errors(caught.value) == {loc: kind}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(bc_models, bc_frame, literal):
    row = bc_frame.drop(columns=[BREAST_CANCER_TARGET]).iloc[0].to_dict()
    row["mean radius"] = 0.0
    body = json.dumps(row).replace('"mean radius": 0.0', f'"mean radius": {literal}')
    with pytest.raises(ValidationError) as caught:
        bc_models.record.model_validate_json(body)
    assert _errors(caught.value) == {("mean radius",): "finite_number"}


def test_batch_model_caps_the_records(bc_models, bc_frame):
    rows = bc_frame.drop(columns=[BREAST_CANCER_TARGET]).head(4).to_dict(orient="records")
    assert len(bc_models.batch.model_validate({"records": rows[:3]}).records) == 3
    with pytest.raises(ValidationError) as caught:
        bc_models.batch.model_validate({"records": rows})
    assert _errors(caught.value) == {("records",): "too_long"}
    with pytest.raises(ValidationError):
        bc_models.batch.model_validate({"records": []})


def test_json_schema_lists_feature_names(bc_models, bc_frame):
    schemas = bc_models.json_schemas()
    record = schemas["PredictRequest"]
    features = [c for c in bc_frame.columns if c != BREAST_CANCER_TARGET]
    assert list(record["properties"]) == features
    assert record["required"] == features
    assert record["additionalProperties"] is False
    assert record["properties"]["mean radius"]["minimum"] == 0
    batch = schemas["PredictBatchRequest"]["properties"]["records"]
    assert batch["items"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert batch["maxItems"] == 3


def test_example_rows_satisfy_the_request_model(bc_models, mixed_models):
    for models in (bc_models, mixed_models):
        for row in example_rows(list(models.specs)):
            models.record.model_validate(row)


def test_frame_has_training_dtypes(mixed_models):
    records = [{"num_00": 1.5, "num_01": None, "cat_00": "c1"},
               {"num_00": 2, "num_01": 3.0, "cat_00": None}]
    rows = [mixed_models.row_of(mixed_models.record.model_validate(r)) for r in records]
    frame = frame_from_rows(rows, mixed_models.specs)
    assert list(frame.columns) == ["num_00", "num_01", "cat_00"]
    assert frame["num_00"].dtype == np.float64 and math.isnan(frame["num_01"][0])
    # A missing category is NaN, as in training frames: the imputer replaces it.
    assert frame["cat_00"].dtype == object and frame["cat_00"][0] == "c1"
    assert isinstance(frame["cat_00"][1], float) and math.isnan(frame["cat_00"][1])


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ML_API_PORT", "8123")
    monkeypatch.setenv("ML_API_KEY", "s3cret")
    monkeypatch.setenv("ML_API_MAX_BATCH", "50")
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", "fraud")
    settings = ServingSettings.from_env(host="0.0.0.0", port=None)
    assert settings.port == 8123 and settings.host == "0.0.0.0"
    assert settings.api_key == "s3cret" and settings.max_batch == 50
    assert settings.model_uri == "models:/fraud@champion"
    assert settings.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert settings.prediction_log_path == tmp_path.resolve() / "prediction_log.db"
    monkeypatch.setenv("ML_API_MAX_BODY_BYTES", "lots")
    with pytest.raises(SettingsError, match="ML_API_MAX_BODY_BYTES"):
        ServingSettings.from_env()


# -- MLflow scoring protocol ------------------------------------------------------------

@pytest.fixture(scope="module")
def bc_rows(bc_frame) -> pd.DataFrame:
    return bc_frame.drop(columns=[BREAST_CANCER_TARGET]).head(3)


def _payloads(frame: pd.DataFrame) -> dict[str, bytes]:
    columns = {c: frame[c].tolist() for c in frame.columns}
    return {
        "dataframe_split": json.dumps({"dataframe_split": frame.to_dict(orient="split")}),
        "dataframe_records": json.dumps({"dataframe_records": frame.to_dict(orient="records")}),
        "instances": json.dumps({"instances": frame.to_dict(orient="records")}),
        "inputs": json.dumps({"inputs": columns, "params": {"ignored": 1}}),
    }


def test_every_json_format_gives_the_same_rows(bc_models, bc_rows):
    expected = bc_rows.values.tolist()
    for name, body in _payloads(bc_rows).items():
        assert parse_rows(body.encode(), "application/json", bc_models, 10) == expected, name
    one = json.dumps({"inputs": bc_rows.iloc[0].to_dict()}).encode()
    assert parse_rows(one, "application/json; charset=utf-8", bc_models, 10) == expected[:1]


def test_csv_and_parquet(bc_models, bc_rows):
    expected = bc_rows.values.tolist()
    csv = bc_rows.to_csv(index=False).encode()
    np.testing.assert_allclose(parse_rows(csv, "text/csv", bc_models, 10), expected)
    buffer = io.BytesIO()
    bc_rows.to_parquet(buffer)
    assert parse_rows(buffer.getvalue(), "application/vnd.apache.parquet", bc_models,
                      10) == expected


def test_unknown_columns_are_ignored_like_mlflow(bc_models, bc_rows):
    frame = bc_rows.assign(patient_id=[1, 2, 3])
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
    assert parse_rows(body, "application/json", bc_models, 10) == bc_rows.values.tolist()


@pytest.mark.parametrize("body, content_type, status, fragment", [
    (b'{"data": [[1]]}', "application/json", 400, "exactly one of"),
    (b'{"instances": [], "inputs": []}', "application/json", 400, "exactly one of"),
    (b"[1, 2]", "application/json", 400, "Received a list"),
    (b"{not json", "application/json", 400, "valid JSON"),
    (b'{"dataframe_split": {"data": [[1.0]]}}', "application/json", 400, "'columns'"),
    (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', "application/json", 400,
     "row 0 has 2 values"),
    (b'{"dataframe_records": {"a": 1}}', "application/json", 400, "list of records"),
    (b'{"inputs": [[1, 2]]}', "application/json", 400, "named features"),
    (b'{"inputs": {"a": [1], "b": [1, 2]}}', "application/json", 400, "different lengths"),
    (b'{"instances": []}', "application/json", 400, "no rows"),
    (b"x", "text/plain", 415, "content types"),
    (b"x", "application/json; charset=latin-1", 415, "UTF-8"),
    (b"x", "application/json; format=pandas-split", 415, "format"),
], ids=["no-format", "two-formats", "list", "bad-json", "split-no-columns", "split-width",
        "records-not-list", "tensor", "ragged-columns", "empty", "text-plain", "latin-1",
        "old-format-param"])
def test_protocol_errors(bc_models, body, content_type, status, fragment):
    with pytest.raises(InvocationError) as caught:
        parse_rows(body, content_type, bc_models, 10)
    assert caught.value.status == status
    assert fragment in caught.value.message


def test_invalid_rows_name_row_and_column(bc_models, bc_rows):
    frame = bc_rows.drop(columns=["mean area"]).astype(object)
    frame.loc[frame.index[1], "mean radius"] = "big"
    body = json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()
    with pytest.raises(InvocationError) as caught:
        parse_rows(body, "application/json", bc_models, 10)
    message = caught.value.message
    assert "row 0: mean area: Field required" in message
    assert "row 1: mean radius: Input should be a valid number" in message
    assert {"loc": [1, "mean radius"], "msg": "Input should be a valid number",
            "type": "float_type"} in caught.value.detail


def test_nan_is_missing_where_nullable_and_refused_elsewhere(mixed_models, bc_models,
                                                             bc_rows):
    body = b'{"dataframe_split": {"columns": ["num_00", "num_01", "cat_00"], ' \
           b'"data": [[NaN, 1.0, "c0"]]}}'
    assert parse_rows(body, "application/json", mixed_models, 10) == [[None, 1.0, "c0"]]
    frame = bc_rows.head(1).copy()
    frame["mean radius"] = float("nan")
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
    with pytest.raises(InvocationError, match=r"mean radius: may not be null \(the model "
                       r"was trained without missing values here\)"):
        parse_rows(body, "application/json", bc_models, 10)


def test_row_cap_and_csv_parse_errors(bc_models, bc_rows):
    body = json.dumps({"dataframe_records": [bc_rows.iloc[0].to_dict()] * 11}).encode()
    with pytest.raises(InvocationError, match="11 rows exceed the limit of 10"):
        parse_rows(body, "application/json", bc_models, 10)
    csv = bc_rows.astype(object).assign(**{"mean radius": ["1.0", "oops", "2"]}).to_csv(
        index=False).encode()
    with pytest.raises(InvocationError, match="row 1: mean radius: 'oops' is not a valid "
                       "number"):
        parse_rows(csv, "text/csv", bc_models, 10)
