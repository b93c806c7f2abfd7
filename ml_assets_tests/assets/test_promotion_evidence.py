"""Promotion on evidence, through the assets: a champion this process cannot open is kept
(its types are not trusted here; its module is not importable here), naming the cause
and the fix; a challenger whose gain is within the noise of the held-out rows is
refused, on a classifier and on a regressor, with the interval recorded."""

from __future__ import annotations

import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from ml_assets.core.registry import champion as registry
from ml_assets.definitions import defs
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

# The user's champion: a Pipeline with their own transformer (a type skops must be told
# to trust) in front of a linear model.
USER_MODULE = '''
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline


class Clip(TransformerMixin, BaseEstimator):
    def __init__(self, limit=4.0):
        self.limit = limit

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), -self.limit, self.limit)


def build():
    return Pipeline([("clip", Clip()), ("classifier", LogisticRegression(max_iter=500))])
'''

# The challenger of the report: one depth-2 tree.
SMALL_TREE = {"n_estimators": 1, "max_depth": 2, "cv_folds": 2, "n_jobs": 1}


@pytest.fixture
def tracking(mlflow_store, unique_name, tmp_path):
    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name=unique_name, registered_model_name=unique_name,
                          artifact_location=(tmp_path / "art").as_uri())


def _run(instance, tracking, source, training=None, gate=None, comparison=None):
    ops = {"trained_model": {"config": {"cv_folds": 2, "n_jobs": 1, **(training or {})}}}
    if gate:
        ops["model_metrics"] = {"config": gate}
    if comparison:
        ops["champion_comparison"] = {"config": comparison}
    return materialize(ALL_ASSETS + REGISTRY, instance=instance, raise_on_error=False,
                       resources={"data_source": source, "mlflow_tracking": tracking,
                                  "production": empty_production(instance.root_directory)},
                       run_config={"ops": ops})


def _metadata(result, name: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == name]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def user_champion(tmp_path, monkeypatch, tracking):
    """Version 1, the champion: the user's Pipeline from a module generated in the
    project directory (on sys.path, its type trusted) for the first training only."""
    for variable in ("ML_ESTIMATOR", "ML_ESTIMATOR_PARAMS", "ML_MODEL_FACTORY",
                     "ML_MODEL_PREPROCESSING", "ML_SKOPS_TRUSTED_TYPES", "ML_TUNING_TRIALS"):
        monkeypatch.delenv(variable, raising=False)
    module = f"my_models_{uuid.uuid4().hex[:8]}"
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{module}.py").write_text(USER_MODULE)
    monkeypatch.chdir(project)
    monkeypatch.setenv("ML_MODEL_FACTORY", f"{module}:build")
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", f"{module}.Clip")
    source = DataSourceResource(kind="synthetic", n_rows=400, n_numeric=4, class_sep=2.0,
                                seed=6)
    (tmp_path / "d").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "d"))
    try:
        first = _run(instance, tracking, source)
        assert first.success, [e.message for e in first.all_events if e.is_step_failure]
        client, name = tracking.client, tracking.registered_model_name
        assert str(registry.alias_version(client, name, "champion").version) == "1"
        monkeypatch.delenv("ML_MODEL_FACTORY")  # the next run trains a built-in model
        yield {"module": module, "project": project, "source": source,
               "instance": instance}
    finally:
        instance.dispose()
        while str(project) in sys.path:
            sys.path.remove(str(project))
        sys.modules.pop(module, None)


def _assert_kept(result, tracking, *fragments: str) -> str:
    # Not comparable at all needs a fix: a red check, and a failed run (paged) whose
    # reason is the same sentence.
    assert not result.success and not materialized(result, "champion_model")
    evaluation = check_evaluation(result, PROMOTION_CHECK)
    description = evaluation.description
    assert not evaluation.passed and evaluation.severity.value == "ERROR"
    failures = [e.step_failure_data.user_failure_data.description
                for e in result.all_events if e.is_step_failure]
    assert failures == [description]
    assert result.dagster_run.tags["ml/promotion"] == "refused"
    assert description.startswith("not promoted without a comparison: the champion "
                                  "(version 1) cannot be opened in this process: ")
    for fragment in fragments:
        assert fragment in description, description
    assert "promote version 2 by hand: `ml-platform rollback --to 2" in description
    client, name = tracking.client, tracking.registered_model_name
    assert str(registry.alias_version(client, name, "champion").version) == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.reason"] == description
    return description


def test_a_champion_whose_type_is_not_trusted_here_is_kept(user_champion, tracking,
                                                            monkeypatch):
    """The retrain runs without the champion's type in ML_SKOPS_TRUSTED_TYPES: the
    champion cannot be opened, so the small tree is NOT promoted over it."""
    monkeypatch.delenv("ML_SKOPS_TRUSTED_TYPES")
    module = user_champion["module"]
    result = _run(user_champion["instance"], tracking, user_champion["source"], SMALL_TREE)
    _assert_kept(result, tracking, f"its type {module}.Clip is not trusted here",
                 f"Set ML_SKOPS_TRUSTED_TYPES={module}.Clip (after reviewing them) and "
                 "re-run")


def test_a_champion_whose_module_is_not_importable_here_is_kept(user_champion, tracking,
                                                                 monkeypatch, tmp_path):
    """The retrain runs elsewhere, where the user's module cannot be imported (its type
    is still trusted): the champion cannot be rebuilt, so it is kept."""
    module, project = user_champion["module"], user_champion["project"]
    while str(project) in sys.path:
        sys.path.remove(str(project))
    sys.modules.pop(module, None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = _run(user_champion["instance"], tracking, user_champion["source"], SMALL_TREE)
    _assert_kept(result, tracking, f"its code lives in module '{module}', which is not "
                 f"importable here; run from the directory that holds {module}")


def test_a_classifier_within_the_noise_of_the_held_out_rows_is_refused(tracking, instance):
    """Breast cancer, 114 held-out rows: a 40-tree forest against a 3-tree one gains
    about 1.7 points of F1 (more than the 0.005 margin): within the noise of 114 rows."""
    source = DataSourceResource(kind="breast_cancer")
    first = _run(instance, tracking, source, {"n_estimators": 3})
    assert first.success
    second = _run(instance, tracking, source, {"n_estimators": 40})
    assert second.success and not materialized(second, "champion_model")
    evaluation = check_evaluation(second, PROMOTION_CHECK)
    assert "but within the noise of the held-out data" in evaluation.description
    meta = _metadata(second, "champion_comparison")
    assert meta["significant"] is False and meta["gain_scale"] == "absolute"
    assert meta["gain_low"] <= meta["margin"] < meta["gain"] <= meta["gain_high"]
    assert meta["test_rows"] == 114 and meta["test"] == "paired bootstrap"
    assert meta["p_value"] >= 0.05
    tags = tracking.client.get_model_version(tracking.registered_model_name, "2").tags
    assert tags["promotion.decision"] == "refused"
    assert float(tags["promotion.p_value"]) == pytest.approx(meta["p_value"])
    low, high = (float(v) for v in tags["promotion.gain_interval"].strip("[]").split(","))
    assert low == pytest.approx(meta["gain_low"], rel=1e-5)
    assert high == pytest.approx(meta["gain_high"], rel=1e-5)


def _houses(path, n: int = 1_500, seed: int = 0) -> None:
    """A price-like target in dollars: RMSE of a good model about $33k."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"area": rng.normal(150, 40, n).round(1),
                          "rooms": rng.integers(1, 7, n).astype(float),
                          "age": rng.uniform(0, 80, n).round(1),
                          "distance": rng.exponential(10, n).round(2)})
    frame["price"] = (60_000 + 1_200 * frame["area"] + 8_000 * frame["rooms"]
                      - 500 * frame["age"] - 1_500 * frame["distance"]
                      + rng.normal(0, 33_000, n)).round(0)
    frame.to_csv(path, index=False)


def test_a_regressor_within_the_noise_of_the_held_out_rows_is_refused(tracking, instance,
                                                                      tmp_path, monkeypatch):
    """House prices (RMSE about $33k): a Ridge with a little more regularisation moves
    the RMSE by a few dollars; refused, the relative gain and its interval recorded."""
    monkeypatch.delenv("ML_TASK", raising=False)
    _houses(tmp_path / "houses.csv")
    source = DataSourceResource(kind="files", path=str(tmp_path / "houses.csv"),
                                target="price", schema_dir=str(tmp_path / "schemas"))
    ridge = {"estimator": "sklearn.linear_model:Ridge", "model_factory": ""}
    first = _run(instance, tracking, source, {**ridge, "estimator_params": '{"alpha": 1.0}'})
    assert first.success, [e.message for e in first.all_events if e.is_step_failure]
    second = _run(instance, tracking, source, {**ridge, "estimator_params": '{"alpha": 3.0}'},
                  comparison={"margin": 0.0})
    assert second.success and not materialized(second, "champion_model")
    meta = _metadata(second, "champion_comparison")
    assert meta["metric"] == "rmse" and meta["gain_scale"] == "relative"
    assert meta["significant"] is False and meta["gain_low"] < 0 < meta["gain_high"]
    assert abs(meta["gain"]) < 0.005  # a fraction of a percent of ~$33k
    assert "relative rmse improvement" in meta["reason"]
    tags = tracking.client.get_model_version(tracking.registered_model_name, "2").tags
    assert tags["promotion.margin_scale"] == "relative"
    assert tags["promotion.test_rows"] == "300" and tags["promotion.resamples"] == "2000"
    assert 25_000 < float(tags["promotion.champion.rmse"]) < 45_000
