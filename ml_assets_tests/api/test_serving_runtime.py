"""Which runtime answers: a version's compiled ONNX graph when it passed parity at
registration (ML_API_RUNTIME=auto), the scikit-learn Pipeline otherwise, with the reason
on /model and the runtime on /metrics. Real models in the session MLflow store."""

from __future__ import annotations

import dataclasses
import uuid
import warnings
from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml_assets.core.data.schema_inference import checked_schema
from ml_assets_tests.support.models import (
    experiment_id,
    register,
    train_frame,
    train_regression,
)
from ml_assets_tests.support.user_factory import TRUSTED, make_model
from serving.app import create_app
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PENGUINS = files("palmerpenguins") / "data" / "penguins.csv"


@pytest.fixture(scope="module")
def cancer(cancer_champion):
    """The session's breast-cancer forest (its champion is registered with its graph)."""
    return cancer_champion.trained


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
                                                           cancer_champion, tmp_path):
    compiled_champion = cancer_champion.name
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
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]), compile=True)
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
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]), compile=True)
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
    register(cancer, name, experiment_id(name, mlflow_store["artifact_root"]), compile=True)
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
    register(cancer, name, experiment, compile=True)
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


class _StubGraph:
    """A compiled graph whose answers are given: `proba(rows)` -> probabilities."""

    def __init__(self, proba):
        self.proba = proba
        self.calls = 0

    def predict_proba(self, rows):
        self.calls += 1
        return self.proba(rows)


def _sklearn_answers(cancer, records):
    proba = cancer.pipeline.predict_proba(pd.DataFrame(records))
    return proba, [str(c) for c in cancer.pipeline.classes_[proba.argmax(axis=1)]]


@pytest.mark.parametrize("rows", [1, 100], ids=["inline", "predict_thread"])
def test_rows_the_graph_cannot_answer_alone_get_the_pipelines_answer(
        mlflow_store, cancer, cancer_champion, tmp_path, rows):
    """Non-finite graph answers (float32 overflow) and near ties (the top two within
    float32 error, where the graph's argmax could differ) are answered by the Pipeline:
    never a NaN, never the graph's coin flip."""
    records = _records(cancer.X_test.head(rows))
    expected, labels = _sklearn_answers(cancer, records)
    broken = _StubGraph(lambda r: np.full((len(r), 2), np.inf))
    # Near ties on every row, leaning to the class the Pipeline does NOT pick.
    leaning = _StubGraph(lambda r: np.array([[0.5 + 2e-6, 0.5 - 2e-6] if label == "malignant"
                                             else [0.5 - 2e-6, 0.5 + 2e-6]
                                             for label in labels[:len(r)]]))
    with _client(mlflow_store, cancer_champion.name, tmp_path) as client:
        store = client.app.state.service.store
        served = store.current
        for graph in (broken, leaning):
            store.current = dataclasses.replace(served, compiled=graph)
            if rows == 1:
                answers = [client.post("/predict", json=records[0]).json()]
            else:
                answers = client.post("/predict/batch",
                                      json={"records": records}).json()["predictions"]
            assert graph.calls >= 1
            assert [a["prediction"] for a in answers] == labels
            got = np.array([[a["probabilities"]["benign"], a["probabilities"]["malignant"]]
                            for a in answers])
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_a_model_that_learned_none_as_a_category_gets_none(mlflow_store, tmp_path):
    """A version trained on frames whose missing strings were None (before training
    normalised them to NaN) learned None as a category: serving gives it None, so its
    answers stay what it was trained to give."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from ml_assets.core.data.preprocessing import model_inputs
    from ml_assets_tests.support.models import TrainedPipeline
    from serving.model.served import learned_none_category

    frame = pd.read_csv(PENGUINS).dropna(subset=["bill_length_mm", "bill_depth_mm"])
    frame["sex"] = frame["sex"].astype(object).where(frame["sex"].notna(), None)
    features = ["island", "sex", "bill_length_mm", "bill_depth_mm"]
    pipeline = Pipeline([
        ("columns", ColumnTransformer([
            ("categorical", Pipeline([
                ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                ("one_hot", OneHotEncoder(handle_unknown="ignore"))]), ["island", "sex"]),
            ("numeric", "passthrough", ["bill_length_mm", "bill_depth_mm"])])),
        ("model", RandomForestClassifier(n_estimators=10, random_state=0))])
    pipeline.fit(frame[features], frame["species"])
    assert learned_none_category(pipeline)
    assert model_inputs(frame[features])["sex"].isna().sum() == frame["sex"].isna().sum()
    assert not any(v is None for v in model_inputs(frame[features])["sex"])  # now NaN
    schema = checked_schema(frame[[*features, "species"]], "species", name="penguins")
    trained = TrainedPipeline(pipeline, frame[features], frame[features], schema, "species")
    name = f"runtime_none_{uuid.uuid4().hex[:8]}"
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]), compile=False)
    rows = frame[frame["sex"].isna()][features].head(5)
    with _client(mlflow_store, name, tmp_path) as client:
        answers = client.post("/predict/batch", json={"records": _records(rows)}).json()
    expected = pipeline.predict_proba(rows)  # None in `sex`, as in training
    got = np.array([[p["probabilities"][str(c)] for c in pipeline.classes_]
                    for p in answers["predictions"]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_the_sklearn_runtime_answers_from_rows_with_the_pipelines_own_numbers(
        mlflow_store, tmp_path):
    """A version without a graph is answered by the Pipeline from rows (its preprocessing
    replayed in numpy, serving/model/row_pipeline.py): every probability is the one the
    Pipeline gives on the DataFrame, exactly, with missing values and unseen categories,
    one row or a batch."""
    from serving.model.feature_specs import frame_from_rows

    frame = pd.read_csv(PENGUINS)
    schema = checked_schema(frame, "species", name="penguins")
    trained = train_frame(frame, schema, "species", n_estimators=30)
    name = f"runtime_rows_{uuid.uuid4().hex[:8]}"
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]))
    records = _records(trained.X_test)
    records[0] = {**records[0], "sex": None, "bill_length_mm": None}
    records[1] = {**records[1], "island": "Atlantis"}  # unseen (accept policy)
    with _client(mlflow_store, name, tmp_path, input_policy="accept") as client:
        served = client.app.state.service.store.current
        assert served.runtime == "sklearn" and served.rows_pipeline is not None, \
            served.rows_reason
        batch = client.post("/predict/batch", json={"records": records})
        one = client.post("/predict", json=records[0])
    assert batch.status_code == one.status_code == 200, (batch.text, one.text)
    rows = [[r[spec.name] for spec in served.features] for r in records]
    expected = trained.pipeline.predict_proba(frame_from_rows(rows, served.features))
    classes = [str(c) for c in trained.pipeline.classes_]
    got = np.array([[p["probabilities"][c] for c in classes]
                    for p in batch.json()["predictions"]])
    assert np.array_equal(got, expected)
    assert [one.json()["probabilities"][c] for c in classes] == expected[0].tolist()
