"""Crafted model files, refused everywhere a model is opened (issue 21, "Crafted files in
the suite"): a trusted scikit-learn tree with an out-of-range child index, one with a
cycle, one with mismatched array lengths, and a zip bomb, each registered as a version
of a real model (ml_assets_tests/support/crafted_models.py: built by the test, never
stored). Each is refused by the API reload (409 as champion, the old champion still
answers; rejected as a canary, the champion answers every client), by
`batch_predictions`, by the scoring of landed rows in `production_data`, by
`champion_comparison` and by rollback: with the sentence naming the failed check
("... (check tree.cycle)"), in less than 5 s and without inflating the process, and no
process dies (a crafted tree reaching scikit-learn's compiled code would SIGSEGV or hang
this one). The loader's own checks: ml_assets_tests/unit/test_model_validation.py."""

from __future__ import annotations

import contextlib
import re
import resource
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV, InvalidModelError, check_model
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.data.preprocessing import split_frame
from ml_assets.core.rollout.plan import CANARY_ALIAS, CLIENT_KEY_HEADER, start_rollout
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets_tests.support.crafted_models import CRAFTED, CRAFTED_CHECKS, register_crafted
from ml_assets_tests.support.models import TrainedPipeline, experiment_id, register
from ml_assets_tests.support.models import train_breast_cancer as train
from serving.app import create_app
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SECONDS = 5.0
RSS_GROWTH = 500 * 1024 * 1024  # bytes; the bomb inflates to 2 GiB if opened
DAY = "2026-11-20"


@pytest.fixture(scope="module")
def trained() -> TrainedPipeline:
    return train(n_estimators=5, seed=3)  # tiny: crafting and loading stay cheap


@pytest.fixture(scope="module")
def crafted(mlflow_store, trained) -> tuple[str, dict[str, str]]:
    """(name, crafted kind -> version): version 1 good (the champion), then one crafted
    copy of it per kind, registered without an alias."""
    name = f"t_crafted_{uuid.uuid4().hex[:8]}"
    experiment = experiment_id(name, mlflow_store["artifact_root"])
    register(trained, name, experiment, alias="champion")
    return name, {kind: register_crafted(name, "1", kind, trained, experiment)
                  for kind in CRAFTED}


@pytest.fixture
def champion_back(crafted) -> Iterator[None]:
    """Each test starts and ends with version 1 as champion and no canary."""
    name = crafted[0]
    client = MlflowClient()

    def reset():
        client.set_registered_model_alias(name, "champion", "1")
        with contextlib.suppress(MlflowException):
            client.delete_registered_model_alias(name, CANARY_ALIAS)
    reset()
    yield
    reset()


@pytest.fixture
def tracking(mlflow_store, crafted, tmp_path) -> MlflowTracking:
    name = crafted[0]
    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"], experiment_name=name,
                          registered_model_name=name,
                          artifact_location=(tmp_path / "art").as_uri())


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """The block takes < SECONDS and grows the process's peak RSS by < RSS_GROWTH."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert elapsed < SECONDS, f"the refusal took {elapsed:.1f}s"
    assert grown < RSS_GROWTH, f"the refusal grew the peak RSS by {grown / 2**20:.0f} MiB"


# What each refusal says beyond the check's name (where and what failed).
SAYS = {"out_of_range_child": "node 0's right child 1099511627776 is outside 0..",
        "cycle": "a node must have exactly one parent; the tree has a cycle",
        "mismatched_lengths": "Wrong shape for value array",
        "zip_bomb": "entry 'bomb.npy' alone declares 2,147,483,648"}


def names_the_check(text: str, name: str, kind: str, version: str) -> None:
    """The refusal sentence names the version, what failed and the check's name."""
    assert re.search(rf"refused to open (champion )?(version {version}\b|models:/{name}/"
                     rf"{version}\b)", text), text
    assert SAYS[kind] in text and f"(check {CRAFTED_CHECKS[kind]})" in text, text


def test_the_crafted_versions_fail_exactly_their_check(crafted):
    """Control: version 1 passes the same loader checks; each copy differs from it only
    by its craft, and fails the check it was built to fail."""
    name, versions = crafted
    check_model(f"models:/{name}/1", source="version 1")
    for kind, version in versions.items():
        with pytest.raises(InvalidModelError) as caught:
            check_model(f"models:/{name}/{version}", source=f"version {version}")
        assert caught.value.check == CRAFTED_CHECKS[kind], (kind, str(caught.value))


# -- the API, in process ------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(mlflow_store, crafted, tmp_path_factory) -> Iterator[TestClient]:
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"],
                               model_name=crafted[0], poll_seconds=0,
                               prediction_log_path=tmp_path_factory.mktemp("crafted") / "log.db")
    with TestClient(create_app(settings)) as client:
        yield client


def _answers_with_version_1(api: TestClient, row: dict, client_key: str = "k") -> None:
    served = api.post("/predict", json=row, headers={CLIENT_KEY_HEADER: client_key})
    assert served.status_code == 200, served.text
    assert served.json()["model_version"] == "1"
    assert served.json()["variant"] == "champion"


@pytest.mark.parametrize("kind", CRAFTED)
def test_the_api_refuses_a_crafted_champion_and_keeps_serving(api, crafted, trained,
                                                              champion_back, kind):
    name, version = crafted[0], crafted[1][kind]
    row = trained.X_test.iloc[0].to_dict()
    _answers_with_version_1(api, row)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    with bounded():
        response = api.post("/admin/reload", json={})
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["status"] == "rejected" and body["candidate_version"] == version
    assert body["serving_version"] == "1"
    names_the_check(body["detail"], name, kind, version)
    _answers_with_version_1(api, row)
    refused = api.get("/model").json()["refused"]
    assert refused["version"] == version and refused["reason"] == "untrusted_model"
    names_the_check(refused["detail"], name, kind, version)
    assert api.get("/health").status_code == 200


@pytest.mark.parametrize("kind", CRAFTED)
def test_the_api_refuses_a_crafted_canary_and_the_champion_answers(api, crafted, trained,
                                                                   champion_back, kind):
    name, version = crafted[0], crafted[1][kind]
    row = trained.X_test.iloc[0].to_dict()
    assert api.post("/admin/reload", json={}).json()["status"] == "unchanged"
    start_rollout(MlflowClient(), name, "canary", version, "1", ((0.0, 1.0),))  # everyone
    with bounded():
        response = api.post("/admin/reload", json={})
    body = response.json()
    # The champion did not change; the reload's only candidate, the canary, was refused.
    assert response.status_code == 409 and body["status"] == "unchanged", body
    assert body["rollout"]["status"] == "rejected" and body["rollout"]["version"] == version
    names_the_check(body["rollout"]["detail"], name, kind, version)
    for key in ("a", "b", "c"):  # a 100% canary share: every client would get it
        _answers_with_version_1(api, row, key)
    assert api.get("/model").json()["rollout"] is None


# -- the assets and the CLI ----------------------------------------------------------------

def _split():
    return split_frame(load_breast_cancer_frame(), BREAST_CANCER_TARGET, seed=3)


@pytest.mark.parametrize("kind", CRAFTED)
def test_batch_predictions_refuses_a_crafted_champion(crafted, tracking, champion_back,
                                                      instance, tmp_path, kind):
    from dagster import materialize

    from ml_assets.definitions import defs

    name, version = crafted[0], crafted[1][kind]
    production = ProductionDataResource(
        prediction_log_path=str(tmp_path / "log.db"), landing_dir=str(tmp_path / "landing"),
        labels_dir=str(tmp_path / "labels"), batch_input_dir=str(tmp_path / "batch_in"),
        batch_output_dir=str(tmp_path / "batch_out"))
    folder = Path(production.batch_input_dir) / DAY
    folder.mkdir(parents=True)
    _split().X_test.head(20).to_csv(folder / "clinic.csv", index=False)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    with bounded():
        result = materialize(
            [defs.get_assets_def("batch_predictions")], partition_key=DAY,
            instance=instance, raise_on_error=False,
            resources={"production": production, "mlflow_tracking": tracking,
                       "data_source": DataSourceResource(kind="breast_cancer")})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data.user_failure_data
    assert data is not None, failure.step_failure_data.error.message  # a Failure, no crash
    assert data.description.startswith(f"batch input of {DAY} cannot be scored: champion "
                                       f"version {version} of {name} was refused: ")
    names_the_check(data.description, name, kind, version)
    assert data.metadata["problem"].value == "untrusted model"
    assert not (Path(production.batch_output_dir) / DAY).exists()


@pytest.mark.parametrize("kind", CRAFTED)
def test_production_data_refuses_to_score_landed_rows_with_a_crafted_champion(
        crafted, trained, tracking, champion_back, kind):
    from dagster import Failure

    from ml_assets.core.data.production_rows import Lineage
    from ml_assets.monitoring import _score_with_champion

    name, version = crafted[0], crafted[1][kind]
    # Every version in the lineage: the crafted one would score the rows if opened.
    lineage = Lineage(name, "breast_cancer", frozenset({"1", *crafted[1].values()}), {})
    rows = trained.X_test.head(5).reset_index(drop=True)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    with bounded(), pytest.raises(Failure) as caught:
        _score_with_champion(rows, tracking, lineage)
    description = caught.value.description
    assert description.startswith(f"landed rows cannot be scored: champion version "
                                  f"{version} of {name} was refused: ")
    names_the_check(description, name, kind, version)
    # Control: the good champion scores the same rows.
    MlflowClient().set_registered_model_alias(name, "champion", "1")
    assert set(_score_with_champion(rows, tracking, lineage)["model_version"]) == {"1"}


@pytest.mark.parametrize("kind", CRAFTED)
def test_champion_comparison_refuses_a_crafted_champion(crafted, trained, tracking,
                                                        champion_back, kind):
    from dagster import AssetCheckResult, Output, build_asset_context

    from ml_assets.core.modeling.metrics import classification_metrics
    from ml_assets.registry import PromotionConfig, RegisteredModel, champion_comparison

    name, version = crafted[0], crafted[1][kind]
    split = _split()
    proba = trained.pipeline.predict_proba(split.X_test)
    classes = trained.pipeline.classes_
    metrics = classification_metrics(split.y_test, classes[proba.argmax(axis=1)], proba,
                                     classes)
    challenger = RegisteredModel(name, "1", f"models:/{name}/1", "run")
    MlflowClient().set_registered_model_alias(name, "champion", version)
    with bounded():
        events = list(champion_comparison(
            build_asset_context(), config=PromotionConfig(), registered_model=challenger,
            model_metrics=metrics, data_split=split, mlflow_tracking=tracking))
    output = next(e for e in events if isinstance(e, Output))
    check = next(e for e in events if isinstance(e, AssetCheckResult))
    reason = output.value.decision.reason
    assert reason.startswith(f"not promoted without a comparison: the champion (version "
                             f"{version})"), reason
    names_the_check(reason, name, kind, version)
    assert not output.value.decision.promote and not check.passed
    assert check.description == reason
    assert MlflowClient().get_model_version(name, "1").tags["promotion.reason"] == reason


@pytest.mark.parametrize("kind", CRAFTED)
def test_rollback_refuses_to_restore_a_crafted_version(mlflow_store, crafted, champion_back,
                                                       monkeypatch, capsys, kind):
    from ml_assets import cli
    from ml_assets.core.registry import champion as registry

    name, version = crafted[0], crafted[1][kind]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store["tracking_uri"])
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", name)
    monkeypatch.delenv(TRUSTED_TYPES_ENV, raising=False)
    with bounded():
        assert cli.rollback(version, "test") == 1
    err = capsys.readouterr().err
    assert f"version {version} cannot be restored" in err, err
    names_the_check(err, name, kind, version)
    assert str(registry.alias_version(MlflowClient(), name, "champion").version) == "1"
