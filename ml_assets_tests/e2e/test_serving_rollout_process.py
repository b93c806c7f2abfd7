"""Gradual rollouts in the running service: a real uvicorn process (`python -m serving`)
and the real MLflow registry. A canary answers a sticky share of 1,000 keyed clients,
every answer is in the prediction log with its variant, the rollout's end is followed
by itself, a shadow scores copies that are logged and never returned. Traffic goes to
127.0.0.1 only and every loop is bounded in count and time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets.core.rollout.plan import CLIENT_KEY_HEADER, end_rollout, start_rollout
from ml_assets.core.rollout.traffic import simulate
from ml_assets_tests.support.api_process import api_process
from ml_assets_tests.support.models import (
    champion_and_challenger,
    register_champion_and_challenger,
)
from ml_assets_tests.support.services import until

KEYS = 1000
UNKEYED = 200
THREADS = 8


@pytest.fixture(scope="module")
def models():
    """Champion (a weak stump forest) and challenger (a real forest): they disagree on
    some rows."""
    return champion_and_challenger()


@pytest.fixture
def registry(mlflow_store, models):
    """v1 champion, v2 registered without an alias (the challenger), no rollout running:
    (name, client)."""
    name = register_champion_and_challenger(models, "t_rollout", mlflow_store["artifact_root"])
    return name, MlflowClient(mlflow_store["tracking_uri"])


def _metric(text: str, prefix: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(prefix)), None)
    return float(line.split()[-1]) if line else 0.0


def _rows(models) -> list[dict]:
    return [row.to_dict() for _, row in models[1].X_test.iterrows()]


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
    env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": name, "ML_API_POLL_SECONDS": "0.3",
           "ML_PREDICTION_LOG_SQLITE_SYNCHRONOUS": "NORMAL"}
    rows = _rows(models)
    with api_process(env, tmp_path) as api:
        url, log_path = api.url, api.prediction_log

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

        code, _ = api.stop()
        assert code == 0
