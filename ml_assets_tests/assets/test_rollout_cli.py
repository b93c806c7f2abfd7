"""`ml-platform rollout start|status|stop` against a real MLflow registry."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from ml_assets import cli
from ml_assets.core.rollout.plan import read_rollout
from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer


@pytest.fixture
def registered(mlflow_store, monkeypatch, tmp_path):
    name = f"t_cli_rollout_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store["tracking_uri"])
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", name)
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return name, MlflowClient(mlflow_store["tracking_uri"]), experiment_id(
        name, mlflow_store["artifact_root"])


def test_rollout_commands(registered, capsys):
    name, client, experiment = registered
    assert cli.main(["rollout", "start"]) == 1  # no champion yet
    assert "no champion yet" in capsys.readouterr().err
    model = train_breast_cancer(n_estimators=5, max_depth=2)
    register(model, name, experiment, compile=False)
    assert cli.main(["rollout", "start"]) == 1
    assert "no challenger" in capsys.readouterr().err
    register(model, name, experiment, alias="challenger", compile=False)
    assert cli.main(["rollout", "start", "--share", "1.5"]) == 1
    assert "outside [0, 1]" in capsys.readouterr().err
    assert cli.main(["rollout", "start", "--share", "0.2", "--steps", "0.5",
                     "--step-minutes", "30"]) == 0
    assert "version 2 in canary against champion 1" in capsys.readouterr().out
    state = read_rollout(client, name)
    assert state.active and state.plan.steps == ((0.0, 0.2), (1800.0, 0.5))
    assert cli.main(["rollout", "status"]) == 0
    assert "canary share now 20%" in capsys.readouterr().out
    assert cli.main(["rollout", "start", "--mode", "shadow", "--version", "1"]) == 1
    assert "already the champion" in capsys.readouterr().err
    assert read_rollout(client, name).active  # a refused start changes nothing
    assert cli.main(["rollout", "stop", "--reason", "enough"]) == 0
    capsys.readouterr()
    assert not read_rollout(client, name).active
    assert cli.main(["rollout", "status"]) == 0
    assert "last: rolled_back: enough" in capsys.readouterr().out
    assert cli.main(["rollout", "stop"]) == 1
