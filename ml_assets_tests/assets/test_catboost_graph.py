"""CatBoost named by import path (ML_ESTIMATOR=catboost:CatBoostClassifier), with no
wrapper of the user's, through the whole graph: behind the platform's preprocessing on
the default dataset it trains on string labels, logs its effective parameters, is
registered and compiled through CatBoost's own ONNX export (parity passed); on raw
columns (ML_MODEL_PREPROCESSING=own) its native categorical handling takes the
categorical columns, and the version says why it is not compiled."""

import pytest
from dagster import materialize

from ml_assets.core.artifacts.loading import load_pipeline
from ml_assets.core.modeling.catboost_model import CatBoostModel
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource
from ml_assets_tests.support.graph import ALL_ASSETS, empty_production, run_config

SMALL = '{"iterations": 40, "depth": 4, "thread_count": 1}'


@pytest.fixture(autouse=True)
def catboost_settings(monkeypatch):
    for variable in ("ML_ESTIMATOR_PARAMS", "ML_MODEL_FACTORY", "ML_MODEL_PREPROCESSING",
                     "ML_SKOPS_TRUSTED_TYPES", "ML_TUNING_TRIALS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ML_ESTIMATOR", "catboost:CatBoostClassifier")
    monkeypatch.setenv("ML_ESTIMATOR_PARAMS", SMALL)


def run_graph(source, mlflow_tracking, instance):
    """The training graph and the registration (which compiles and checks parity)."""
    return materialize(
        [*ALL_ASSETS, defs.get_assets_def("registered_model")], instance=instance,
        raise_on_error=False, run_config=run_config(),
        resources={"data_source": source, "mlflow_tracking": mlflow_tracking,
                   "production": empty_production(instance.root_directory)})


def _registered(result, mlflow_tracking):
    registered = result.output_for_node("registered_model")
    client = mlflow_tracking.client
    return registered, client.get_model_version(registered.name, registered.version)


def test_catboost_on_the_default_dataset_trains_registers_and_compiles(
        mlflow_tracking, instance, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # CatBoost would write catboost_info/ here
    result = run_graph(DataSourceResource(kind="breast_cancer"), mlflow_tracking, instance)
    assert result.success
    trained = result.output_for_node("trained_model")
    model = trained.pipeline.named_steps["model"]
    assert isinstance(model, CatBoostModel)
    assert type(model.estimator_).__name__ == "CatBoostClassifier"
    assert list(trained.pipeline.classes_) == ["benign", "malignant"]  # string labels
    assert not (tmp_path / "catboost_info").exists()

    run = mlflow_tracking.client.get_run(trained.mlflow_run_id)
    assert run.data.tags["estimator"] == "catboost.core.CatBoostClassifier"
    params = run.data.params
    assert params["iterations"] == "40" and params["depth"] == "4"
    assert params["l2_leaf_reg"] == "3"  # CatBoost's own default, logged
    assert "model_type" not in params and "n_estimators" not in params

    registered, version = _registered(result, mlflow_tracking)
    assert version.tags["onnx.parity"] == "passed", version.tags.get("onnx.parity.reason")
    loaded = load_pipeline(registered.model_uri)
    rows = result.output_for_node("data_split").X_test
    assert list(loaded.pipeline.predict(rows)) == list(trained.pipeline.predict(rows))


def test_catboost_on_raw_columns_uses_its_categorical_handling(
        mlflow_tracking, instance, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ML_MODEL_PREPROCESSING", "own")
    source = DataSourceResource(kind="synthetic", n_rows=500, n_numeric=3, n_categorical=2,
                                missing_fraction=0.05, class_sep=2.0, seed=4)
    result = run_graph(source, mlflow_tracking, instance)
    assert result.success
    trained = result.output_for_node("trained_model")
    assert list(trained.pipeline.named_steps) == ["model"]
    model = trained.pipeline.named_steps["model"]
    assert len(model.cat_features_) == 2
    assert result.output_for_node("model_metrics")["roc_auc"] > 0.8
    registered, version = _registered(result, mlflow_tracking)
    assert version.tags["onnx.parity"] == "not_converted"
    assert "does not support categorical features" in version.tags["onnx.parity.reason"]
    loaded = load_pipeline(registered.model_uri)
    rows = result.output_for_node("data_split").X_test
    assert (loaded.pipeline.predict_proba(rows) == trained.pipeline.predict_proba(rows)).all()
