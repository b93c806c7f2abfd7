"""Regression models served by a real `python -m serving` (uvicorn on 127.0.0.1): a
forest (no interval), a BayesianRidge (95% intervals) and a user-factory Pipeline with
its own transformer, swapped by /admin/reload, over HTTP; the prediction log's numbers
after a graceful stop. The in-process cases: ml_assets_tests/api/test_serving_regression.py."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import BayesianRidge

from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets_tests.support import user_factory
from ml_assets_tests.support.api_process import api_process
from ml_assets_tests.support.models import experiment_id, register, train_regression
from ml_assets_tests.support.models import same_numbers as _close
from serving.http.responses import (
    InvocationsResponse,
    ModelInfo,
    PredictBatchResponse,
    PredictResponse,
)
from serving.model.served import INTERVAL_Z

CLASSIFIER_KEYS = {"confidence", "probabilities"}


@pytest.fixture(scope="module")
def regressors():
    """A forest (no standard deviation: no interval) and a BayesianRidge (intervals)."""
    return (train_regression(RandomForestRegressor(n_estimators=15, random_state=0)),
            train_regression(BayesianRidge()))


def test_regression_models_over_http(mlflow_store, unique_name, tmp_path, regressors,
                                     monkeypatch):
    """One real server: a forest (no interval), then a BayesianRidge (intervals), then a
    user-factory Pipeline with its own transformer, swapped by /admin/reload."""
    forest, bayes = regressors
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", user_factory.TRUSTED)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(forest, unique_name, experiment, metrics={"rmse": 55.0})
    env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": unique_name,
           "ML_SKOPS_TRUSTED_TYPES": user_factory.TRUSTED}
    with api_process(env, tmp_path) as api:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            info = client.get("/model").json()
            ModelInfo.model_validate(info)
            assert info["task"] == "regression" and info["classes"] == []
            assert info["prediction_interval"] is False and info["version"] == "1"

            rows = forest.X_test.head(6).to_dict(orient="records")
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
        code, _ = api.stop()  # SIGTERM, graceful: the prediction log is flushed
        assert code == 0

    log = SQLitePredictionLog(api.prediction_log, read_only=True)
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
