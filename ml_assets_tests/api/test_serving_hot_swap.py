"""Hot swap: a new champion is picked up by /admin/reload and by polling, swapped
atomically; a broken candidate is rejected and the old model keeps serving."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from ml_assets.core.data.datasets import SyntheticSpec
from ml_assets_tests.support.models import (
    experiment_id,
    register,
    train_breast_cancer,
    train_synthetic,
)
from serving.app import create_app
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def models():
    """Two breast-cancer forests that disagree on some rows (v1 is a weak stump forest)."""
    return train_breast_cancer(n_estimators=5, max_depth=1, seed=1), \
        train_breast_cancer(n_estimators=20, seed=2)


@pytest.fixture
def registry(mlflow_store, models, unique_name):
    """A registered model with v1 as champion: (name, experiment id)."""
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(models[0], unique_name, experiment, metrics={"f1": 0.80})
    return unique_name, experiment


def settings_for(mlflow_store, name, tmp_path, **overrides) -> ServingSettings:
    return ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                           prediction_log_path=tmp_path / "log.db",
                           **{"poll_seconds": 0, **overrides})


def _row(models) -> dict:
    return models[1].X_test.iloc[0].to_dict()


def _failures(client, reason: str) -> float:
    prefix = f'ml_api_model_load_failures_total{{reason="{reason}"}} '
    line = next((x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix)),
                prefix + "0")
    return float(line.split()[-1])


def test_admin_reload_swaps_to_the_new_champion(mlflow_store, registry, models, tmp_path):
    name, experiment = registry
    with TestClient(create_app(settings_for(mlflow_store, name, tmp_path))) as client:
        assert client.post("/predict", json=_row(models)).json()["model_version"] == "1"
        assert client.post("/admin/reload", json={}).json() == {"status": "unchanged",
                                                       "serving_version": "1"}
        register(models[1], name, experiment, metrics={"f1": 0.97})
        result = client.post("/admin/reload", json={})
        assert result.status_code == 200
        assert result.json() == {"status": "swapped", "serving_version": "2",
                                 "previous_version": "1"}
        assert client.post("/predict", json=_row(models)).json()["model_version"] == "2"
        assert client.get("/model").json()["metrics"] == {"f1": 0.97}
        assert f'ml_api_model_version{{model_name="{name}"}} 2.0' in client.get("/metrics").text
        # Rolling the alias back is a swap like any other.
        MlflowClient().set_registered_model_alias(name, "champion", "1")
        assert client.post("/admin/reload", json={}).json()["serving_version"] == "1"
        assert client.post("/admin/reload?force=true", json={}).json()["status"] == "swapped"


def test_polling_picks_up_the_new_champion(mlflow_store, registry, models, tmp_path):
    name, experiment = registry
    settings = settings_for(mlflow_store, name, tmp_path, poll_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").json()["model_version"] == "1"
        register(models[1], name, experiment)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if client.get("/ready").json()["model_version"] == "2":
                break
            time.sleep(0.1)
        assert client.post("/predict", json=_row(models)).json()["model_version"] == "2"


def _artifact_dir(model_info) -> Path:
    location = mlflow.get_logged_model(model_info.model_id).artifact_location
    return Path(urlparse(location).path)


def test_a_version_that_fails_to_load_is_rejected(mlflow_store, registry, models, tmp_path):
    name, experiment = registry
    settings = settings_for(mlflow_store, name, tmp_path, poll_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        _, info = register(models[1], name, experiment, alias=None)
        (_artifact_dir(info) / "model.skops").write_bytes(b"not a model")
        MlflowClient().set_registered_model_alias(name, "champion", "2")
        deadline = time.monotonic() + 20  # polling finds it and rejects it
        while time.monotonic() < deadline and _failures(client, "load_error") < 1:
            time.sleep(0.1)
        time.sleep(0.6)  # more polls: the same broken version is not counted again
        assert _failures(client, "load_error") == 1.0
        response = client.post("/predict", json=_row(models))
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        assert client.get("/ready").status_code == 200
        result = client.post("/admin/reload", json={})  # an explicit reload tries it again
        assert result.status_code == 409
        body = result.json()
        assert body["status"] == "rejected" and body["candidate_version"] == "2"
        assert body["serving_version"] == "1" and "failed to load" in body["detail"]
        assert _failures(client, "load_error") == 2.0
        assert client.get("/model").json()["version"] == "1"


def test_a_version_that_fails_its_smoke_prediction_is_rejected(mlflow_store, registry,
                                                               models, tmp_path):
    name, experiment = registry
    trained = models[1]
    # The schema it carries lacks a feature the pipeline needs: loads, cannot predict.
    narrower = trained.schema.remove_columns(["mean radius"])
    register(trained, name, experiment, schema=narrower)
    with TestClient(create_app(settings_for(mlflow_store, name, tmp_path))) as client:
        # Start-up with a broken champion: the service runs, not ready.
        assert client.get("/ready").status_code == 503
        assert "smoke prediction" in client.get("/ready").json()["detail"]
        assert _failures(client, "smoke_test_failed") == 1.0
        MlflowClient().set_registered_model_alias(name, "champion", "1")
        assert client.post("/admin/reload", json={}).json()["status"] == "swapped"
        MlflowClient().set_registered_model_alias(name, "champion", "2")
        result = client.post("/admin/reload", json={})
        assert result.status_code == 409 and "smoke prediction" in result.json()["detail"]
        assert client.post("/predict", json=_row(models)).json()["model_version"] == "1"
        assert _failures(client, "smoke_test_failed") == 2.0


def test_schema_change_regenerates_the_request_model(mlflow_store, registry, models,
                                                     tmp_path):
    name, experiment = registry
    spec = SyntheticSpec(n_rows=300, n_numeric=2, n_categorical=1, n_categories=2)
    with TestClient(create_app(settings_for(mlflow_store, name, tmp_path))) as client:
        assert "mean radius" in client.get("/openapi.json").json()["components"]["schemas"][
            "PredictRequest"]["properties"]
        register(train_synthetic(spec), name, experiment)
        assert client.post("/admin/reload", json={}).json()["status"] == "swapped"
        request = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
        assert list(request["properties"]) == ["num_00", "num_01", "cat_00"]
        assert client.post("/predict", json=_row(models)).status_code == 422
        response = client.post("/predict", json={"num_00": 0.1, "num_01": 2.0, "cat_00": "c1"})
        assert response.status_code == 200 and response.json()["model_version"] == "2"


def test_requests_in_flight_during_a_swap_all_succeed(mlflow_store, registry, models,
                                                      tmp_path):
    """Many concurrent requests while the champion changes: none fails, each answer comes
    from one whole model, and once the swap is done only the new version answers."""
    name, experiment = registry
    app = create_app(settings_for(mlflow_store, name, tmp_path))
    row = _row(models)

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                async def burst(n):
                    return await asyncio.gather(*(client.post("/predict", json=row)
                                                  for _ in range(n)))

                register(models[1], name, experiment)
                before = asyncio.ensure_future(burst(60))
                reload = asyncio.ensure_future(client.post("/admin/reload", json={}))
                during = await burst(60)
                swapped = (await reload).json()
                after = await burst(20)
                return await before + during, swapped, after

    around, swapped, after = asyncio.run(scenario())
    assert swapped["status"] == "swapped"
    assert all(r.status_code == 200 for r in around + after)
    assert {r.json()["model_version"] for r in around} <= {"1", "2"}
    assert {r.json()["model_version"] for r in after} == {"2"}
    expected = {"1": models[0], "2": models[1]}
    for response in around[:5] + around[-5:]:
        body = response.json()
        pipeline = expected[body["model_version"]].pipeline
        proba = pipeline.predict_proba(models[1].X_test.head(1))[0]
        assert body["probabilities"] == pytest.approx(dict(zip(pipeline.classes_, proba,
                                                               strict=True)))
