"""Bring your own estimator or pipeline, by import path, through the whole graph: a class
with JSON params (ML_ESTIMATOR), a factory in the project directory returning a Pipeline
with a custom transformer (ML_MODEL_FACTORY), with the platform's preprocessing in front
or its own; its skops types must be listed by a person, else training fails naming them."""

import uuid

import pytest

from ml_assets.core.artifacts.loading import load_pipeline
from ml_assets.core.modeling import estimators
from ml_assets.resources import DataSourceResource
from ml_assets_tests.support.graph import materialized, run_graph

FACTORY = '''
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


class Clip(TransformerMixin, BaseEstimator):
    """Clips every value to [-limit, limit]: plain data, safe for skops to rebuild."""

    def __init__(self, limit=4.0):
        self.limit = limit

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), -self.limit, self.limit)


def build(C=1.0):
    return Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                     ("clip", Clip()), ("classifier", LogisticRegression(C=C, max_iter=500))])
'''


@pytest.fixture
def source():
    return DataSourceResource(kind="synthetic", n_rows=400, n_numeric=4, class_sep=2.0,
                              seed=6)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A user's module in the project directory (the working directory), uniquely named
    so that each test imports its own."""
    name = f"user_model_{uuid.uuid4().hex[:8]}"
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{name}.py").write_text(FACTORY)
    monkeypatch.chdir(project)
    for variable in ("ML_ESTIMATOR", "ML_ESTIMATOR_PARAMS", "ML_MODEL_FACTORY",
                     "ML_MODEL_PREPROCESSING", "ML_SKOPS_TRUSTED_TYPES", "ML_TUNING_TRIALS"):
        monkeypatch.delenv(variable, raising=False)
    return name


def _failure_message(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message


@pytest.mark.parametrize("preprocessing", ["own", "platform"])
def test_a_factory_pipeline_with_a_listed_custom_type_trains(
        factory_module, source, mlflow_tracking, instance, monkeypatch, preprocessing):
    monkeypatch.setenv("ML_MODEL_FACTORY", f"{factory_module}:build")
    monkeypatch.setenv("ML_ESTIMATOR_PARAMS", '{"C": 0.7}')
    monkeypatch.setenv("ML_MODEL_PREPROCESSING", preprocessing)
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", f"{factory_module}.Clip")
    result = run_graph(source, mlflow_tracking, instance)
    assert result.success
    trained = result.output_for_node("trained_model")
    steps = list(trained.pipeline.named_steps)
    assert steps == (["model"] if preprocessing == "own" else ["preprocess", "model"])
    user_pipeline = trained.pipeline.named_steps["model"]
    assert user_pipeline.named_steps["classifier"].C == 0.7
    assert trained.estimator == "sklearn.linear_model._logistic.LogisticRegression"
    assert f"{factory_module}.Clip" in trained.skops_types
    run = mlflow_tracking.client.get_run(trained.mlflow_run_id)
    tags = run.data.tags
    assert tags["user_model.import_path"] == f"{factory_module}:build"
    assert len(tags["user_model.source_sha256"]) == 64
    assert tags["user_code_version"] == tags["user_model.source_sha256"][:12]
    assert tags["code_version"] and tags["model_preprocessing"] == preprocessing
    assert f"{factory_module}.Clip" in tags["skops.types_needed"]
    # The platform's loader opens it, because the type is listed by the operator.
    loaded = load_pipeline(trained.model_uri)
    assert loaded.metadata["user_code"]["user_model.import_path"] == f"{factory_module}:build"
    assert loaded.metadata["task"] == "binary" and loaded.classes == ["class_0", "class_1"]
    rows = source.load().drop(columns="label").head(8)
    assert list(loaded.pipeline.predict(rows)) == list(trained.pipeline.predict(rows))


def test_an_unlisted_custom_type_fails_training_naming_it(factory_module, source,
                                                          mlflow_tracking, instance,
                                                          monkeypatch):
    monkeypatch.setenv("ML_MODEL_FACTORY", f"{factory_module}:build")
    monkeypatch.setenv("ML_MODEL_PREPROCESSING", "own")
    result = run_graph(source, mlflow_tracking, instance)
    assert not result.success
    message = _failure_message(result)
    assert f"{factory_module}.Clip" in message and "ML_SKOPS_TRUSTED_TYPES" in message
    assert "before the model was logged or registered" in message
    assert not materialized(result, "trained_model")
    assert not materialized(result, "model_metrics")
    runs = mlflow_tracking.client.search_runs([mlflow_tracking.experiment_id()])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["skops.untrusted_types"] == f"{factory_module}.Clip"
    assert not mlflow_tracking.client.search_logged_models([mlflow_tracking.experiment_id()])


def test_a_plain_estimator_class_with_json_params(source, mlflow_tracking, instance,
                                                   monkeypatch):
    monkeypatch.delenv("ML_MODEL_FACTORY", raising=False)
    monkeypatch.setenv("ML_ESTIMATOR", "sklearn.linear_model:LogisticRegression")
    monkeypatch.setenv("ML_ESTIMATOR_PARAMS", '{"C": 0.5, "max_iter": 300}')
    result = run_graph(source, mlflow_tracking, instance)
    assert result.success
    trained = result.output_for_node("trained_model")
    model = trained.pipeline.named_steps["model"]
    assert type(model).__name__ == "LogisticRegression" and model.C == 0.5
    assert list(trained.pipeline.named_steps) == ["preprocess", "model"]
    metrics = result.output_for_node("model_metrics")
    assert metrics["roc_auc"] > 0.9
    tags = mlflow_tracking.client.get_run(trained.mlflow_run_id).data.tags
    assert tags["estimator"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert tags["user_model.import_path"] == "sklearn.linear_model:LogisticRegression"
    assert tags["user_model.package_version"].startswith("scikit-learn==")


def test_a_bad_import_path_or_a_regressor_for_classes_fails_with_a_sentence(
        source, mlflow_tracking, instance, monkeypatch):
    monkeypatch.delenv("ML_MODEL_FACTORY", raising=False)
    monkeypatch.setenv("ML_ESTIMATOR", "sklearn.linear_model:Ridge")
    result = run_graph(source, mlflow_tracking, instance)
    assert not result.success
    assert "is a regressor but the target is a binary classification" in _failure_message(
        result)


def test_resolve_and_params_errors_are_sentences(tmp_path):
    with pytest.raises(estimators.UserModelError, match="cannot import module 'no_such_mod'"):
        estimators.from_class("no_such_mod:Thing", {}, "binary", project_dir=tmp_path)
    with pytest.raises(estimators.UserModelError, match="has no attribute 'Nope'"):
        estimators.from_class("sklearn.linear_model:Nope", {}, "binary")
    with pytest.raises(estimators.UserModelError, match="not valid JSON"):
        estimators.parse_params("{C: 1}")
    with pytest.raises(estimators.UserModelError, match="no predict_proba"):
        estimators.from_class("sklearn.svm:SVC", {}, "binary")
    assert estimators.from_class("sklearn.svm:SVC", {"probability": True}, "binary")
