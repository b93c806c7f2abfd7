"""POST /invocations speaks MLflow's scoring protocol and answers what MLflow answers."""

from __future__ import annotations

import io
import json
import warnings

import mlflow
import pandas as pd
import pytest
from mlflow.utils.proto_json_utils import dump_input_data

from ml_assets.core.data.datasets import SyntheticSpec
from ml_assets_tests.support.models import register_new, train_synthetic
from serving.app import create_app
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SPEC = SyntheticSpec(n_rows=400, n_numeric=3, n_categorical=2, n_categories=3, n_classes=3,
                     missing_fraction=0.1, seed=3)


def _serve(mlflow_store, name, trained, tmp_path_factory, prefix):
    """A TestClient on champion `name`, `trained`, and MLflow's own pyfunc of version 1."""
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                               poll_seconds=0,
                               prediction_log_path=tmp_path_factory.mktemp(prefix) / "log.db")
    with TestClient(create_app(settings)) as client:
        yield client, trained, mlflow.pyfunc.load_model(f"models:/{name}/1")


@pytest.fixture(scope="module")
def bc(mlflow_store, cancer_champion, tmp_path_factory):
    yield from _serve(mlflow_store, cancer_champion.name, cancer_champion.trained,
                      tmp_path_factory, "inv_bc")


@pytest.fixture(scope="module")
def mixed(mlflow_store, tmp_path_factory):
    trained = train_synthetic(SPEC, n_estimators=20)
    name = register_new(trained, "inv_mixed", mlflow_store["artifact_root"])
    yield from _serve(mlflow_store, name, trained, tmp_path_factory, "inv_mixed")


def _bodies(frame: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    records = json.loads(frame.to_json(orient="records"))
    columns = {c: json.loads(frame[c].to_json(orient="values")) for c in frame.columns}
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    return {
        "dataframe_split": (json.dumps({"dataframe_split": json.loads(
            frame.to_json(orient="split", index=False))}).encode(), "application/json"),
        "dataframe_records": (json.dumps({"dataframe_records": records}).encode(),
                              "application/json"),
        "instances": (json.dumps({"instances": records}).encode(), "application/json"),
        "inputs": (json.dumps({"inputs": columns}).encode(), "application/json"),
        "mlflow-client": (dump_input_data(frame).encode(), "application/json"),
        "csv": (frame.to_csv(index=False).encode(), "text/csv"),
        "parquet": (parquet.getvalue(), "application/vnd.apache.parquet"),
    }


FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs", "mlflow-client",
           "csv", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_answer_like_mlflow(bc, fmt):
    client, trained, pyfunc = bc
    frame = trained.X_test.head(25)
    body, content_type = _bodies(frame)[fmt]
    response = client.post("/invocations", content=body,
                           headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": pyfunc.predict(frame).tolist()}
    assert response.headers["x-model-version"] == "1"
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_values_and_categoricals_like_mlflow(mixed, fmt):
    client, trained, pyfunc = mixed
    frame = trained.X_test.head(30)
    assert frame.isna().any().any()  # the spec asks for missing values
    body, content_type = _bodies(frame)[fmt]
    response = client.post("/invocations", content=body,
                           headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": pyfunc.predict(frame).tolist()}


def test_bad_requests_get_mlflow_style_errors(bc):
    client, trained, _ = bc
    response = client.post("/invocations", json={"data": [[1.0]]})
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "BAD_REQUEST" and "exactly one of" in body["message"]
    response = client.post("/invocations", content=b"a,b\n1,2",
                           headers={"Content-Type": "application/xml"})
    assert response.status_code == 415
    frame = trained.X_test.head(2).drop(columns=["mean radius"])
    response = client.post("/invocations", json={"dataframe_records": json.loads(
        frame.to_json(orient="records"))})
    assert response.status_code == 400
    assert "row 0: mean radius: Field required" in response.json()["message"]
    assert "Traceback" not in response.text


def test_unknown_columns_are_ignored(bc):
    client, trained, pyfunc = bc
    frame = trained.X_test.head(3).assign(patient_id=[7, 8, 9])
    response = client.post("/invocations", content=dump_input_data(frame),
                           headers={"Content-Type": "application/json"})
    assert response.json() == {"predictions": pyfunc.predict(trained.X_test.head(3)).tolist()}


def test_predict_takes_null_for_nullable_and_answers_unseen_categories(mixed):
    client, trained, _ = mixed
    row = {"num_00": None, "num_01": 0.5, "num_02": 1.0, "cat_00": None, "cat_01": "c2"}
    response = client.post("/predict", json=row)
    assert response.status_code == 200
    assert set(response.json()["probabilities"]) == {"class_0", "class_1", "class_2"}
    row.pop("num_00")  # nullable features may be left out
    assert client.post("/predict", json=row).status_code == 200
    # the default input policy (accept) answers an unseen category, as MLflow does;
    # test_serving_input_policy.py covers both policies
    assert client.post("/predict", json={**row, "cat_01": "c9"}).status_code == 200
