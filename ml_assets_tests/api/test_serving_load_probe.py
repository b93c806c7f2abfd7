"""The load probe: while a version serves, a new one is loaded and smoke-predicted in a
child process first, with a time and a memory limit (serving/model/load_probe.py). A
version whose load outruns them is refused (409, `load_probe_failed`), as champion and
as canary, and the served version keeps answering; within them it swaps as before. A
child that crashes, runs out of memory or hangs is reported as such, and the next probe
still runs."""

from __future__ import annotations

import time
import warnings
from dataclasses import replace

import pytest
from mlflow import MlflowClient

from ml_assets.core.rollout.plan import CLIENT_KEY_HEADER, start_rollout
from ml_assets_tests.support import probe_children
from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer
from serving.app import create_app
from serving.http.metrics import ServiceMetrics
from serving.model import load_probe
from serving.model.store import ModelRejected, ModelStore, VersionRecord
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def models():
    return train_breast_cancer(n_estimators=5, max_depth=1, seed=1), \
        train_breast_cancer(n_estimators=20, seed=2)


@pytest.fixture
def registry(mlflow_store, models, unique_name):
    """v1 the champion, v2 registered (no alias yet): (name, experiment id)."""
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(models[0], unique_name, experiment, metrics={"f1": 0.80})
    register(models[1], unique_name, experiment, metrics={"f1": 0.97}, alias=None)
    return unique_name, experiment


def _settings(mlflow_store, name, tmp_path, **overrides) -> ServingSettings:
    return ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                           prediction_log_path=tmp_path / "log.db", poll_seconds=0,
                           **overrides)


def _answers_with(client, models, version: str) -> None:
    response = client.post("/predict", json=models[1].X_test.iloc[0].to_dict())
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == version


def _promote_and_reload(client, name: str) -> tuple[int, dict, float]:
    MlflowClient().set_registered_model_alias(name, "champion", "2")
    started = time.perf_counter()
    response = client.post("/admin/reload", json={})
    return response.status_code, response.json(), time.perf_counter() - started


def test_a_version_within_the_limits_is_probed_and_swapped(mlflow_store, registry, models,
                                                           tmp_path, caplog):
    name, _ = registry
    with TestClient(create_app(_settings(mlflow_store, name, tmp_path))) as client:
        _answers_with(client, models, "1")
        with caplog.at_level("INFO", logger="serving.model.store"):
            status, body, _ = _promote_and_reload(client, name)
        assert status == 200 and body["status"] == "swapped", body
        assert "version 2 loaded in its probe" in caplog.text  # the child ran
        _answers_with(client, models, "2")


def test_a_version_over_the_limits_is_refused_and_the_champion_keeps_serving(
        mlflow_store, registry, models, tmp_path):
    name, _ = registry
    says = "did not finish within 0.05 s"
    settings = _settings(mlflow_store, name, tmp_path, load_probe_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        _answers_with(client, models, "1")  # the start-up load is not probed
        status, body, _ = _promote_and_reload(client, name)
        assert status == 409, body
        assert body["status"] == "rejected" and body["serving_version"] == "1"
        assert says in body["detail"] and "a child process limited to" in body["detail"]
        assert body["detail"].startswith("version 2 refused: its load and smoke prediction")
        refused = client.get("/model").json()["refused"]
        assert refused["version"] == "2" and refused["reason"] == "load_probe_failed"
        assert 'ml_api_model_load_failures_total{reason="load_probe_failed"} 1.0' in \
            client.get("/metrics").text
        _answers_with(client, models, "1")
        assert client.get("/health").status_code == 200


def test_a_canary_over_the_limits_is_refused_and_the_champion_answers(
        mlflow_store, registry, models, tmp_path):
    name, _ = registry
    settings = _settings(mlflow_store, name, tmp_path, load_probe_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        start_rollout(MlflowClient(), name, "canary", "2", "1", ((0.0, 1.0),))  # everyone
        body = client.post("/admin/reload", json={}).json()
        assert body["rollout"]["status"] == "rejected", body
        assert "a child process limited to" in body["rollout"]["detail"]
        for key in ("a", "b", "c"):
            response = client.post("/predict", json=models[1].X_test.iloc[0].to_dict(),
                                   headers={CLIENT_KEY_HEADER: key})
            assert response.json()["model_version"] == "1"
            assert response.json()["variant"] == "champion"


def test_the_probe_is_a_setting(mlflow_store, registry, tmp_path):
    """ML_API_LOAD_PROBE_SECONDS=0 turns it off: a version is then loaded in-process."""
    name, _ = registry
    store = ModelStore(_settings(mlflow_store, name, tmp_path, load_probe_seconds=0),
                       ServiceMetrics())
    store.current = store.load("1")  # as if serving
    assert store.load("2").version == "2"
    store.settings = _settings(mlflow_store, name, tmp_path, load_probe_seconds=0.05)
    with pytest.raises(ModelRejected) as refused:
        store.load("2")
    assert refused.value.reason == "load_probe_failed"


@pytest.mark.parametrize("work, says", [
    (probe_children.crash, "killed a child process limited to 30 s (ML_API_LOAD_PROBE_"
                           "SECONDS) and 64 MiB more memory (ML_API_LOAD_PROBE_MEMORY_BYTES) "
                           "(SIGSEGV)"),
    (probe_children.allocate, "ran out of memory in a child process limited to 30 s"),
    (probe_children.hang, "did not finish within 2 s"),
])
def test_a_child_that_crashes_runs_out_of_memory_or_hangs_is_reported(tmp_path, work, says):
    """The real forkserver, limits and reporting, with a child that dies instead of
    loading; the serving process (this one) carries on, in bounded time."""
    settings = ServingSettings(load_probe_seconds=30 if work is not probe_children.hang
                               else 2, load_probe_memory_bytes=64 * 2**20,
                               prediction_log_path=tmp_path / "log.db")
    started = time.perf_counter()
    with pytest.raises(load_probe.ProbeFailed) as failed:
        load_probe.probe(work, settings, "2", str(tmp_path), VersionRecord(None, {}, {}))
    assert says in str(failed.value), str(failed.value)
    assert time.perf_counter() - started < 60  # a cold forkserver start included
    # The next probe still works: the forkserver survived its child.
    with pytest.raises(load_probe.ProbeFailed, match="did not finish within 0.5 s"):
        load_probe.probe(probe_children.hang, replace(settings, load_probe_seconds=0.5), "2",
                         str(tmp_path), VersionRecord(None, {}, {}))


def test_the_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("ML_API_LOAD_PROBE_SECONDS", "7.5")
    monkeypatch.setenv("ML_API_LOAD_PROBE_MEMORY_BYTES", str(2**30))
    settings = ServingSettings.from_env()
    assert (settings.load_probe_seconds, settings.load_probe_memory_bytes) == (7.5, 2**30)
    assert ServingSettings().load_probe_seconds == 120.0  # on by default
