"""Hostile input gets a 4xx and costs bounded time and memory (TestClient, real model)."""

from __future__ import annotations

import dataclasses
import io
import json
import resource
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.app import create_app
from serving.batcher import _predict
from serving.model.input_limits import FLOAT32_MAX, InputOverflow
from serving.model.request_models import build_request_models
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

JSON = {"Content-Type": "application/json"}
SCALED = "mean compactness"  # StandardScaler's scale < 1: 3e38 overflows after scaling


@pytest.fixture(scope="module")
def trained(cancer_champion):
    return cancer_champion.trained


@pytest.fixture(scope="module")
def client(mlflow_store, cancer_champion, tmp_path_factory):
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"],
                               model_name=cancer_champion.name,
                               poll_seconds=0, prediction_log_path=tmp_path_factory.mktemp(
                                   "hostile") / "log.db")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def row(trained) -> dict:
    return trained.X_test.iloc[0].to_dict()


def _service(client):
    return client.app.state.service


# -- values beyond what the model holds ---------------------------------------------

def test_1e40_is_a_422_naming_the_field_on_every_endpoint(client, row):
    row["mean radius"] = 1e40
    response = client.post("/predict", json=row)
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["mean radius"] and item["type"] == "value_too_large"
    assert "float32" in item["msg"] and "mean radius" in response.json()["message"]
    batch = client.post("/predict/batch", json={"records": [row]})
    assert batch.status_code == 422
    assert batch.json()["detail"][0]["loc"] == ["records", 0, "mean radius"]
    invocations = client.post("/invocations", json={"dataframe_records": [row]})
    assert invocations.status_code == 400
    assert "row 0: mean radius: Input should be at most" in invocations.json()["message"]


def test_3e38_on_a_scaled_feature_is_refused_by_the_derived_bound(client, row):
    row[SCALED] = 3e38
    response = client.post("/predict", json=row)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == [SCALED]
    assert "after its preprocessing" in response.json()["detail"][0]["msg"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    bound = schema["properties"][SCALED]["maximum"]
    assert bound < FLOAT32_MAX
    row[SCALED] = bound  # the documented maximum itself is accepted and predicted
    assert client.post("/predict", json=row).status_code == 200


@pytest.fixture
def without_derived_bounds(client):
    """Serve the same model with request models that only know float32's range, so a
    value the preprocessing overflows reaches the pipeline (the predict-time guard, the
    Pipeline's: the compiled graph relies on the derived bounds, which every served
    model's request models carry, so it is taken away here)."""
    service = _service(client)
    model = service.store.current
    loose = build_request_models(list(model.features), service.settings.max_batch)
    service.store.current = dataclasses.replace(model, requests=loose, compiled=None)
    yield
    service.store.current = model


def test_overflow_after_preprocessing_is_a_422_naming_the_feature(client, row,
                                                                    without_derived_bounds):
    row[SCALED] = 3e38
    response = client.post("/predict", json=row)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == [{"loc": [SCALED], "type": "value_overflow",
                               "msg": "value too large for the model after preprocessing"}]
    assert SCALED in body["message"] and "float32" in body["message"]
    ok = dict(row, **{SCALED: 0.1})
    batch = client.post("/predict/batch", json={"records": [ok, row]})
    assert batch.status_code == 422 and SCALED in batch.json()["message"]
    invocations = client.post("/invocations", json={"dataframe_records": [row]})
    assert invocations.status_code == 400
    assert invocations.json()["error_code"] == "BAD_REQUEST"
    assert SCALED in invocations.json()["message"]
    assert client.post("/predict", json=ok).status_code == 200  # the service is fine


def test_predict_guard_raises_input_overflow_only_for_that_job(client, row):
    model = dataclasses.replace(_service(client).store.current, compiled=None)  # Pipeline
    names = model.feature_names
    good = [row[n] for n in names]
    bad = [3e38 if n == SCALED else row[n] for n in names]
    with pytest.raises(InputOverflow) as caught:
        _predict(model, [good, bad])
    assert caught.value.features == [SCALED] and caught.value.rows == [1]
    proba, _ = _predict(model, [good])
    assert proba.shape == (1, 2)


def test_integer_beyond_int64_is_a_422(client, row):
    text = json.dumps(row).replace(f'"mean radius": {json.dumps(row["mean radius"])}',
                                   '"mean radius": 1' + "0" * 400)
    response = client.post("/predict", content=text, headers=JSON)
    assert response.status_code == 422


# -- /invocations structure ----------------------------------------------------------

@pytest.mark.parametrize("nan", [False, True], ids=["orjson", "json-fallback"])
def test_deeply_nested_json_is_a_400(client, nan):
    inner = "[" * 10_000 + "]" * 10_000
    value = "NaN" if nan else "1"
    text = f'{{"dataframe_split": {{"columns": ["a"], "data": [[{value}]]}}, "x": {inner}}}'
    body = text.encode()
    response = client.post("/invocations", content=body, headers=JSON)
    assert response.status_code == 400
    assert "valid JSON" in response.json()["message"]


def test_non_string_column_names_are_a_400(client):
    response = client.post("/invocations", json={"dataframe_split": {"columns": [[1]],
                                                                     "data": [[1]]}})
    assert response.status_code == 400
    assert "column names must be strings" in response.json()["message"]
    nested = client.post("/invocations", json={"dataframe_records": [{"mean radius": [[1]]}]})
    assert nested.status_code == 400


# -- row caps before a body is materialized -------------------------------------------

def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_parquet_with_10m_rows_is_refused_from_its_metadata(client):
    table = pa.table({"mean radius": pa.array(np.zeros(10_000_000, dtype=np.int8))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    del table
    body = buffer.getvalue()
    assert len(body) < 200_000
    before = _max_rss_mb()
    started = time.perf_counter()
    response = client.post("/invocations", content=body,
                           headers={"Content-Type": "application/vnd.apache.parquet"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 400
    assert "10000000 rows exceed the limit of 1000" in response.json()["message"]
    assert elapsed < 2.0
    assert _max_rss_mb() - before < 100  # was 2.97 GB when the frame was built first


def test_parquet_reads_only_known_columns_within_a_size_bound(client, trained):
    frame = trained.X_test.head(3).copy()
    frame["blob"] = ["x" * 1000] * 3  # unknown: never read
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    response = client.post("/invocations", content=buffer.getvalue(),
                           headers={"Content-Type": "application/vnd.apache.parquet"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 3


def test_csv_row_cap_is_checked_while_counting(client, trained):
    header = ",".join(f'"{c}"' for c in trained.X_test.columns)
    body = (header + "\n" + "1\n" * 200_000).encode()
    started = time.perf_counter()
    response = client.post("/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 400
    assert "more than 1000 rows exceed the limit of 1000" in response.json()["message"]
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("key", ["dataframe_records", "instances", "inputs"])
def test_json_row_cap_is_checked_before_per_element_work(client, key):
    if key == "inputs":
        body = b'{"inputs": {"mean radius": [' + b",".join([b"1"] * 1_500_000) + b"]}}"
    else:
        body = b'{"%s": [' % key.encode() + b",".join([b"{}"] * 1_200_000) + b"]}"
    started = time.perf_counter()
    response = client.post("/invocations", content=body, headers=JSON)
    assert response.status_code == 400
    assert "exceed the limit of 1000" in response.json()["message"]
    assert time.perf_counter() - started < 2.0


# -- errors quote excerpts only --------------------------------------------------------

def test_huge_keys_and_cells_are_not_echoed(client, trained, row):
    key = "k" * 3_900_000
    for path, body in [("/predict", {**row, key: 1}),
                       ("/predict/batch", {"records": [{**row, key: 1}]}),
                       ("/invocations", {key: 1}),
                       ("/invocations", {"dataframe_split": {key: 1, "data": []}})]:
        response = client.post(path, json=body)
        assert 400 <= response.status_code < 500, path
        assert len(response.content) < 2048, (path, len(response.content))
    header = ",".join(f'"{c}"' for c in trained.X_test.columns)
    cell = "9" * 3_900_000
    response = client.post("/invocations", content=(header + "\n" + cell + "\n").encode(),
                           headers={"Content-Type": "text/csv"})
    assert response.status_code == 400 and len(response.content) < 2048


# -- content types -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/predict", "/predict/batch", "/admin/reload"])
def test_json_endpoints_refuse_other_content_types(client, row, path):
    body = json.dumps(row)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None,
                         "application/json; charset=latin-1"):
        headers = {"Content-Type": content_type} if content_type else {}
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (path, content_type)
        assert "application/json" in response.json()["detail"] or \
            "charset" in response.json()["detail"]
    ok = client.post(path, content=json.dumps(row if path == "/predict" else {}),
                     headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code != 415
    spec = client.get("/openapi.json").json()
    assert "415" in spec["paths"][path]["post"]["responses"]


def test_reload_refuses_a_body_other_than_empty(client):
    assert client.post("/admin/reload", json={"force": True}).status_code == 422
    assert client.post("/admin/reload", content=b"", headers=JSON).status_code == 200


def test_auth_comes_before_the_content_type(mlflow_store, client, tmp_path):
    settings = dataclasses.replace(_service(client).settings, api_key="s3cret",
                                   prediction_log_path=tmp_path / "log.db")
    with TestClient(create_app(settings)) as keyed:
        assert keyed.post("/admin/reload", content=b"x",
                          headers={"Content-Type": "text/plain"}).status_code == 401
        assert keyed.post("/admin/reload", content=b"x", headers={
            "Content-Type": "text/plain", "X-API-Key": "s3cret"}).status_code == 415


def test_integer_features_stop_at_int64_exactly():
    from pydantic import ValidationError

    from serving.model.feature_specs import FeatureSpec, frame_from_rows

    models = build_request_models([FeatureSpec("n", "integer", False)], 10)
    top = 2 ** 63 - 1
    record = models.record.model_validate_json(f'{{"n": {top}}}')
    assert frame_from_rows([models.row_of(record)], models.specs)["n"].iloc[0] == top
    for value, limit in ((2 ** 63, f"at most {top}"), (-(2 ** 63) - 1, f"at least {-top - 1}")):
        with pytest.raises(ValidationError) as caught:
            models.record.model_validate_json(f'{{"n": {value}}}')
        assert caught.value.errors()[0]["loc"] == ("n",) and limit in str(caught.value)


def test_a_feature_schema_is_parsed_as_text_never_opened_as_a_path(tmp_path):
    from ml_assets.core.data.schemas import breast_cancer_schema, schema_from_yaml, schema_yaml

    text = schema_yaml(breast_cancer_schema(["mean radius"]))
    assert list(schema_from_yaml(text).columns) == list(
        breast_cancer_schema(["mean radius"]).columns)
    on_disk = tmp_path / "schema.yaml"
    on_disk.write_text(text)
    with pytest.raises(ValueError, match="not a YAML mapping"):
        schema_from_yaml(str(on_disk))  # pandera's from_yaml would read the file


def test_an_input_example_outside_the_model_directory_is_not_read(tmp_path):
    from serving.model.store import _input_example

    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "outside.json").write_text(json.dumps(
        {"dataframe_split": {"columns": ["a"], "data": [[1.0]]}}))
    (model / "MLmodel").write_text("flavors: {}\nsaved_input_example_info:\n"
                                   "  artifact_path: ../outside.json\n  type: dataframe\n"
                                   "  pandas_orient: split\n")
    assert _input_example(str(model), ["a"]) is None


def test_a_queue_smaller_than_a_batch_is_refused_at_start(monkeypatch):
    from serving.settings import SettingsError

    monkeypatch.setenv("ML_API_MAX_BATCH", "1000")
    monkeypatch.setenv("ML_PREDICTION_LOG_QUEUE_ROWS", "999")
    with pytest.raises(SettingsError, match="ML_PREDICTION_LOG_QUEUE_ROWS=999"):
        ServingSettings.from_env()
