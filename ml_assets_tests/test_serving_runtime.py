"""Which runtime answers: a version's compiled ONNX graph when it passed parity at
registration (ML_API_RUNTIME=auto), the scikit-learn Pipeline otherwise, with the reason
on /model and the runtime on /metrics. Real models in the session MLflow store."""

from __future__ import annotations

import uuid
import warnings
from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml_assets.core.schema_inference import checked_schema
from ml_assets_tests.user_factory import TRUSTED, make_model
from serving.app import create_app
from serving.settings import ServingSettings
from serving.testing import (
    experiment_id,
    register,
    train_breast_cancer,
    train_frame,
    train_regression,
)

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PENGUINS = files("palmerpenguins") / "data" / "penguins.csv"


@pytest.fixture(scope="module")
def cancer():
    return train_breast_cancer(n_estimators=30)


@pytest.fixture(scope="module")
def compiled_champion(mlflow_store, cancer) -> str:
    name = f"runtime_{uuid.uuid4().hex[:8]}"
    register(cancer, name, experiment_id(name, mlflow_store["artifact_root"]))
    return name


def _client(mlflow_store, name, tmp_path, **overrides) -> TestClient:
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                               prediction_log_path=tmp_path / f"log-{uuid.uuid4().hex}.db",
                               poll_seconds=0, **overrides)
    return TestClient(create_app(settings))


def _records(frame: pd.DataFrame) -> list[dict]:
    clean = frame.astype(object)
    return clean.where(clean.notna(), None).to_dict(orient="records")


def _runtime_gauge(client: TestClient) -> dict[str, float]:
    lines = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("ml_api_model_runtime{")]
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in lines}


def test_compiled_graph_serves_and_agrees_with_the_pipeline(mlflow_store, cancer,
                                                           compiled_champion, tmp_path):
    tags = MlflowClient(mlflow_store["tracking_uri"]).get_model_version(
        compiled_champion, "1").tags
    assert tags["onnx.parity"] == "passed", tags
    records = _records(cancer.X_test)
    with _client(mlflow_store, compiled_champion, tmp_path) as fast, \
            _client(mlflow_store, compiled_champion, tmp_path, runtime="sklearn") as slow:
        fast_info, slow_info = fast.get("/model").json(), slow.get("/model").json()
        assert (fast_info["runtime"], slow_info["runtime"]) == ("onnx", "sklearn")
        assert slow_info["runtime_reason"] == "ML_API_RUNTIME=sklearn"
        assert _runtime_gauge(fast) == {"onnx": 1.0, "sklearn": 0.0}
        assert _runtime_gauge(slow) == {"onnx": 0.0, "sklearn": 1.0}
        a = fast.post("/predict/batch", json={"records": records})
        b = slow.post("/predict/batch", json={"records": records})
        one = fast.post("/predict", json=records[0])
    assert a.status_code == b.status_code == one.status_code == 200
    fast_answers, slow_answers = a.json()["predictions"], b.json()["predictions"]
    assert [p["prediction"] for p in fast_answers] == [p["prediction"] for p in slow_answers]
    expected = cancer.pipeline.predict(cancer.X_test).tolist()
    assert [p["prediction"] for p in fast_answers] == expected
    diff = max(abs(p["probabilities"][k] - q["probabilities"][k])
               for p, q in zip(fast_answers, slow_answers, strict=True)
               for k in p["probabilities"])
    assert diff <= float(tags["onnx.parity.probability_tolerance"])
    assert one.json()["prediction"] == expected[0]


def test_categoricals_and_missing_values_through_the_graph(mlflow_store, tmp_path):
    frame = pd.read_csv(PENGUINS)
    schema = checked_schema(frame, "species", name="penguins")
    trained = train_frame(frame, schema, "species", n_estimators=30)
    name = f"runtime_penguins_{uuid.uuid4().hex[:8]}"
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]))
    rows = _records(trained.X_test)
    rows[0] = {**rows[0], "sex": None, "bill_length_mm": None}  # missing values
    rows[1] = {**rows[1], "island": "Atlantis"}  # unseen category (accept policy)
    with _client(mlflow_store, name, tmp_path) as fast, \
            _client(mlflow_store, name, tmp_path, runtime="sklearn") as slow:
        assert fast.get("/model").json()["runtime"] == "onnx"
        a = fast.post("/predict/batch", json={"records": rows})
        b = slow.post("/predict/batch", json={"records": rows})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    labels = [p["prediction"] for p in a.json()["predictions"]]
    assert labels == [p["prediction"] for p in b.json()["predictions"]]
    assert set(labels) <= {"Adelie", "Chinstrap", "Gentoo"}


def test_unconvertible_model_is_served_by_sklearn_with_the_reason(mlflow_store, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", TRUSTED)
    trained = train_regression(make_model(), scale=False)
    name = f"runtime_clip_{uuid.uuid4().hex[:8]}"
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]))
    tags = MlflowClient(mlflow_store["tracking_uri"]).get_model_version(name, "1").tags
    assert tags["onnx.parity"] == "not_converted"
    assert "ClipScaler" in tags["onnx.parity.reason"]
    row = _records(trained.X_test.head(1))[0]
    with _client(mlflow_store, name, tmp_path) as client:
        info = client.get("/model").json()
        assert info["runtime"] == "sklearn"
        assert "ClipScaler" in info["runtime_reason"], info["runtime_reason"]
        answer = client.post("/predict", json=row)
        assert answer.status_code == 200
        expected = float(trained.pipeline.predict(trained.X_test.head(1))[0])
        assert answer.json()["prediction"] == pytest.approx(expected)
    with _client(mlflow_store, name, tmp_path, runtime="onnx") as strict:
        ready = strict.get("/ready")
        assert ready.status_code == 503
        assert "ML_API_RUNTIME=onnx" in ready.json()["detail"]
        assert "ClipScaler" in ready.json()["detail"]


def test_a_graph_that_does_not_match_its_tag_is_not_served(mlflow_store, cancer, tmp_path):
    name = f"runtime_tamper_{uuid.uuid4().hex[:8]}"
    register(cancer, name, experiment_id(name, mlflow_store["artifact_root"]))
    MlflowClient(mlflow_store["tracking_uri"]).set_model_version_tag(
        name, "1", "onnx.sha256", "0" * 64)
    with _client(mlflow_store, name, tmp_path) as client:
        info = client.get("/model").json()
        assert info["runtime"] == "sklearn"
        assert "sha256" in info["runtime_reason"]
        assert client.post("/predict", json=_records(cancer.X_test.head(1))[0]).status_code == 200


def test_hot_swap_between_runtimes(mlflow_store, cancer, tmp_path):
    name = f"runtime_swap_{uuid.uuid4().hex[:8]}"
    experiment = experiment_id(name, mlflow_store["artifact_root"])
    register(cancer, name, experiment)
    row = _records(cancer.X_test.head(1))[0]
    with _client(mlflow_store, name, tmp_path) as client:
        assert client.get("/model").json()["runtime"] == "onnx"
        register(cancer, name, experiment, compile=False)  # version 2: no graph
        assert client.post("/admin/reload", json={}).json()["status"] == "swapped"
        info = client.get("/model").json()
        assert (info["version"], info["runtime"]) == ("2", "sklearn")
        assert "no compiled graph" in info["runtime_reason"], info["runtime_reason"]
        assert _runtime_gauge(client) == {"onnx": 0.0, "sklearn": 1.0}
        answer = client.post("/predict", json=row).json()
        assert answer["model_version"] == "2"
        assert answer["prediction"] == cancer.pipeline.predict(cancer.X_test.head(1))[0]


def test_values_the_graph_cannot_hold_fall_back_to_the_pipeline(mlflow_store, cancer,
                                                                compiled_champion, tmp_path):
    """float32 overflows inside the graph (a huge value scaled): the answer is the
    Pipeline's (or its 422 naming the feature), never a non-finite probability."""
    row = _records(cancer.X_test.head(1))[0]
    huge = {**row, "mean radius": 3.0e38}
    with _client(mlflow_store, compiled_champion, tmp_path) as fast, \
            _client(mlflow_store, compiled_champion, tmp_path, runtime="sklearn") as slow:
        a, b = fast.post("/predict", json=huge), slow.post("/predict", json=huge)
    assert a.status_code == b.status_code, (a.text, b.text)
    if a.status_code == 200:
        assert a.json()["prediction"] == b.json()["prediction"]
        assert all(np.isfinite(v) for v in a.json()["probabilities"].values())
    else:
        assert a.status_code == 422 and a.json()["detail"] == b.json()["detail"]
