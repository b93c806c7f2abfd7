"""Crafted CatBoost versions refused by the API (issue 21: model files are untrusted
input): a champion whose stored JSON export has a tree 42 deep (which SIGSEGVs CatBoost
unchecked), a leaf value dropped, or a split on a feature the model does not have, is
refused by /admin/reload with 409 and the sentence naming the failed check, in < 5 s,
while version 1 (a good CatBoost model) keeps answering; as a canary it is rejected and
the champion answers every client. The crafting: ml_assets_tests/support/crafted_catboost.py."""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings
from collections.abc import Iterator

import pytest
from catboost import CatBoostClassifier
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.pipeline import Pipeline

from ml_assets.core.modeling.catboost_model import CatBoostModel
from ml_assets.core.rollout.plan import CANARY_ALIAS, CLIENT_KEY_HEADER, start_rollout
from ml_assets_tests.support.crafted_catboost import CRAFTED_CATBOOST, register_crafted_catboost
from ml_assets_tests.support.models import TrainedPipeline, experiment_id, register
from ml_assets_tests.support.models import train_breast_cancer as train
from serving.app import create_app
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SECONDS = 5.0
KINDS = tuple(CRAFTED_CATBOOST)


@pytest.fixture(scope="module")
def trained() -> TrainedPipeline:
    """CatBoost (small) behind the platform's preprocessing, on the string labels."""
    forest = train(n_estimators=3, seed=3)
    preprocess = forest.pipeline.named_steps["preprocess"]
    model = CatBoostModel(CatBoostClassifier(iterations=10, depth=3, thread_count=1)).fit(
        preprocess.transform(forest.X_train), forest.pipeline.predict(forest.X_train))
    return TrainedPipeline(Pipeline([("preprocess", preprocess), ("model", model)]),
                           forest.X_train, forest.X_test, forest.schema, forest.target)


@pytest.fixture(scope="module")
def crafted(mlflow_store, trained) -> tuple[str, dict[str, str]]:
    """(name, crafted kind -> version): version 1 good (the champion), then one crafted
    copy of it per kind, registered without an alias."""
    name = f"t_catboost_{uuid.uuid4().hex[:8]}"
    experiment = experiment_id(name, mlflow_store["artifact_root"])
    register(trained, name, experiment, alias="champion")
    return name, {kind: register_crafted_catboost(name, "1", kind, experiment)
                  for kind in KINDS}


@pytest.fixture(scope="module")
def api(mlflow_store, crafted, tmp_path_factory) -> Iterator[TestClient]:
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"],
                               model_name=crafted[0], poll_seconds=0,
                               prediction_log_path=tmp_path_factory.mktemp("cb") / "log.db")
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def champion_back(crafted) -> Iterator[None]:
    name = crafted[0]
    client = MlflowClient()

    def reset():
        client.set_registered_model_alias(name, "champion", "1")
        with contextlib.suppress(MlflowException):
            client.delete_registered_model_alias(name, CANARY_ALIAS)
    reset()
    yield
    reset()


def _answers_with_version_1(api: TestClient, row: dict, trained, key: str = "k") -> None:
    served = api.post("/predict", json=row, headers={CLIENT_KEY_HEADER: key})
    assert served.status_code == 200, served.text
    assert served.json()["model_version"] == "1"
    assert served.json()["prediction"] == trained.pipeline.predict(
        trained.X_test.head(1))[0]


def _names_the_check(text: str, version: str, kind: str) -> None:
    assert f"version {version}" in text or f"/{version}" in text, text
    assert f"(check {CRAFTED_CATBOOST[kind][1]})" in text, text


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_refuses_a_crafted_catboost_champion_and_keeps_serving(
        api, crafted, trained, champion_back, kind):
    name, version = crafted[0], crafted[1][kind]
    row = trained.X_test.iloc[0].to_dict()
    _answers_with_version_1(api, row, trained)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    started = time.perf_counter()
    response = api.post("/admin/reload", json={})
    assert time.perf_counter() - started < SECONDS
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["status"] == "rejected" and body["serving_version"] == "1"
    _names_the_check(body["detail"], version, kind)
    _answers_with_version_1(api, row, trained)
    assert api.get("/model").json()["refused"]["reason"] == "untrusted_model"


@pytest.mark.parametrize("kind", KINDS[:1])
def test_the_api_refuses_a_crafted_catboost_canary(api, crafted, trained, champion_back,
                                                    kind):
    name, version = crafted[0], crafted[1][kind]
    row = trained.X_test.iloc[0].to_dict()
    assert api.post("/admin/reload", json={}).json()["status"] == "unchanged"
    start_rollout(MlflowClient(), name, "canary", version, "1", ((0.0, 1.0),))
    started = time.perf_counter()
    body = api.post("/admin/reload", json={}).json()
    assert time.perf_counter() - started < SECONDS
    assert body["rollout"]["status"] == "rejected", body
    _names_the_check(body["rollout"]["detail"], version, kind)
    for key in ("a", "b", "c"):
        _answers_with_version_1(api, row, trained, key)
