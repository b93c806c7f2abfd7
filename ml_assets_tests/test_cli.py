"""The command line: `ml-platform train` materializes the whole graph in a real process."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from dagster import AssetKey, DagsterInstance

from ml_assets.core.datasets import load_breast_cancer_frame

pytestmark = pytest.mark.slow


def test_train_from_the_command_line(tmp_path, mlflow_store, unique_name):
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name}
    command = [str(Path(sys.executable).with_name("ml-platform")), "train"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained; held-out metrics: accuracy=" in done.stdout

    client = mlflow.MlflowClient(mlflow_store["tracking_uri"])
    experiment = client.get_experiment_by_name(unique_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model_type"] == "random_forest"
    assert run.data.metrics["test_accuracy"] > 0.9
    assert run.data.tags["code_version"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "feature_schema.yaml"} <= artifacts
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                            output_format="list")
    model = mlflow.pyfunc.load_model(logged.model_uri)
    rows = load_breast_cancer_frame().drop(columns="diagnosis").head(5)
    assert set(model.predict(rows)) <= {"benign", "malignant"}

    # The run is in the persistent Dagster instance, so the UI shows it.
    os.environ["DAGSTER_HOME"], old = env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with DagsterInstance.get() as instance:
            assert instance.get_latest_materialization_event(AssetKey("model_metrics"))
    finally:
        if old is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = old

    again = subprocess.run(command + ["--if-missing"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "skipping training" in again.stdout


def test_failed_training_exits_non_zero_with_the_reason(tmp_path, mlflow_store, unique_name):
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_DATA_SOURCE": "files",
           "ML_DATA_PATH": str(tmp_path / "missing.csv"), "ML_TARGET": "y"}
    done = subprocess.run([str(Path(sys.executable).with_name("ml-platform")), "train"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "does not exist" in done.stderr
