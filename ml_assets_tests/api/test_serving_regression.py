"""Regression models served: numeric predictions (no confidence, no probabilities),
95% intervals when the estimator gives a standard deviation, the predicted-value
histogram, the prediction log's numbers; hot swap between a classifier and a regressor,
rollback, and a user-factory model with its own transformer, in-process (TestClient).
Over HTTP from a real process: ml_assets_tests/e2e/test_serving_regression_process.py."""

from __future__ import annotations

import asyncio
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import BayesianRidge

from ml_assets.core.registry import champion as champion_registry
from ml_assets_tests.support import user_factory
from ml_assets_tests.support.models import (
    experiment_id,
    register,
    train_breast_cancer,
    train_regression,
)
from ml_assets_tests.support.models import same_numbers as _close
from serving.app import create_app
from serving.batcher import MicroBatcher
from serving.model.served import offers_std
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

CLASSIFIER_KEYS = {"confidence", "probabilities"}


@pytest.fixture(scope="module")
def forest():
    return train_regression(RandomForestRegressor(n_estimators=15, random_state=0))


@pytest.fixture(scope="module")
def bayes():
    return train_regression(BayesianRidge())


def _records(trained, n: int) -> list[dict]:
    return trained.X_test.head(n).to_dict(orient="records")


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
