"""The `dg` CLI (dagster-dg-cli) and the old `dagster` CLI, run from the repository root
in real processes, as a person would: the repository is a dg project (pyproject.toml
`[tool.dg]`) whose code location is ml_assets.definitions, and `[tool.dagster]` keeps
`dagster asset materialize` working. Runs go to a temporary Dagster instance,
platform home and the session's MLflow store, all through environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A small forest: these tests are about the CLIs, not the model.
SMALL = json.dumps({"ops": {"trained_model": {"config": {"n_estimators": 10, "cv_folds": 2,
                                                         "n_jobs": 1}}}})
TRAINING_UP_TO_METRICS = ["raw_data", "validated_data", "data_split", "feature_preprocessor",
                          "trained_model", "model_metrics"]


@pytest.fixture
def env(tmp_path, mlflow_store, unique_name) -> dict[str, str]:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DAGSTER_HOME": str(dagster_home), "ML_PLATFORM_HOME": str(tmp_path / "home"),
            "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
            "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
            "DAGSTER_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def _assert_materialized_in_one_run(dagster_home: str, assets: list[str]) -> None:
    with DagsterInstance.from_config(dagster_home) as instance:
        (run,) = instance.get_runs()
        assert run.status.value == "SUCCESS"
        for name in assets:
            event = instance.get_latest_materialization_event(AssetKey(name))
            assert event is not None, name
            assert event.run_id == run.run_id, name
        checks = {e.check_name: e.passed for e in (
            r.event_log_entry.dagster_event.event_specific_data
            for r in instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records)}
        assert checks["schema_conforms"] and checks["metrics_above_thresholds"], checks
        assert not instance.get_latest_materialization_event(AssetKey("registered_model"))


def test_dg_check_and_list_defs_from_the_repo_root(env):
    done = _run(["dg", "check", "defs"], env, timeout=180)
    assert "All definitions loaded successfully" in done.stdout + done.stderr
    assert "virtual environment does not match" not in done.stdout + done.stderr

    listed = json.loads(_run(["dg", "list", "defs", "--json"], env, timeout=180).stdout)
    assets = {a["asset_key"]: a["group_name"] for a in listed["assets"]}
    assert assets["model_metrics"] == "training" and assets["champion_model"] == "registry"
    assert {"train_model", "score_drift"} <= {j["name"] for j in listed["jobs"]}


def test_dg_launch_materializes_the_training_graph_up_to_model_metrics(env):
    _run(["dg", "launch", "--assets", "*model_metrics", "--config-json", SMALL], env,
         timeout=300)
    _assert_materialized_in_one_run(env["DAGSTER_HOME"], TRAINING_UP_TO_METRICS)


def test_dagster_asset_materialize_still_works_from_the_repo_root(env):
    # `dagster asset materialize` reads no pyproject.toml (only `dagster dev` and the
    # workspace commands read [tool.dagster]): the module is named, as it always was.
    _run(["dagster", "asset", "materialize", "-m", "ml_assets.definitions",
          "--select", "*model_metrics", "--config-json", SMALL], env, timeout=300)
    _assert_materialized_in_one_run(env["DAGSTER_HOME"], TRAINING_UP_TO_METRICS)


def test_workspace_loads_like_the_webserver_loads_it(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "ML_PLATFORM_HOME": str(tmp_path)}
    done = subprocess.run([Path(sys.executable).with_name("dagster"), "definitions",
                           "validate", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All code locations passed validation" in done.stderr + done.stdout
