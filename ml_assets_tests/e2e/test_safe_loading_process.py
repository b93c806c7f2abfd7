"""The real `python -m serving` process refuses hostile champions on /admin/reload (a
pickle bomb, a skops file trusting its own hook) and keeps serving the old champion;
the marker file proves no byte of their code ran. The hostile versions and the other
places that must refuse them: ml_assets_tests/unit/test_safe_loading.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV
from ml_assets_tests.support.api_process import api_process
from ml_assets_tests.support.hostile_models import HOOK_TYPE
from ml_assets_tests.support.hostile_models import hostile_registry as registered_hostile


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


@pytest.fixture
def hostile_registry(mlflow_store, unique_name, cancer_champion, marker):
    """A model of its own: v1 good (the champion, the session's trained forest); v2 a
    pickle bomb; v3 a skops file trusting its own hook."""
    return registered_hostile(cancer_champion.trained, marker, unique_name,
                              mlflow_store["artifact_root"])


def _failures(url: str, reason: str) -> float:
    prefix = f'ml_api_model_load_failures_total{{reason="{reason}"}} '
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(next(x for x in text.splitlines() if x.startswith(prefix)).split()[-1])


def test_the_api_refuses_hostile_champions_and_keeps_serving(mlflow_store, hostile_registry,
                                                             cancer_champion, marker, tmp_path):
    name, trained = hostile_registry, cancer_champion.trained
    env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": name, TRUSTED_TYPES_ENV: None}  # nothing extra trusted
    row = trained.X_test.iloc[0].to_dict()
    with api_process(env, tmp_path) as api:
        url = api.url
        assert _failures(url, "untrusted_model") == 0.0  # exported at 0
        expected = {"2": ["serialization_format 'pickle'", "only 'skops'"],
                    "3": [HOOK_TYPE, TRUSTED_TYPES_ENV]}
        for count, (version, phrases) in enumerate(expected.items(), start=1):
            MlflowClient().set_registered_model_alias(name, "champion", version)
            result = httpx.post(f"{url}/admin/reload", json={}, timeout=60)
            assert result.status_code == 409, result.text
            body = result.json()
            assert body["status"] == "rejected" and body["candidate_version"] == version
            assert body["serving_version"] == "1"
            assert f"version {version}" in body["detail"]
            assert all(phrase in body["detail"] for phrase in phrases), body["detail"]

            predicted = httpx.post(f"{url}/predict", json=row, timeout=10)
            assert predicted.status_code == 200 and predicted.json()["model_version"] == "1"
            ready = httpx.get(f"{url}/ready", timeout=10)
            assert ready.status_code == 200 and ready.json()["model_version"] == "1"
            assert ready.json()["detail"].startswith(
                f"serving version 1; version {version} refused (untrusted_model): ")
            info = httpx.get(f"{url}/model", timeout=10).json()
            assert info["version"] == "1"
            assert info["refused"]["version"] == version
            assert info["refused"]["reason"] == "untrusted_model"
            assert all(phrase in info["refused"]["detail"] for phrase in phrases)
            assert _failures(url, "untrusted_model") == float(count)
            assert _failures(url, "load_error") == 0.0
            assert not marker.exists(), "the hostile model's code ran in the API"

        # The alias back on the served version: the refusal is history, not status.
        MlflowClient().set_registered_model_alias(name, "champion", "1")
        assert httpx.post(f"{url}/admin/reload", json={}, timeout=60).json()["status"] == \
            "unchanged"
        assert "detail" not in httpx.get(f"{url}/ready", timeout=10).json()
        assert httpx.get(f"{url}/model", timeout=10).json()["refused"] is None
    assert not marker.exists()


