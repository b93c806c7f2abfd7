"""Every compiled model family answers over real HTTP as it does in process: LightGBM,
XGBoost and HistGradientBoosting classifiers and regressors and a Pipeline with a
user's own step (its converter registered by its module), on binary, multiclass and
regression data with numeric and categorical inputs (penguins' with missing values;
unseen categories sent too). `/model` shows `runtime: onnx`; the labels are the
Pipeline's own, probabilities and values within the parity gate's tolerances of the
Pipeline's and equal to the in-process compiled graph's.

Cost: the 16 models are registered once (module fixture); one `python -m serving` per
dataset, the four started together, each swapping through its dataset's versions by
moving the champion alias and POST /admin/reload."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import mlflow.artifacts
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from threadpoolctl import threadpool_limits

from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV
from ml_assets.core.artifacts.onnx.columns import _served_dtypes
from ml_assets.core.artifacts.onnx.contract import ONNX_ARTIFACT
from ml_assets.core.artifacts.onnx.parity import (
    PROBABILITY_TOLERANCE,
    RELATIVE_TOLERANCE,
    rows_of,
)
from ml_assets.core.artifacts.onnx.runtime import CompiledModel
from ml_assets_tests.support.api_process import ApiProcess, start_api
from ml_assets_tests.support.families import DATASETS, FAMILIES, TASKS, train_family
from ml_assets_tests.support.models import TrainedPipeline, experiment_id, register
from ml_assets_tests.support.user_steps import TRUSTED

UNSEEN = "Atlantis"  # a category no training row holds


@dataclass(frozen=True)
class Registered:
    name: str
    versions: dict[str, tuple[str, TrainedPipeline]]  # family -> (version, model)


@pytest.fixture(scope="module")
def registry(mlflow_store) -> dict[str, Registered]:
    """Per dataset, one registered model with a version per family, each compiled and
    parity-checked at registration; the first is the champion."""
    out = {}
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(1):
        patch.setenv(TRUSTED_TYPES_ENV, TRUSTED)  # the user's step, reviewed
        for dataset in DATASETS:
            name = f"families_{dataset}_{uuid.uuid4().hex[:6]}"
            experiment = experiment_id(name, mlflow_store["artifact_root"])
            versions = {}
            for index, family in enumerate(FAMILIES):
                trained = train_family(family, dataset)
                version, _ = register(trained, name, experiment, compile=True,
                                      alias="champion" if index == 0 else None)
                versions[family] = (version, trained)
            out[dataset] = Registered(name, versions)
    return out


@pytest.fixture(scope="module")
def servers(registry, mlflow_store, tmp_path_factory) -> dict[str, ApiProcess]:
    """One service per dataset (runtime auto, as deployed), started together."""
    root = tmp_path_factory.mktemp("families_api")
    started = {dataset: start_api({"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
                                   "ML_REGISTERED_MODEL_NAME": entry.name,
                                   TRUSTED_TYPES_ENV: TRUSTED}, root)
               for dataset, entry in registry.items()}
    try:
        for api in started.values():
            api.wait_ready(120)
        yield started
    finally:
        for api in started.values():
            api.stop(timeout=30)


def _requests(trained: TrainedPipeline) -> pd.DataFrame:
    """The held-out rows, then probes: each nullable feature missing in turn and all at
    once, and an unseen value in each string feature (three rows each)."""
    held = trained.X_test.reset_index(drop=True)
    base = held.head(3)
    nullable = [c for c in held.columns if trained.schema.columns[c].nullable]
    strings = [c for c in held.columns if held[c].dtype == object]
    probes = []
    for changes in ([{c: None} for c in nullable] + [{c: UNSEEN} for c in strings]
                    + ([dict.fromkeys(nullable)] if len(nullable) > 1 else [])):
        probe = base.astype(object).copy()
        for column, value in changes.items():
            probe[column] = value
        probes.append(probe)
    return pd.concat([held.astype(object), *probes], ignore_index=True)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [dict(zip(frame.columns, row, strict=True)) for row in rows_of(frame)]


def _graph(name: str, version: str, trained: TrainedPipeline, task: str,
           tracking_uri: str, tmp_path) -> CompiledModel:
    """The version's own model.onnx, run in this process."""
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}/{ONNX_ARTIFACT}", dst_path=str(tmp_path),
        tracking_uri=tracking_uri)
    classes = [] if task == "regression" else list(trained.pipeline.classes_)
    with open(path, "rb") as handle:
        return CompiledModel.from_bytes(handle.read(), list(trained.X_train.columns), task,
                                        classes)


CASES = [pytest.param(dataset, family, id=f"{family}-{dataset}")
         for dataset in DATASETS for family in FAMILIES]


@pytest.mark.parametrize(("dataset", "family"), CASES)
def test_the_compiled_family_is_served_with_the_models_answers(
        dataset, family, registry, servers, mlflow_store, tmp_path):
    entry, api, task = registry[dataset], servers[dataset], TASKS[dataset]
    version, trained = entry.versions[family]
    client = MlflowClient(mlflow_store["tracking_uri"])
    tags = client.get_model_version(entry.name, version).tags
    assert tags["onnx.parity"] == "passed", tags.get("onnx.parity.reason")
    client.set_registered_model_alias(entry.name, "champion", version)
    reload = httpx.post(f"{api.url}/admin/reload", json={}, timeout=120)
    assert reload.status_code == 200, reload.text
    model = httpx.get(f"{api.url}/model", timeout=30).json()
    assert (model["version"], model["runtime"]) == (version, "onnx"), model["runtime_reason"]

    frame = _requests(trained)
    if dataset.startswith("penguin"):  # missing values and unseen categories are sent
        assert frame.isna().any().any() and (frame == UNSEEN).any().any()
    records = _records(frame)
    response = httpx.post(f"{api.url}/predict/batch", json={"records": records}, timeout=60)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    single = httpx.post(f"{api.url}/predict", json=records[0], timeout=30)
    assert single.status_code == 200, single.text
    assert single.json()["prediction"] == answers[0]["prediction"]

    pipeline = trained.pipeline
    as_served = _served_dtypes(frame)  # the dtypes a served row reaches the Pipeline in
    graph = _graph(entry.name, version, trained, task, mlflow_store["tracking_uri"],
                   tmp_path)
    if task == "regression":
        served = np.array([a["prediction"] for a in answers], dtype=np.float64)
        expected = pipeline.predict(as_served)
        scale = max(float(np.std(pipeline.predict(trained.X_test))), 1e-12)
        assert (np.abs(served - expected)
                <= RELATIVE_TOLERANCE * np.maximum(np.abs(expected), scale)).all()
        assert np.allclose(served, graph.predict_values(rows_of(frame)), rtol=1e-12, atol=0)
        return
    classes = [str(c) for c in pipeline.classes_]
    assert model["classes"] == classes
    assert [a["prediction"] for a in answers] == [str(c) for c in pipeline.predict(as_served)]
    served = np.array([[a["probabilities"][c] for c in classes] for a in answers])
    assert np.abs(served - pipeline.predict_proba(as_served)).max() <= PROBABILITY_TOLERANCE
    assert np.allclose(served, graph.predict_proba(rows_of(frame)), rtol=1e-12, atol=1e-15)
