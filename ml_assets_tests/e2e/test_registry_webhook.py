"""A promotion reaches the API through MLflow's registry webhook in under a second, and
within one poll interval when webhooks are off. Real processes: `mlflow server` over the
session's SQLite store, `python -m serving` registering its own webhook at start."""
from __future__ import annotations

import re
import time

import httpx
import pytest
from mlflow import MlflowClient

from ml_assets_tests.support.api_process import api_process
from ml_assets_tests.support.models import (
    champion_and_challenger,
    register_champion_and_challenger,
)
from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.services import free_port, wait_http

SECRET = "webhook-test-secret"


@pytest.fixture(scope="module")
def registry_server(mlflow_store, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 over the session's (already migrated) store; it may
    deliver webhooks over plain http to 127.0.0.1 (MLflow allows only https to public
    addresses by default; inside one cluster or host both settings are needed)."""
    import os
    import sys

    root = tmp_path_factory.mktemp("registry_server")
    port = free_port()
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https"}
    server = LoggedProcess([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                            "--port", str(port), "--workers", "1",
                            "--backend-store-uri", mlflow_store["tracking_uri"]],
                           env, root / "mlflow.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", server.process, 120, lambda: server.log(4000))
        yield url
    finally:
        server.stop()


def _served_version(api) -> str | None:
    answer = httpx.get(f"{api.url}/model", timeout=5)
    return answer.json().get("version") if answer.status_code == 200 else None


def _load_seconds(api, version: str) -> float:
    """How long the service took to load `version` the last time (its INFO log line)."""
    found = re.findall(rf"loaded \S+ version {version} in ([0-9.]+)s", api.log())
    assert found, api.log(3000)
    return float(found[-1])


def _seconds_until_served(api, version: str, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if _served_version(api) == version:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"version {version} not served after {limit} s\n{api.log(3000)}")


def test_a_promotion_arrives_through_the_webhook_in_under_a_second(registry_server,
                                                                   mlflow_store, tmp_path):
    name = register_champion_and_challenger(champion_and_challenger(), "webhook",
                                            mlflow_store["artifact_root"])
    port = free_port()
    hook_url = f"http://127.0.0.1:{port}/admin/registry-events"
    env = {"MLFLOW_TRACKING_URI": registry_server, "ML_REGISTERED_MODEL_NAME": name,
           "ML_API_PORT": str(port), "ML_API_POLL_SECONDS": "0",  # events only
           "ML_API_LOAD_PROBE_SECONDS": "0",  # the event's path is timed, not the load
           "ML_REGISTRY_WEBHOOK_SECRET": SECRET, "ML_API_WEBHOOK_URL": hook_url}
    client = MlflowClient(registry_server)
    with api_process(env, tmp_path, log_level="info") as api:
        assert _served_version(api) == "1"
        hooks = [h for h in client.list_webhooks() if h.url == hook_url]
        assert len(hooks) == 1, api.log(3000)
        # From the alias change to the new answers, less the version's own load (what
        # the event saves is the wait for a poll): under a second.
        client.set_registered_model_alias(name, "champion", "2")
        assert _seconds_until_served(api, "2", 10.0) - _load_seconds(api, "2") < 1.0
        client.set_registered_model_alias(name, "champion", "1")  # a rollback too
        assert _seconds_until_served(api, "1", 10.0) - _load_seconds(api, "1") < 1.0

        # A forged event (no signature, or another secret) changes nothing.
        forged = httpx.post(hook_url, json={"entity": "model_version_alias",
                                            "action": "created", "data": {"name": name}})
        assert forged.status_code == 401 and "missing" in forged.json()["detail"]
    # A restart updates the same webhook instead of adding one.
    with api_process(env, tmp_path):
        assert len([h for h in client.list_webhooks() if h.url == hook_url]) == 1
    for hook in client.list_webhooks():
        if hook.url == hook_url:
            client.delete_webhook(hook.webhook_id)


def test_without_webhooks_polling_finds_it_within_one_interval(registry_server, mlflow_store,
                                                                tmp_path):
    name = register_champion_and_challenger(champion_and_challenger(), "polled",
                                            mlflow_store["artifact_root"])
    poll = 2.0
    env = {"MLFLOW_TRACKING_URI": registry_server, "ML_REGISTERED_MODEL_NAME": name,
           "ML_API_POLL_SECONDS": str(poll), "ML_API_LOAD_PROBE_SECONDS": "0"}
    with api_process(env, tmp_path, log_level="info") as api:
        off = httpx.post(f"{api.url}/admin/registry-events", json={"data": {}})
        assert off.status_code == 404 and "ML_REGISTRY_WEBHOOK_SECRET" in off.json()["detail"]
        MlflowClient(registry_server).set_registered_model_alias(name, "champion", "2")
        # From the alias change to the new answers, less the version's own load (timed
        # by the service; on a loaded CI machine it alone passed a second): one interval
        # at most, plus the registry look-up.
        assert _seconds_until_served(api, "2", 3 * poll) - _load_seconds(api, "2") \
            < poll + 1.0
