"""Regression models served: numeric predictions (no confidence, no probabilities),
95% intervals when the estimator gives a standard deviation, the predicted-value
histogram, the prediction log's numbers; hot swap between a classifier and a regressor,
rollback, and a user-factory model with its own transformer. Endpoint tests run
`python -m serving` under uvicorn on 127.0.0.1; loops are bounded."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import BayesianRidge

from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets.core.registry import champion as champion_registry
from ml_assets_tests.support import user_factory
from ml_assets_tests.support.models import (
    experiment_id,
    register,
    train_breast_cancer,
    train_regression,
)
from ml_assets_tests.support.services import free_port, wait_http
from serving.app import create_app
from serving.batcher import MicroBatcher
from serving.http.responses import (
    InvocationsResponse,
    ModelInfo,
    PredictBatchResponse,
    PredictResponse,
)
from serving.model.served import INTERVAL_Z, offers_std
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
CLASSIFIER_KEYS = {"confidence", "probabilities"}


@pytest.fixture(scope="module")
def forest():
    return train_regression(RandomForestRegressor(n_estimators=15, random_state=0))


@pytest.fixture(scope="module")
def bayes():
    return train_regression(BayesianRidge())


def _records(trained, n: int) -> list[dict]:
    return trained.X_test.head(n).to_dict(orient="records")


def _close(values, expected) -> bool:
    return np.allclose(np.asarray(values, dtype=float), np.asarray(expected, dtype=float),
                       rtol=1e-12, atol=1e-9)


def _start(name: str, mlflow_store, root: Path, extra_env: dict[str, str]):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": name, "ML_API_HOST": "127.0.0.1",
           "ML_API_PORT": str(port), "ML_API_POLL_SECONDS": "0",
           "ML_PLATFORM_HOME": str(root / "home"),
           "ML_PREDICTION_LOG_PATH": str(root / "log.db"), **extra_env}
    output = open(root / "server.log", "wb")  # noqa: SIM115 - closed by the caller
    process = subprocess.Popen([sys.executable, "-m", "serving", "--log-level", "warning"],
                               cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", process, output


class FakeRegressor:
    """Stands in for a regressor's ServedModel: value 2 * x, std x (or none)."""

    is_regression = True
    compiled = None  # no ONNX graph: the batcher's predict thread answers

    def __init__(self, with_std: bool):
        self.with_std = with_std
        self.calls: list[int] = []

    def predict_values(self, rows):
        self.calls.append(len(rows))
        values = np.array([row[0] for row in rows], dtype=float)
        return 2 * values, (values if self.with_std else None)


@pytest.mark.parametrize("with_std", [True, False])
def test_the_batcher_calls_predict_for_regressors_and_splits_the_answers(with_std):
    model = FakeRegressor(with_std)

    async def body():
        batcher = MicroBatcher(max_rows=64, max_wait_s=0.005)
        batcher.start()
        try:
            async def one(i):
                with batcher.tracking():
                    await asyncio.sleep(0)
                    return await batcher.predict(model, [[float(i)], [i + 0.5]])
            return await asyncio.gather(*(one(i) for i in range(10)))
        finally:
            await batcher.stop()

    for i, (values, std) in enumerate(asyncio.run(body())):
        assert values.tolist() == [2.0 * i, 2 * i + 1.0]
        assert (std.tolist() == [float(i), i + 0.5]) if with_std else std is None
    assert sum(model.calls) == 20 and len(model.calls) < 10  # shared calls


def test_the_estimator_decides_whether_there_is_an_interval(forest, bayes):
    assert offers_std(bayes.pipeline) and not offers_std(forest.pipeline)
    assert not offers_std(train_regression(user_factory.make_model(), scale=False).pipeline)


def test_regression_models_over_http(mlflow_store, unique_name, tmp_path, forest, bayes,
                                     monkeypatch):
    """One real server: a forest (no interval), then a BayesianRidge (intervals), then a
    user-factory Pipeline with its own transformer, swapped by /admin/reload."""
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", user_factory.TRUSTED)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(forest, unique_name, experiment, metrics={"rmse": 55.0})
    url, process, output = _start(unique_name, mlflow_store, tmp_path,
                                  {"ML_SKOPS_TRUSTED_TYPES": user_factory.TRUSTED})
    try:
        wait_http(f"{url}/ready", process,
                  detail=lambda: (tmp_path / "server.log").read_text(errors="replace"))
        with httpx.Client(base_url=url, timeout=30) as client:
            info = client.get("/model").json()
            ModelInfo.model_validate(info)
            assert info["task"] == "regression" and info["classes"] == []
            assert info["prediction_interval"] is False and info["version"] == "1"

            rows = _records(forest, 6)
            expected = forest.pipeline.predict(forest.X_test.head(6))
            one = client.post("/predict", json=rows[0]).json()
            PredictResponse.model_validate(one)
            assert set(one) == {"prediction", "request_id", "model_name", "model_version",
                                "variant"} and one["variant"] == "champion"
            assert isinstance(one["prediction"], float) and _close([one["prediction"]],
                                                                   expected[:1])
            batch = client.post("/predict/batch", json={"records": rows}).json()
            PredictBatchResponse.model_validate(batch)
            assert all(set(p) == {"prediction"} for p in batch["predictions"])
            assert _close([p["prediction"] for p in batch["predictions"]], expected)
            records = client.post("/invocations", json={"dataframe_records": rows}).json()
            frame = forest.X_test.head(6)
            split = client.post("/invocations", json={"dataframe_split": {
                "columns": list(frame.columns), "data": frame.to_numpy().tolist()}}).json()
            InvocationsResponse.model_validate(records)
            assert _close(records["predictions"], expected)
            assert _close(split["predictions"], expected)
            assert client.post("/predict", json={**rows[0], "age": "old"}).status_code == 422

            metrics = client.get("/metrics").text
            assert 'ml_api_predicted_value_count{model_version="1"} 19.0' in metrics
            assert "ml_api_predictions_total{" not in metrics  # no classes to count

            # BayesianRidge: mean +/- 1.96 std.
            register(bayes, unique_name, experiment)
            assert client.post("/admin/reload", json={}).json()["status"] == "swapped"
            assert client.get("/model").json()["prediction_interval"] is True
            mean, std = bayes.pipeline.predict(bayes.X_test.head(6), return_std=True)
            one = client.post("/predict", json=rows[0]).json()
            PredictResponse.model_validate(one)
            assert one["model_version"] == "2" and not CLASSIFIER_KEYS & set(one)
            interval = one["prediction_interval"]
            assert interval["level"] == 0.95 and _close([one["prediction"]], mean[:1])
            assert _close([interval["lower"], interval["upper"]],
                          [mean[0] - INTERVAL_Z * std[0], mean[0] + INTERVAL_Z * std[0]])
            batch = client.post("/predict/batch", json={"records": rows}).json()
            assert _close([p["prediction_interval"]["upper"] for p in batch["predictions"]],
                          mean + INTERVAL_Z * std)
            invoked = client.post("/invocations", json={"dataframe_records": rows}).json()
            assert _close(invoked["predictions"], mean)

            # A user-factory model: the user's Pipeline with a transformer of their own,
            # trusted through ML_SKOPS_TRUSTED_TYPES.
            custom = train_regression(user_factory.make_model(), scale=False)
            register(custom, unique_name, experiment)
            assert client.post("/admin/reload", json={}).json()["status"] == "swapped"
            one = client.post("/predict", json=rows[0]).json()
            assert one["model_version"] == "3" and "prediction_interval" not in one
            expected = custom.pipeline.predict(custom.X_test.head(6))
            invoked = client.post("/invocations", json={"dataframe_records": rows}).json()
            assert _close(invoked["predictions"], expected)
            assert _close([one["prediction"]], expected[:1])
        process.send_signal(signal.SIGTERM)  # graceful: the prediction log is flushed
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        output.close()

    log = SQLitePredictionLog(tmp_path / "log.db", read_only=True)
    try:
        (day,) = log.days()
        logged = log.read_day(day)
    finally:
        log.close()
    assert logged["prediction"].dtype == np.float64  # every row is a regressor's
    assert all(p == {} for p in logged["probabilities"])
    assert logged["confidence"].isna().all()
    first = logged[logged["model_version"] == "1"].iloc[0]
    assert first["prediction"] == float(forest.pipeline.predict(forest.X_test.head(1))[0])


def _settings(mlflow_store, name: str, tmp_path: Path) -> ServingSettings:
    return ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                           prediction_log_path=tmp_path / "log.db", poll_seconds=0)


def test_hot_swap_classifier_regressor_classifier(mlflow_store, unique_name, tmp_path,
                                                  bayes):
    """Alias moves + /admin/reload change the response shape, both ways."""
    classifier = train_breast_cancer(n_estimators=5, max_depth=2, seed=1)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(classifier, unique_name, experiment)
    register(bayes, unique_name, experiment, alias=None)
    client_mlflow = MlflowClient()
    cancer_row = classifier.X_test.iloc[0].to_dict()
    diabetes_row = bayes.X_test.iloc[0].to_dict()
    with TestClient(create_app(_settings(mlflow_store, unique_name, tmp_path))) as client:
        answer = client.post("/predict", json=cancer_row).json()
        assert answer["prediction"] in ("benign", "malignant") and "confidence" in answer
        assert client.get("/model").json()["task"] == "binary"

        client_mlflow.set_registered_model_alias(unique_name, "champion", "2")
        assert client.post("/admin/reload", json={}).json()["status"] == "swapped"
        assert client.post("/predict", json=cancer_row).status_code == 422  # new schema
        answer = client.post("/predict", json=diabetes_row).json()
        assert isinstance(answer["prediction"], float) and "prediction_interval" in answer
        assert not CLASSIFIER_KEYS & set(answer)
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "age" in schema["PredictRequest"]["properties"]
        assert client.get("/model").json()["task"] == "regression"

        client_mlflow.set_registered_model_alias(unique_name, "champion", "1")
        assert client.post("/admin/reload", json={}).json()["serving_version"] == "1"
        answer = client.post("/predict", json=cancer_row).json()
        assert answer["model_version"] == "1" and answer["prediction"] in ("benign",
                                                                           "malignant")
        assert math.isclose(sum(answer["probabilities"].values()), 1.0)
        invoked = client.post("/invocations", json={"dataframe_records": [cancer_row]})
        assert invoked.json()["predictions"] == classifier.pipeline.predict(
            classifier.X_test.head(1)).tolist()
        metrics = client.get("/metrics").text
        assert 'ml_api_predicted_value_count{model_version="2"} 1.0' in metrics
        assert 'ml_api_predictions_total{model_version="1",' in metrics


def test_rollback_of_a_regression_champion(mlflow_store, unique_name, tmp_path, forest,
                                           bayes):
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    client_mlflow = MlflowClient()
    register(forest, unique_name, experiment, alias=None)
    register(bayes, unique_name, experiment, alias=None)
    champion_registry.promote(client_mlflow, unique_name, "1", None, {"promotion.reason": "test"})
    champion_registry.promote(client_mlflow, unique_name, "2", "1", {"promotion.reason": "test"})
    row = forest.X_test.iloc[0].to_dict()
    with TestClient(create_app(_settings(mlflow_store, unique_name, tmp_path))) as client:
        assert "prediction_interval" in client.post("/predict", json=row).json()
        change = champion_registry.rollback(client_mlflow, unique_name,
                                            reason="regression test")
        assert change.version == "1"
        assert client.post("/admin/reload", json={}).json() == {
            "status": "swapped", "serving_version": "1", "previous_version": "2"}
        answer = client.post("/predict", json=row).json()
        assert answer["model_version"] == "1" and "prediction_interval" not in answer
        assert _close([answer["prediction"]],
                      forest.pipeline.predict(forest.X_test.head(1)))


def test_promotion_and_rollback_of_a_user_factory_champion(mlflow_store, unique_name,
                                                           tmp_path, forest, monkeypatch):
    """A user's own Pipeline (custom transformer, listed by the operator) is promoted over
    a built-in model, served, and rolled back in one step; the API follows both ways."""
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", user_factory.TRUSTED)
    custom = train_regression(user_factory.make_model(), scale=False)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    client_mlflow = MlflowClient()
    register(forest, unique_name, experiment, alias=None)
    register(custom, unique_name, experiment, alias=None)
    champion_registry.promote(client_mlflow, unique_name, "1", None, {"promotion.reason": "t"})
    row = forest.X_test.iloc[0].to_dict()
    with TestClient(create_app(_settings(mlflow_store, unique_name, tmp_path))) as client:
        assert client.post("/predict", json=row).json()["model_version"] == "1"
        champion_registry.promote(client_mlflow, unique_name, "2", "1",
                                  {"promotion.reason": "t"})
        assert client.post("/admin/reload", json={}).json()["serving_version"] == "2"
        answer = client.post("/predict", json=row).json()
        assert answer["model_version"] == "2"
        assert _close([answer["prediction"]], custom.pipeline.predict(forest.X_test.head(1)))
        assert champion_registry.rollback(client_mlflow, unique_name,
                                          reason="factory test").version == "1"
        assert client.post("/admin/reload", json={}).json()["serving_version"] == "1"
        answer = client.post("/predict", json=row).json()
        assert answer["model_version"] == "1"
        assert _close([answer["prediction"]], forest.pipeline.predict(forest.X_test.head(1)))


def test_a_non_finite_prediction_is_a_422_naming_the_rows_and_nothing_is_logged(
        mlflow_store, unique_name, tmp_path, monkeypatch):
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", user_factory.OVERFLOW_TRUSTED)
    model = train_regression(user_factory.OverflowRegressor(limit=1.0), scale=False)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(model, unique_name, experiment)
    rows = _records(model, 3)
    rows[1][model.X_test.columns[0]] = 5.0  # beyond the limit: the model answers inf
    with TestClient(create_app(_settings(mlflow_store, unique_name, tmp_path))) as client:
        response = client.post("/predict/batch", json={"records": rows})
        assert response.status_code == 422, response.text
        body = response.json()
        assert "record(s) 1 is not a finite number" in body["message"]
        assert body["detail"][0]["loc"] == ["records", 1]
        ok = client.post("/predict/batch", json={"records": [rows[0], rows[2]]})
        assert ok.status_code == 200
    from ml_assets.core.prediction_log import SQLitePredictionLog
    logged = SQLitePredictionLog(tmp_path / "log.db", read_only=True)
    day = logged.days()[0]
    assert len(logged.read_day(day)) == 2  # only the answered request's rows
