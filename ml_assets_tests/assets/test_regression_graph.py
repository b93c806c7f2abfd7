"""A continuous target through the whole graph: scikit-learn's bundled diabetes data as
a user's CSV. Task detected as regression, plain split, KFold CV, RMSE/MAE/R²/MAPE
gated in their directions, a residual plot, registered and promoted on RMSE."""

import numpy as np
import pytest
import yaml
from dagster import materialize
from sklearn.datasets import load_diabetes

from ml_assets.core.artifacts.loading import load_pipeline, model_directory, read_mlmodel
from ml_assets.core.registry import champion as registry
from ml_assets.definitions import defs
from ml_assets.evaluation import METRICS_CHECK
from ml_assets.registry import PROMOTION_CHECK
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets_tests.support.graph import (
    ALL_ASSETS,
    check_evaluation,
    empty_production,
    materialized,
)

REGISTRY = [defs.get_assets_def(k) for k in ("registered_model", "champion_comparison",
                                             "champion_model")]
FAST = {"n_estimators": 25, "cv_folds": 3, "max_depth": 6}


@pytest.fixture
def tracking(mlflow_store, unique_name, tmp_path):
    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name=unique_name, registered_model_name=unique_name,
                          artifact_location=(tmp_path / "art").as_uri())


@pytest.fixture
def diabetes(tmp_path, monkeypatch):
    monkeypatch.delenv("ML_TASK", raising=False)
    path = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True).frame.to_csv(path, index=False)
    return DataSourceResource(kind="files", path=str(path), target="target",
                              schema_dir=str(tmp_path / "schemas"))


def _run(source, tracking, instance, training=None, gate=None, registry_too=True):
    ops = {"trained_model": {"config": {**FAST, **(training or {})}}}
    if gate:
        ops["model_metrics"] = {"config": gate}
    return materialize(
        ALL_ASSETS + (REGISTRY if registry_too else []), instance=instance,
        raise_on_error=False,
        resources={"data_source": source, "mlflow_tracking": tracking,
                   "production": empty_production(instance.root_directory)},
        run_config={"ops": ops})


def _metadata(result, name: str) -> dict:
    events = [e for e in result.get_asset_materialization_events()
              if e.asset_key.to_user_string() == name]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def test_diabetes_regression_trains_registers_and_promotes_on_rmse(diabetes, tracking,
                                                                   instance, tmp_path):
    first = _run(diabetes, tracking, instance,
                 training={"n_estimators": 3, "max_depth": 1}, gate={"min_r2": 0.0})
    assert first.success
    # The schema reads the target as a number, not as 214 classes.
    schema = yaml.safe_load((tmp_path / "schemas" / "diabetes" / "v1.yaml").read_text())
    assert schema["columns"]["target"]["dtype"] == "float64"
    assert "isin" not in schema["columns"]["target"]
    split = _metadata(first, "data_split")
    assert split["task"] == "regression" and "distinct numeric values" in split["task_reason"]
    assert split["classes"] == []
    trained = first.output_for_node("trained_model")
    assert trained.task == "regression" and trained.classes == []
    assert trained.estimator.endswith("RandomForestRegressor")
    assert trained.cv.metric == "neg_root_mean_squared_error" and trained.cv.mean < 0
    assert _metadata(first, "trained_model")["task"] == "regression"
    metrics = first.output_for_node("model_metrics")
    assert set(metrics) == {"rmse", "mae", "r2", "mape"}
    assert metrics["rmse"] > metrics["mae"] > 0 and 0 < metrics["mape"] < 1
    evaluation = _metadata(first, "model_metrics")
    assert evaluation["residual_plot"].startswith("![residuals](data:image/png;base64,")
    assert evaluation["task"] == "regression"
    run = tracking.client.get_run(trained.mlflow_run_id)
    assert run.data.tags["task"] == "regression"
    assert run.data.metrics["test_rmse"] == metrics["rmse"]
    assert "cv_neg_root_mean_squared_error_mean" in run.data.metrics
    assert "residuals.png" in {a.path for a in tracking.client.list_artifacts(run.info.run_id)}
    # The MLmodel says regression and carries no classes; the output is a number.
    with model_directory(trained.model_uri) as directory:
        mlmodel = read_mlmodel(directory, "test")
    assert mlmodel["metadata"]["task"] == "regression" and "classes" not in mlmodel["metadata"]
    assert '"type": "tensor"' in mlmodel["signature"]["outputs"]
    assert "float64" in mlmodel["signature"]["outputs"]
    loaded = load_pipeline(trained.model_uri)
    rows = load_diabetes(as_frame=True).data.head(5)
    np.testing.assert_allclose(loaded.pipeline.predict(rows), trained.pipeline.predict(rows))
    assert loaded.classes == []

    name, client = tracking.registered_model_name, tracking.client
    assert str(registry.alias_version(client, name, "champion").version) == "1"
    second = _run(diabetes, tracking, instance, gate={"min_r2": 0.0})
    assert second.success, "a stronger forest has a lower RMSE: promoted"
    tags = client.get_model_version(name, "2").tags
    assert tags["promotion.metric"] == "rmse" and tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.challenger.rmse"]) < float(tags["promotion.champion.rmse"])
    assert "lower is better" in tags["promotion.reason"]
    assert tags["task"] == "regression"
    comparison = check_evaluation(second, PROMOTION_CHECK)
    assert comparison.metadata["direction"].value == "min"

    worse = _run(diabetes, tracking, instance,
                 training={"n_estimators": 3, "max_depth": 1}, gate={"min_r2": 0.0})
    assert worse.success and not materialized(worse, "champion_model")
    assert "is worse than" in check_evaluation(worse, PROMOTION_CHECK).description
    assert str(registry.alias_version(client, name, "champion").version) == "2"


def test_a_weak_regressor_fails_the_gate_naming_metric_and_direction(diabetes, tracking,
                                                                     instance):
    result = _run(diabetes, tracking, instance, gate={"min_r2": 0.99, "max_rmse": 10.0},
                  registry_too=False)
    assert not result.success
    evaluation = check_evaluation(result, METRICS_CHECK)
    assert not evaluation.passed
    failing = evaluation.metadata["failing_metrics"].value
    assert set(failing) == {"r2", "rmse"}, "classification thresholds do not apply"
    assert "< 0.9900" in failing["r2"] and "> 10.0000" in failing["rmse"]
    assert "r2 " in evaluation.description and "rmse " in evaluation.description
    assert evaluation.description.endswith(
        "(thresholds: model_metrics config min_r2, max_rmse)"), evaluation.description


def test_a_metric_the_task_lacks_is_a_clear_error():
    from ml_assets.registry import PromotionConfig

    assert PromotionConfig().metric_for("regression") == "rmse"
    assert PromotionConfig().metric_for("binary") == "f1_weighted"
    assert PromotionConfig(metric="r2").metric_for("regression") == "r2"
    with pytest.raises(ValueError, match="'f1_weighted' does not exist for a regression "
                       "model; use one of rmse, mae, r2, mape"):
        PromotionConfig(metric="f1_weighted").metric_for("regression")
    with pytest.raises(ValueError, match="'rmse' does not exist for a classification"):
        PromotionConfig(metric="rmse").metric_for("multiclass")


def test_a_users_regressor_tuned_on_rmse(diabetes, tracking, instance, monkeypatch):
    monkeypatch.delenv("ML_MODEL_FACTORY", raising=False)
    monkeypatch.setenv("ML_ESTIMATOR", "sklearn.linear_model:Ridge")
    monkeypatch.setenv("ML_TUNING_TRIALS", "3")
    monkeypatch.setenv("ML_TUNING_SPACE",
                       '{"alpha": {"type": "float", "low": 0.001, "high": 100, "log": true}}')
    result = _run(diabetes, tracking, instance, registry_too=False)
    assert result.success
    trained = result.output_for_node("trained_model")
    assert trained.estimator == "sklearn.linear_model._ridge.Ridge"
    assert trained.tuning["scoring"] == "neg_root_mean_squared_error"
    assert trained.tuning["best_score"] < 0  # a negated RMSE, maximised
    assert trained.pipeline.named_steps["model"].alpha == trained.tuning["best_params"]["alpha"]
    children = tracking.client.search_runs(
        [tracking.experiment_id()],
        filter_string=f"tags.mlflow.parentRunId = '{trained.mlflow_run_id}'")
    assert len(children) == 3
    assert result.output_for_node("model_metrics")["r2"] > 0.3
