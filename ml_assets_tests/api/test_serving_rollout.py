"""Gradual rollouts in the API: a canary answers a sticky share of the clients, a
shadow scores copies that are logged and never returned, a failing canary falls back
to the champion. A real uvicorn process and the real MLflow registry; traffic goes to
127.0.0.1 only and every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import httpx
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
from ml_assets.core.rollout.traffic import simulate
from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer
from ml_assets_tests.support.services import free_port, until, wait_http
from serving.app import create_app
from serving.http.metrics import ServiceMetrics
from serving.model.store import ModelRejected, ModelStore
from serving.rollout import RolloutRouter, RolloutState, request_key
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 30.0
KEYS = 1000
UNKEYED = 200
THREADS = 8


@pytest.fixture(scope="module")
def models():
    """Champion (a weak stump forest) and challenger (a real forest): they disagree on
    some rows."""
    return (train_breast_cancer(n_estimators=5, max_depth=1, seed=1),
            train_breast_cancer(n_estimators=20, seed=2))


@pytest.fixture(scope="module")
def registered(mlflow_store, models):
    """v1 champion, v2 registered without an alias (the challenger), once per module:
    (name, client)."""
    name = f"t_rollout_{uuid.uuid4().hex[:8]}"
    experiment = experiment_id(name, mlflow_store["artifact_root"])
    register(models[0], name, experiment)
    register(models[1], name, experiment, alias=None)
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


# -- the real process -------------------------------------------------------------

def _send(url: str, jobs: list[tuple[str | None, dict]]) -> list[tuple[str | None, dict,
                                                                        str]]:
    """POST /predict for each (key or None, row) from THREADS clients: (key, body,
    X-Model-Variant header) per request, in order."""
    def run(chunk):
        out = []
        with httpx.Client(base_url=url, timeout=10) as http:
            for key, row in chunk:
                headers = {CLIENT_KEY_HEADER: key} if key is not None else {}
                response = http.post("/predict", json=row, headers=headers)
                assert response.status_code == 200, response.text
                out.append((key, response.json(), response.headers["X-Model-Variant"]))
        return out

    chunks = [jobs[i::THREADS] for i in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        return [item for part in pool.map(run, chunks) for item in part]


def _log_frame(path: Path) -> pd.DataFrame:
    log = SQLitePredictionLog(path, read_only=True)
    days = log.days()
    return (pd.concat([log.read_day(day) for day in days], ignore_index=True) if days
            else log.read_day("2000-01-01"))


def test_canary_and_shadow_rollouts_in_the_running_service(mlflow_store, registry, models,
                                                           tmp_path):
    name, client = registry
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "prediction_log.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": name, "ML_API_HOST": "127.0.0.1",
           "ML_API_PORT": str(port), "ML_API_POLL_SECONDS": "0.3",
           "ML_PREDICTION_LOG_PATH": str(log_path),
           "ML_PREDICTION_LOG_SQLITE_SYNCHRONOUS": "NORMAL",
           "ML_PLATFORM_HOME": str(tmp_path / "home")}
    server_log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen([sys.executable, "-m", "serving", "--log-level", "warning"],
                               cwd=REPO, env=env, stdout=server_log, stderr=subprocess.STDOUT)
    rows = _rows(models)
    try:
        wait_http(f"{url}/ready", process)

        def rollout():
            return httpx.get(f"{url}/model").json()["rollout"]

        assert rollout() is None
        plan = start_rollout(client, name, "canary", "2", "1", ((0.0, 0.3),))
        seen = until(lambda: (rollout() or {}).get("challenger_version") == "2" and rollout())
        assert seen and seen["mode"] == "canary" and seen["share"] == 0.3
        assert "salt" not in seen and httpx.get(f"{url}/ready").json()["model_version"] == "1"

        # 1,000 keys, 2 requests each, plus unkeyed requests (each assigned on its own).
        jobs: list[tuple[str | None, dict]] = [
            (f"client-{k}", rows[(k + r) % len(rows)]) for r in range(2) for k in range(KEYS)]
        jobs += [(None, rows[i % len(rows)]) for i in range(UNKEYED)]
        answers = _send(url, jobs)
        assert len(answers) == 2 * KEYS + UNKEYED
        for _, body, header in answers:
            assert header == body["variant"]
            assert body["model_version"] == {"canary": "2", "champion": "1"}[body["variant"]]
        keyed = [(key, body["variant"]) for key, body, _ in answers if key is not None]
        share = sum(variant == "canary" for _, variant in keyed) / len(keyed)
        assert 0.25 <= share <= 0.35, share
        by_key: dict[str, set[str]] = {}
        for key, variant in keyed:
            by_key.setdefault(key, set()).add(variant)
        assert len(by_key) == KEYS and all(len(v) == 1 for v in by_key.values())
        unkeyed = [body["variant"] for key, body, _ in answers if key is None]
        assert 0.15 <= unkeyed.count("canary") / len(unkeyed) <= 0.45

        # Commit mode: every answered row is in the log, with its variant and version.
        frame = _log_frame(log_path).set_index("request_id")
        for _, body, _ in answers:
            logged = frame.loc[body["request_id"]]
            assert (logged["variant"], logged["model_version"]) == (body["variant"],
                                                                    body["model_version"])
            assert logged["error"] == "" and logged["latency_ms"] >= 0
        canary_answers = sum(body["variant"] == "canary" for _, body, _ in answers)
        text = httpx.get(f"{url}/metrics").text
        assert _metric(text, 'ml_api_variant_predictions_total{model_version="2",'
                             'variant="canary"} ') == canary_answers
        assert "ml_api_rollout_share 0.3" in text

        # The simulator's keyed traffic sees the same stickiness.
        simulated = simulate(url, models[1].X_test.assign(label="x"), "label", requests=120,
                             concurrency=4, client_keys=30, seed=3, max_seconds=30)
        assert simulated.ok == 120 and simulated.sticky()
        assert len(simulated.key_variants) <= 30 and sum(simulated.variants.values()) == 120
        assert set(simulated.variants) <= {"champion", "canary"}

        # The rollout ends: champion only again, within a bounded time.
        end_rollout(client, name, plan, "rolled_back", "test")
        assert until(lambda: rollout() is None), "the challenger was never dropped"
        canary_keys = [key for key, variants in by_key.items() if variants == {"canary"}][:50]
        after = _send(url, [(key, rows[0]) for key in canary_keys])
        assert {(b["variant"], b["model_version"]) for _, b, _ in after} == {("champion", "1")}

        # Shadow: the champion answers everything; the challenger's copies are logged.
        start_rollout(client, name, "shadow", "2", "1", ((0.0, 0.0),))
        assert until(lambda: (rollout() or {}).get("mode") == "shadow")
        shadowed = _send(url, [(f"client-{k}", rows[k % len(rows)]) for k in range(200)])
        sent = pd.DataFrame([rows[k % len(rows)] for k in range(200)])
        expected = [str(v) for v in models[0].pipeline.predict(sent)]
        expected_shadow = [str(v) for v in models[1].pipeline.predict(sent)]
        by_index = {key: body for key, body, _ in shadowed}
        for k in range(200):
            body = by_index[f"client-{k}"]
            assert (body["variant"], body["model_version"]) == ("champion", "1")
            assert body["prediction"] == expected[k]
        ids = {body["request_id"] for _, body, _ in shadowed}

        def shadow_rows():
            frame = _log_frame(log_path)
            found = frame[frame["request_id"].isin(ids) & (frame["variant"] == "shadow")]
            return (found,) if len(found) >= len(ids) else None

        result = until(shadow_rows, 15)
        assert result is not None, "shadow rows never reached the log"
        (found,) = result
        assert len(found) == len(ids) and set(found["request_id"]) == ids
        assert set(found["model_version"]) == {"2"} and set(found["row_index"]) == {0}
        assert set(found["error"]) == {""}
        challenger = dict(zip(found["request_id"], found["prediction"], strict=True))
        assert [challenger[by_index[f"client-{k}"]["request_id"]]
                for k in range(200)] == expected_shadow
        text = httpx.get(f"{url}/metrics").text
        assert _metric(text, 'ml_api_variant_predictions_total{model_version="2",'
                             'variant="shadow"} ') == len(ids)
        assert 'ml_api_rollout_info{challenger_version="2",mode="shadow"} 1.0' in text
        assert "ml_api_rollout_share 0.0" in text
        assert _metric(text, "ml_api_shadow_skipped_total ") == 0

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        server_log.close()
