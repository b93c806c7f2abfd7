"""A gradient-boosted model from the command line to the compiled runtime:
`ML_ESTIMATOR=lightgbm:LGBMClassifier ml-platform train` on the default dataset, with no
other setting, registers a champion that `python -m serving` serves with ONNX Runtime
(`/model` says `runtime: onnx`), answering as the Pipeline does over real HTTP."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow

from ml_assets.core.artifacts.loading import load_pipeline
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets_tests.support.api_process import api_process


def test_lightgbm_trained_from_the_command_line_is_served_compiled(tmp_path, mlflow_store,
                                                                   unique_name):
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
           "ML_ESTIMATOR": "lightgbm:LGBMClassifier"}
    env.pop("ML_ESTIMATOR_PARAMS", None)
    done = subprocess.run([str(Path(sys.executable).with_name("ml-platform")), "train"],
                          env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert f"registered {unique_name} version 1; it is the champion" in done.stdout

    client = mlflow.MlflowClient(mlflow_store["tracking_uri"])
    version = client.get_model_version_by_alias(unique_name, "champion")
    assert version.tags["onnx.parity"] == "passed", version.tags
    run = client.get_run(version.run_id)
    assert run.data.params["num_leaves"] == "31"  # LightGBM's own default, logged
    assert "model_type" not in run.data.params

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
