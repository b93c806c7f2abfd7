"""Safe model loading: the platform, never the artifact, decides how a model is opened.

Hostile versions (a pickle whose `__reduce__` writes a marker file; a skops file whose
own MLmodel trusts a function that writes one) are pointed at by `champion` and must
be refused unopened everywhere a model is opened: the real `python -m serving`
process on /admin/reload (ml_assets_tests/e2e/test_safe_loading_process.py: the old
champion keeps serving), the promotion comparison and the monitoring scorer. The marker
file proves no byte of their code ran.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.preprocessing import FunctionTransformer

from ml_assets.core.artifacts.loading import (
    OPERATOR_TYPES_KEY,
    OPERATOR_TYPES_TAG,
    TRUSTED_TYPES_ENV,
    UntrustedModelError,
    load_pipeline,
)
from ml_assets.core.artifacts.saving import log_pipeline
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.data.preprocessing import split_frame
from ml_assets.core.modeling.metrics import classification_metrics
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
from ml_assets_tests.support.hostile_models import (
    HOOK_TYPE,
    PickleBomb,
    edit_flavor,
    hooked,
    save_dir,
)
from ml_assets_tests.support.hostile_models import hostile_registry as registered_hostile
from ml_assets_tests.support.models import (
    TrainedPipeline,
    experiment_id,
    register,
    train_breast_cancer,
)


@pytest.fixture(scope="module")
def trained() -> TrainedPipeline:
    return train_breast_cancer(n_estimators=5, seed=3)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


# -- the loader, on local model directories ---------------------------------------------

def test_the_payloads_are_live(tmp_path, trained, marker):
    """Control: what MLflow's own loaders would do with these files runs the payloads."""
    import pickle

    import skops.io

    pickle.loads(pickle.dumps(PickleBomb(trained.pipeline, marker)))
    assert marker.read_text() == "pickle payload ran"
    marker.unlink()
    model_dir = save_dir(tmp_path / "m", hooked(trained, marker), trained,
                         trusted=[*SKOPS_TRUSTED_TYPES, HOOK_TYPE])
    marker.unlink(missing_ok=True)
    trusted_by_artifact = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"][
        "sklearn"]["skops_trusted_types"]
    skops.io.load(model_dir / "model.skops", trusted=trusted_by_artifact).predict(
        trained.X_test.head(1))
    assert marker.read_text() == "skops-trusted function ran"


def test_a_good_model_loads_and_predicts(tmp_path, trained):
    loaded = load_pipeline(str(save_dir(tmp_path / "m", trained.pipeline, trained,
                                        trusted=SKOPS_TRUSTED_TYPES)))
    assert loaded.target == BREAST_CANCER_TARGET and loaded.classes == ["benign", "malignant"]
    assert (loaded.pipeline.predict(trained.X_test) == trained.pipeline.predict(
        trained.X_test)).all()


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle", None])
def test_pickle_cloudpickle_or_no_format_is_refused_unopened(tmp_path, trained, marker, fmt):
    model_dir = save_dir(tmp_path / "m", PickleBomb(trained.pipeline, marker), trained,
                         fmt=fmt or "pickle")
    if fmt is None:  # no format: MLflow would unpickle it
        edit_flavor(model_dir, serialization_format=None)
    with pytest.raises(UntrustedModelError, match="serialization_format") as caught:
        load_pipeline(str(model_dir), source="version 7")
    message = str(caught.value)
    assert "version 7" in message and "only 'skops'" in message
    assert (repr(fmt) if fmt else "missing (MLflow treats that as pickle)") in message
    assert not marker.exists()


def test_the_artifacts_own_trusted_list_is_ignored(tmp_path, trained, marker, monkeypatch):
    monkeypatch.delenv(TRUSTED_TYPES_ENV, raising=False)
    model_dir = save_dir(tmp_path / "m", hooked(trained, marker), trained,
                         trusted=[*SKOPS_TRUSTED_TYPES, HOOK_TYPE, "builtins.exec"])
    marker.unlink(missing_ok=True)  # MLflow's save called the pipeline for its checks
    assert HOOK_TYPE in yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"][
        "sklearn"]["skops_trusted_types"]
    with pytest.raises(UntrustedModelError) as caught:
        load_pipeline(str(model_dir), source="models:/m/3")
    message = str(caught.value)
    assert "models:/m/3" in message and HOOK_TYPE in message
    assert f"{TRUSTED_TYPES_ENV}={HOOK_TYPE}" in message  # how to allow it
    assert caught.value.types == [HOOK_TYPE]
    assert not marker.exists()


def test_builtins_exec_trusted_by_the_artifact_is_refused(tmp_path, trained):
    model = FunctionTransformer(exec).fit(trained.X_train)  # a skops file needing exec
    model_dir = save_dir(tmp_path / "m", model, trained, trusted=["builtins.exec"])
    with pytest.raises(UntrustedModelError, match="builtins.exec"):
        load_pipeline(str(model_dir))


def test_operator_extras_allow_a_reviewed_type(tmp_path, trained, marker, monkeypatch):
    model_dir = save_dir(tmp_path / "m", hooked(trained, marker), trained,
                         trusted=[*SKOPS_TRUSTED_TYPES, HOOK_TYPE])
    monkeypatch.setenv(TRUSTED_TYPES_ENV, f" numpy.float64 , {HOOK_TYPE},")
    loaded = load_pipeline(str(model_dir))
    assert [name for name, _ in loaded.pipeline.steps] == ["hook", "model"]
    # Extras given explicitly replace the environment's.
    with pytest.raises(UntrustedModelError, match=HOOK_TYPE):
        load_pipeline(str(model_dir), extra_trusted=[])


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink", "directory"])
def test_a_model_file_outside_the_model_directory_is_refused(tmp_path, trained, attack):
    model_dir = save_dir(tmp_path / "m", trained.pipeline, trained)
    outside = tmp_path / "outside.skops"
    shutil.copy(model_dir / "model.skops", outside)
    if attack == "dotdot":
        edit_flavor(model_dir, pickled_model="../outside.skops")
    elif attack == "absolute":
        edit_flavor(model_dir, pickled_model=str(outside))
    elif attack == "symlink":
        (model_dir / "model.skops").unlink()
        (model_dir / "model.skops").symlink_to(outside)
    else:
        edit_flavor(model_dir, pickled_model=".")
    with pytest.raises(UntrustedModelError, match="outside the model directory|names no "
                       "model file|resolves to"):
        load_pipeline(str(model_dir))


def test_mlmodel_is_parsed_safely(tmp_path, trained, marker):
    model_dir = save_dir(tmp_path / "m", trained.pipeline, trained)
    mlmodel = model_dir / "MLmodel"
    mlmodel.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n"
                       + mlmodel.read_text())
    with pytest.raises(yaml.YAMLError):
        load_pipeline(str(model_dir))
    assert not marker.exists()


def test_an_object_that_is_no_estimator_is_refused(tmp_path, trained):
    model_dir = save_dir(tmp_path / "m", trained.pipeline, trained)
    import skops.io

    skops.io.dump({"not": "a model"}, model_dir / "model.skops")
    with pytest.raises(UntrustedModelError, match="not a scikit-learn estimator"):
        load_pipeline(str(model_dir))


# -- training side ----------------------------------------------------------------------

def test_training_a_pipeline_with_an_unlisted_type_fails_naming_it(
        mlflow_store, unique_name, trained, marker, monkeypatch, caplog):
    monkeypatch.delenv(TRUSTED_TYPES_ENV, raising=False)
    pipeline = hooked(trained, marker)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    with mlflow.start_run(experiment_id=experiment), pytest.raises(UntrustedModelError) as e:
        log_pipeline(pipeline, trained.X_train, trained.schema, trained.target)
    message = str(e.value)
    assert HOOK_TYPE in message and TRUSTED_TYPES_ENV in message and "log" in message

    # Reviewed by the operator: it trains, and the extra is flagged for review.
    monkeypatch.setenv(TRUSTED_TYPES_ENV, HOOK_TYPE)
    with caplog.at_level(logging.WARNING, logger="ml_assets.core.artifacts.saving"):
        version, info = register(dataclasses.replace(trained, pipeline=pipeline),
                                 unique_name, experiment)
    assert any(HOOK_TYPE in r.getMessage() for r in caplog.records)
    assert info.metadata[OPERATOR_TYPES_KEY] == [HOOK_TYPE]
    run = MlflowClient().get_run(info.run_id)
    assert run.data.tags[OPERATOR_TYPES_TAG] == HOOK_TYPE
    flavor = info.flavors["sklearn"]
    assert flavor["serialization_format"] == "skops" and HOOK_TYPE in flavor[
        "skops_trusted_types"]
    assert load_pipeline(f"models:/{unique_name}/{version}").classes == ["benign",
                                                                         "malignant"]


def test_a_default_pipeline_records_only_reviewed_types(cancer_champion):
    info = cancer_champion.info  # logged by log_pipeline, as every default pipeline
    assert set(info.flavors["sklearn"]["skops_trusted_types"]) <= set(SKOPS_TRUSTED_TYPES)
    assert OPERATOR_TYPES_KEY not in info.metadata


# -- every place that opens the champion ------------------------------------------------

@pytest.fixture
def hostile_registry(mlflow_store, unique_name, trained, marker):
    """v1 good; v2 a pickle bomb; v3 a skops file trusting its own hook. No alias yet."""
    return registered_hostile(trained, marker, unique_name, mlflow_store["artifact_root"])


def _split():
    return split_frame(load_breast_cancer_frame(), BREAST_CANCER_TARGET, seed=3)


@pytest.mark.parametrize("version", ["2", "3"])
def test_promotion_refuses_to_open_a_hostile_champion(mlflow_store, hostile_registry,
                                                      trained, marker, tmp_path, version):
    from dagster import AssetCheckResult, Output, build_asset_context

    from ml_assets.registry import (
        PromotionConfig,
        RegisteredModel,
        _answers,
        champion_comparison,
    )
    from ml_assets.resources import MlflowTracking

    name = hostile_registry
    split = _split()
    with pytest.raises(UntrustedModelError, match=f"models:/{name}/{version}"):
        _answers(f"models:/{name}/{version}", split, f"models:/{name}/{version}")
    assert not marker.exists()

    # Through the asset: the comparison names the refused champion, opens nothing.
    MlflowClient().set_registered_model_alias(name, "champion", version)
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=name, registered_model_name=name,
                              artifact_location=(tmp_path / "art").as_uri())
    proba = trained.pipeline.predict_proba(split.X_test)
    metrics = classification_metrics(split.y_test, trained.pipeline.classes_[
        proba.argmax(axis=1)], proba, trained.pipeline.classes_)
    challenger = RegisteredModel(name, "1", f"models:/{name}/1", "run")
    events = list(champion_comparison(build_asset_context(), config=PromotionConfig(),
                                      registered_model=challenger, model_metrics=metrics,
                                      data_split=split, mlflow_tracking=tracking))
    output = next(e for e in events if isinstance(e, Output))
    check = next(e for e in events if isinstance(e, AssetCheckResult))
    reason = output.value.decision.reason
    # Fails closed: the refused champion is named, and nothing is promoted without a
    # comparison.
    assert reason.startswith(f"not promoted without a comparison: the champion (version "
                             f"{version})") and check.description == reason
    assert not output.value.decision.promote and not check.passed
    tags = MlflowClient().get_model_version(name, "1").tags
    assert f"the champion (version {version})" in tags["promotion.reason"]
    assert not marker.exists()


@pytest.mark.parametrize("version", ["2", "3"])
def test_monitoring_refuses_to_score_with_a_hostile_champion(mlflow_store, hostile_registry,
                                                             trained, marker, tmp_path,
                                                             version):
    from dagster import Failure

    from ml_assets.monitoring import _score_with_champion
    from ml_assets.resources import MlflowTracking

    name = hostile_registry
    MlflowClient().set_registered_model_alias(name, "champion", version)
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=name, registered_model_name=name,
                              artifact_location=(tmp_path / "art").as_uri())
    with pytest.raises(Failure) as caught:
        _score_with_champion(trained.X_test.head(5), tracking)
    assert f"champion version {version} of {name} was refused" in caught.value.description
    assert not marker.exists()
    MlflowClient().set_registered_model_alias(name, "champion", "1")  # the good one scores
    scored = _score_with_champion(trained.X_test.head(5), tracking)
    assert set(scored["model_version"]) == {"1"}


def test_rollback_refuses_to_restore_a_hostile_version(mlflow_store, hostile_registry, marker,
                                                       monkeypatch, capsys):
    from ml_assets import cli
    from ml_assets.core.registry import champion as registry

    name = hostile_registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store["tracking_uri"])
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", name)
    monkeypatch.delenv(TRUSTED_TYPES_ENV, raising=False)
    for version, phrase in (("2", "serialization_format 'pickle'"), ("3", HOOK_TYPE)):
        assert cli.rollback(version, "test") == 1
        err = capsys.readouterr().err
        assert f"version {version} cannot be restored" in err and phrase in err
        assert str(registry.alias_version(MlflowClient(), name, "champion").version) == "1"
    assert not marker.exists()
    # The current champion is no rollback target.
    assert cli.rollback("1", "test") == 1
    assert "version 1 is already the champion" in capsys.readouterr().err
    # The good version passes the same check (it never was champion by the history).
    MlflowClient().set_registered_model_alias(name, "champion", "2")
    assert cli.rollback("1", "test") == 0
    assert ("champion is now version 1, which was never champion before (was 2)"
            in capsys.readouterr().out)
