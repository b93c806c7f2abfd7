"""Hyper-parameter search before the final fit: a seeded trial budget, every trial an
MLflow child run of the training run, the best parameters in the final fit and the
asset metadata, the same best parameters for the same seed."""

import json

import pytest

from ml_assets.core.modeling import tuning
from ml_assets.resources import DataSourceResource
from ml_assets.training import TrainingConfig
from ml_assets_tests.support.graph import run_graph

SPACE = {"n_estimators": {"type": "int", "low": 5, "high": 20},
         "max_depth": {"type": "int", "low": 2, "high": 6},
         "min_samples_leaf": {"type": "int", "low": 1, "high": 8}}


def test_five_trials_are_child_runs_and_the_best_params_are_reproducible(
        mlflow_tracking, instance, monkeypatch):
    for variable in ("ML_ESTIMATOR", "ML_MODEL_FACTORY", "ML_TUNING_SPACE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ML_TUNING_TRIALS", "5")  # the budget from the environment
    source = DataSourceResource(kind="synthetic", n_rows=400, n_numeric=4, class_sep=2.0,
                                seed=3)
    training = {"cv_folds": 2, "seed": 7, "tuning_space": json.dumps(SPACE)}
    results = [run_graph(source, mlflow_tracking, instance, training=training)
               for _ in range(2)]
    client = mlflow_tracking.client
    best = []
    for result in results:
        assert result.success
        trained = result.output_for_node("trained_model")
        children = client.search_runs(
            [mlflow_tracking.experiment_id()],
            filter_string=f"tags.mlflow.parentRunId = '{trained.mlflow_run_id}'")
        assert len(children) == 5
        for child in children:
            assert child.data.tags["tuning.state"] in ("complete", "pruned")
            assert set(child.data.params) == set(SPACE)
            if child.data.tags["tuning.state"] == "complete":
                assert "cv_f1_weighted" in child.data.metrics
                assert child.info.status == "FINISHED"
        assert trained.tuning["trials"] == 5 and trained.tuning["budget_trials"] == 5
        params = trained.tuning["best_params"]
        model = trained.pipeline.named_steps["model"]
        assert {k: getattr(model, k) for k in params} == params, "best params in the final fit"
        metadata = next(e for e in result.get_asset_materialization_events()
                        if e.asset_key.to_user_string() == "trained_model"
                        ).materialization.metadata
        assert metadata["tuned_params"].value == params
        run = client.get_run(trained.mlflow_run_id)
        assert json.loads(run.data.tags["tuning.best_params"]) == params
        assert run.data.params["tuned.max_depth"] == str(params["max_depth"])
        best.append(params)
    assert best[0] == best[1]


def test_search_space_rules():
    assert [r.name for r in TrainingConfig(tuning_space="").search_space(None)] == [
        "n_estimators", "max_depth", "min_samples_leaf"]
    hgb = TrainingConfig(model_type="hist_gradient_boosting", tuning_space="")
    assert "learning_rate" in [r.name for r in hgb.search_space(None)]
    with pytest.raises(tuning.TuningError, match="not valid JSON"):
        TrainingConfig(tuning_space="{nope").search_space(None)
    with pytest.raises(tuning.TuningError, match="'C': float needs numbers"):
        TrainingConfig(tuning_space='{"C": {"type": "float", "low": 2, "high": 1}}'
                       ).search_space(None)
    per_estimator = json.dumps({"random_forest": SPACE, "hist_gradient_boosting": {
        "max_iter": {"type": "int", "low": 5, "high": 10}}})
    assert [r.name for r in TrainingConfig(model_type="hist_gradient_boosting",
                                           tuning_space=per_estimator).search_space(None)
            ] == ["max_iter"]
    from ml_assets.core.modeling.estimators import from_class

    with pytest.raises(tuning.TuningError, match="none for the estimator being trained "
                       "\\('sklearn.linear_model:LogisticRegression'\\)"):
        TrainingConfig(tuning_space=per_estimator).search_space(
            from_class("sklearn.linear_model:LogisticRegression", {}, "binary"))

    user = from_class("sklearn.linear_model:LogisticRegression", {}, "binary")
    with pytest.raises(tuning.TuningError, match="needs a search space: set ML_TUNING_SPACE"):
        TrainingConfig(tuning_space="").search_space(user)
