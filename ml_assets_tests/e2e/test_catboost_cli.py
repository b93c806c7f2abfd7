"""CatBoost from the command line to the compiled runtime, with no wrapper and no other
setting: `ML_ESTIMATOR=catboost:CatBoostClassifier ml-platform train` on the default
dataset registers a champion (its JSON export checked on every load) that
`python -m serving` serves with ONNX Runtime (`/model` says `runtime: onnx`), answering
as the Pipeline does over real HTTP."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow

from ml_assets.core.artifacts.loading import load_pipeline
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets_tests.support.api_process import api_process


def test_catboost_trained_from_the_command_line_is_served_compiled(tmp_path, mlflow_store,
                                                                   unique_name):
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
           "ML_ESTIMATOR": "catboost:CatBoostClassifier"}
    for variable in ("ML_ESTIMATOR_PARAMS", "ML_MODEL_FACTORY", "ML_MODEL_PREPROCESSING"):
        env.pop(variable, None)
    done = subprocess.run([str(Path(sys.executable).with_name("ml-platform")), "train"],
                          env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert f"registered {unique_name} version 1; it is the champion" in done.stdout
    assert not (tmp_path / "catboost_info").exists()  # the platform's quiet default

    client = mlflow.MlflowClient(mlflow_store["tracking_uri"])
    version = client.get_model_version_by_alias(unique_name, "champion")
    assert version.tags["onnx.parity"] == "passed", version.tags
    params = client.get_run(version.run_id).data.params
    assert params["iterations"] == "1000" and params["depth"] == "6"  # CatBoost's defaults
    assert "model_type" not in params

    rows = load_breast_cancer_frame().drop(columns=BREAST_CANCER_TARGET).head(20)
    with api_process({"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
                      "ML_REGISTERED_MODEL_NAME": unique_name}, tmp_path) as api:
        model = httpx.get(f"{api.url}/model", timeout=30).json()
        assert model["runtime"] == "onnx", model.get("runtime_reason")
        assert model["classes"] == ["benign", "malignant"]
        response = httpx.post(f"{api.url}/predict/batch",
                              json={"records": rows.to_dict(orient="records")}, timeout=30)
        assert response.status_code == 200, response.text
        answers = [p["prediction"] for p in response.json()["predictions"]]
    served = load_pipeline(f"models:/{unique_name}/{version.version}").pipeline
    assert answers == list(served.predict(rows))
