"""Gradual rollouts in the API: a canary answers a sticky share of the clients, a
shadow scores copies that are logged and never returned, a failing canary falls back
to the champion: the router alone and the app in-process (TestClient), on the real
MLflow registry. The running service under real traffic:
ml_assets_tests/e2e/test_serving_rollout_process.py."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets.core.rollout.plan import (
    CANARY_ALIAS,
    CLIENT_KEY_HEADER,
    RolloutPlan,
    end_rollout,
    serves_canary,
    start_rollout,
)
from ml_assets_tests.support.models import (
    champion_and_challenger,
    register_champion_and_challenger,
)
from serving.app import create_app
from serving.http.metrics import ServiceMetrics
from serving.model.store import ModelRejected, ModelStore
from serving.rollout import RolloutRouter, RolloutState, request_key
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def models():
    """Champion (a weak stump forest) and challenger (a real forest): they disagree on
    some rows."""
    return champion_and_challenger()


@pytest.fixture(scope="module")
def registered(mlflow_store, models):
    """v1 champion, v2 registered without an alias (the challenger), once per module:
    (name, client)."""
    name = register_champion_and_challenger(models, "t_rollout", mlflow_store["artifact_root"])
    return name, MlflowClient(mlflow_store["tracking_uri"])


@pytest.fixture
def registry(registered):
    """The module's registered model, with no rollout running before or after a test."""
    name, client = registered
    _stop(client, name)
    yield registered
    _stop(client, name)


def _stop(client: MlflowClient, name: str) -> None:
    with contextlib.suppress(MlflowException):
        client.delete_registered_model_alias(name, CANARY_ALIAS)




def _metric(text: str, prefix: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(prefix)), None)
    return float(line.split()[-1]) if line else 0.0


def _rows(models) -> list[dict]:
    return [row.to_dict() for _, row in models[1].X_test.iterrows()]


# -- the router alone -------------------------------------------------------------

def _plan(mode: str = "canary", share: float = 0.3, version: str = "2") -> RolloutPlan:
    return RolloutPlan(mode, version, "1", datetime.now(timezone.utc), ((0.0, share),),
                       salt="test-salt")


def test_choose_is_sticky_and_follows_the_share():
    router = RolloutRouter(SimpleNamespace(), ServiceMetrics())  # type: ignore[arg-type]
    champion = SimpleNamespace(name="m", version="1")
    challenger = SimpleNamespace(name="m", version="2", runtime="onnx")
    assert router.choose(champion, "k") == (champion, "champion", None)  # no rollout
    router.state = RolloutState(_plan(), challenger)  # type: ignore[arg-type]
    picks = {f"client-{i}": router.choose(champion, f"client-{i}") for i in range(4000)}
    canary = [key for key, (model, variant, shadow) in picks.items() if variant == "canary"]
    assert all(picks[k][0] is challenger and picks[k][2] is None for k in canary)
    assert 0.27 < len(canary) / len(picks) < 0.33
    assert all(router.choose(champion, k)[1] == picks[k][1] for k in list(picks)[:500])
    assert set(canary) == {k for k in picks if serves_canary(k, "test-salt", 0.3)}
    # Shadow: the champion answers every request, the challenger gets a copy.
    router.state = RolloutState(_plan("shadow"), challenger)  # type: ignore[arg-type]
    assert router.choose(champion, "client-1") == (champion, "champion", challenger)
    # Promoted (the challenger is the champion now): the champion answers alone.
    promoted = SimpleNamespace(name="m", version="2")
    assert router.choose(promoted, "client-1") == (promoted, "champion", None)
    assert router.describe()["mode"] == "shadow" and "salt" not in router.describe()


def test_request_key_is_the_client_key_else_the_request_id():
    scope = {"headers": [(b"x-client-key", b" user-7 ")]}
    assert request_key(scope, "rid") == "user-7"
    assert request_key({"headers": [(b"x-client-key", b"")]}, "rid") == "rid"
    assert request_key({"headers": []}, "rid") == "rid"


def test_shadow_copies_beyond_the_bound_are_skipped_and_counted():
    metrics = ServiceMetrics()
    router = RolloutRouter(SimpleNamespace(), metrics,  # type: ignore[arg-type]
                           shadow_max_in_flight=2)

    async def scenario() -> list[bool]:
        release = asyncio.Event()
        done: list[int] = []

        async def copy(i: int) -> None:
            await release.wait()
            done.append(i)

        spawned = [router.spawn_shadow(lambda i=i: copy(i)) for i in range(5)]
        assert router.shadow_in_flight == 2
        release.set()
        await router.drain(5)
        assert sorted(done) == [0, 1] and router.shadow_in_flight == 0
        assert router.spawn_shadow(lambda: copy(9))  # room again
        await router.drain(5)
        return spawned

    assert asyncio.run(scenario()) == [True, True, False, False, False]
    assert _metric(metrics.render().decode(), "ml_api_shadow_skipped_total ") == 3


def test_refresh_follows_the_registry(mlflow_store, registry, tmp_path, monkeypatch):
    name, client = registry
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                               prediction_log_path=tmp_path / "log.db", poll_seconds=0)
    metrics = ServiceMetrics()
    store = ModelStore(settings, metrics)
    assert store.refresh()["status"] == "swapped"
    router = RolloutRouter(store, metrics)
    assert router.refresh() == {"status": "none"}
    plan = start_rollout(client, name, "canary", "2", "1", ((0.0, 0.25),))
    assert router.refresh()["status"] == "loaded"
    assert router.state is not None and router.state.challenger.version == "2"
    assert router.state.challenger.alias == "canary" and router.share() == 0.25
    assert router.refresh()["status"] == "following"
    text = metrics.render().decode()
    assert 'ml_api_rollout_info{challenger_version="2",mode="canary"} 1.0' in text
    assert "ml_api_rollout_share 0.25" in text
    # The registry cannot be read: the state stays.
    monkeypatch.setattr(store.client, "get_registered_model",
                        lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    assert router.refresh()["status"] == "registry_error" and router.state is not None
    monkeypatch.undo()
    end_rollout(client, name, plan, "rolled_back", "test")
    assert router.refresh()["status"] == "dropped" and router.state is None
    assert "ml_api_rollout_share 0.0" in metrics.render().decode()
    # A challenger the loader rejects is never served, counted once, not retried.
    calls = []

    def rejecting(version):
        calls.append(version)
        raise ModelRejected(version, "smoke_test_failed", "smoke prediction failed")

    monkeypatch.setattr(store, "load", rejecting)
    start_rollout(client, name, "shadow", "2", "1", ((0.0, 0.0),))
    assert router.refresh()["status"] == "rejected" and router.state is None
    assert router.refresh()["status"] == "rejected" and calls == ["2"]
    assert _metric(metrics.render().decode(),
                   'ml_api_model_load_failures_total{reason="smoke_test_failed"} ') == 1


class _Exploding:
    """A pipeline whose every prediction fails (a broken challenger)."""

    def predict_proba(self, frame):
        raise RuntimeError("boom")


def test_a_failing_canary_falls_back_to_the_champion(mlflow_store, registry, models,
                                                     tmp_path):
    name, client = registry
    start_rollout(client, name, "canary", "2", "1", ((0.0, 1.0),))  # every client
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                               prediction_log_path=tmp_path / "log.db", poll_seconds=0)
    app = create_app(settings)
    row = _rows(models)[0]
    with TestClient(app) as http:
        served = http.post("/predict", json=row, headers={CLIENT_KEY_HEADER: "a"})
        assert served.json()["variant"] == "canary"
        assert served.json()["model_version"] == "2"
        assert served.headers["X-Model-Variant"] == "canary"
        router = app.state.service.router
        state = router.state
        router.state = RolloutState(state.plan, replace(state.challenger, compiled=None,
                                                        pipeline=_Exploding()))
        response = http.post("/predict", json=row, headers={CLIENT_KEY_HEADER: "a"})
        assert response.status_code == 200
        body = response.json()
        assert (body["variant"], body["model_version"]) == ("champion", "1")
        # A client error stays a client error (the canary validates it first).
        assert http.post("/predict", json={**row, "mean radius": "x"}).status_code == 422
        text = http.get("/metrics").text
        assert _metric(text, 'ml_api_rollout_failures_total{variant="canary"} ') == 1
        info = http.get("/model").json()["rollout"]
        assert info["mode"] == "canary" and info["share"] == 1.0 and "salt" not in info
    log = SQLitePredictionLog(tmp_path / "log.db", read_only=True)
    frame = pd.concat([log.read_day(day) for day in log.days()], ignore_index=True)
    rows = frame[frame["request_id"] == body["request_id"]]
    assert sorted(zip(rows["variant"], rows["model_version"], strict=True)) == [
        ("canary", "2"), ("champion", "1")]
    failed = rows[rows["variant"] == "canary"].iloc[0]
    assert failed["error"] == "RuntimeError: boom" and failed["prediction"] == ""
    answered = rows[rows["variant"] == "champion"].iloc[0]
    assert answered["error"] == "" and answered["latency_ms"] >= 0
