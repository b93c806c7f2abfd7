"""Champion/challenger: the pure decision, the registry operations, and the assets."""

import json

import pytest
from dagster import DagsterInstance

from ml_assets.core.registry import champion as registry
from ml_assets.core.registry.promotion import decide_promotion
from ml_assets.registry import PROMOTION_CHECK
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets_tests.support.graph import (
    ALL_ASSETS,
    check_evaluation,
    empty_production,
    materialized,
)

M = {"accuracy": 0.9, "f1_weighted": 0.9, "roc_auc": 0.95}


def test_first_model_is_promoted():
    decision = decide_promotion(M, None)
    assert decision.promote and "first model" in decision.reason


def test_better_by_the_margin_is_promoted():
    decision = decide_promotion({**M, "f1_weighted": 0.92}, M, margin=0.01)
    assert decision.promote and decision.deltas["f1_weighted"] == pytest.approx(0.02)


def test_worse_is_refused():
    decision = decide_promotion({**M, "f1_weighted": 0.85}, M, margin=0.0)
    assert not decision.promote and "is worse than" in decision.reason


def test_equal_within_margin_is_refused():
    decision = decide_promotion({**M, "f1_weighted": 0.904}, M, margin=0.005)
    assert not decision.promote and "does not beat by the margin" in decision.reason
    assert decide_promotion({**M, "f1_weighted": 0.905}, M, margin=0.005).promote


def test_a_champion_that_cannot_be_compared_is_kept():
    """Fail closed: nothing is promoted without a comparison but the first model."""
    decision = decide_promotion(M, None, champion_error="the champion (version 3) cannot "
                                "be opened in this process: ...")
    assert not decision.promote
    assert decision.reason.startswith("not promoted without a comparison: the champion "
                                      "(version 3) cannot be opened")
    assert not decide_promotion({**M, "f1_weighted": 0.99}, {"rmse": 1.0}).promote


def test_bad_metric_or_margin_is_named():
    with pytest.raises(ValueError, match="'lift'"):
        decide_promotion(M, M, metric="lift")
    with pytest.raises(ValueError, match="margin"):
        decide_promotion(M, M, margin=-1)


R = {"rmse": 50.0, "mae": 40.0, "r2": 0.4}


def test_a_lower_is_better_metric_promotes_the_lower_value():
    # RMSE, MAE, MAPE: the margin is a share of the champion's error (5% here).
    better = decide_promotion({**R, "rmse": 45.0}, R, metric="rmse", margin=0.05)
    assert better.promote and "by +10.00% (lower is better, relative margin 5.00%" \
        in better.reason
    assert better.deltas["rmse"] == pytest.approx(-5.0)  # challenger minus champion
    worse = decide_promotion({**R, "rmse": 55.0}, R, metric="rmse", margin=0.0)
    assert not worse.promote and "is worse than" in worse.reason
    close = decide_promotion({**R, "rmse": 49.0}, R, metric="rmse", margin=0.05)
    assert not close.promote and "does not beat by the margin" in close.reason
    assert decide_promotion({**R, "r2": 0.5}, R, metric="r2", margin=0.05).promote
    assert not decide_promotion({**R, "mae": 41.0}, R, metric="mae").promote


def test_decision_tags_record_both_sides():
    tags = decide_promotion({**M, "f1_weighted": 0.95}, M).as_tags()
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.challenger.f1_weighted"] == "0.950000"
    assert tags["promotion.champion.f1_weighted"] == "0.900000"
    assert tags["promotion.schema_change"] == "none"


def test_the_schema_check_comes_before_the_champion_cannot_score_path():
    import pandera.pandas as pa

    from ml_assets.core.data.schema_diff import diff_schemas

    def schema(*features: str) -> pa.DataFrameSchema:
        return pa.DataFrameSchema({**{f: pa.Column(float) for f in features},
                                   "y": pa.Column(str)})

    removed = diff_schemas(schema("a", "year"), schema("a"), "y")
    refused = decide_promotion(M, None, champion_error="needs year", schema_diff=removed)
    assert not refused.promote and "cannot score" not in refused.reason
    assert refused.reason.startswith("challenger changes the API's inputs: feature 'year' "
                                     "removed (clients that send it get 422); set "
                                     "allow_breaking_change: true")
    allowed = decide_promotion(M, None, champion_error="needs year", schema_diff=removed,
                               allow_breaking_change=True, champion_inputs_changed=True)
    assert allowed.promote and "cannot score" in allowed.reason and "'year'" in allowed.reason
    # An allowed breaking change is no licence to skip the comparison for another cause.
    assert not decide_promotion(M, None, champion_error="cannot be opened",
                                schema_diff=removed, allow_breaking_change=True).promote
    same = diff_schemas(schema("a"), schema("a"), "y")
    assert not decide_promotion(M, None, champion_error="x", schema_diff=same).promote


@pytest.fixture
def tracking(mlflow_store, unique_name, tmp_path):
    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name=unique_name, registered_model_name=unique_name,
                          artifact_location=(tmp_path / "art").as_uri())


def _run(instance, tracking, training, margin=0.005):
    from dagster import materialize

    return materialize(
        ALL_ASSETS + _registry_assets(), instance=instance, raise_on_error=False,
        resources={"data_source": DataSourceResource(kind="breast_cancer"),
                   "mlflow_tracking": tracking,
                   "production": empty_production(instance.root_directory)},
        run_config={"ops": {"trained_model": {"config": {"cv_folds": 2, **training}},
                            "champion_comparison": {"config": {"margin": margin}}}})


def _registry_assets():
    from ml_assets.definitions import defs

    return [defs.get_assets_def(k) for k in ("registered_model", "champion_comparison",
                                             "champion_model")]


# One depth-1 tree on a seeded subset of features: passes the 0.8 gates (accuracy about
# 0.88 on the 114 held-out rows) and is significantly weaker than the forest (0.97); the
# default seed's stump (0.93) is not, on 114 rows (paired bootstrap p about 0.06).
STUMP = {"n_estimators": 1, "max_depth": 1, "seed": 12}
FOREST = {"n_estimators": 40}


def test_promotion_paths_and_rollback_through_the_assets(tracking, tmp_path):
    client, name = tracking.client, tracking.registered_model_name
    (tmp_path / "d").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "d")) as instance:
        first = _run(instance, tracking, STUMP)
        assert first.success and materialized(first, "champion_model")
        assert str(registry.alias_version(client, name, "champion").version) == "1"
        assert str(registry.alias_version(client, name, "challenger").version) == "1"
        assert client.get_model_version(name, "1").tags["promotion.decision"] == "promoted"

        better = _run(instance, tracking, FOREST)
        assert better.success
        assert str(registry.alias_version(client, name, "champion").version) == "2"
        tags = client.get_model_version(name, "2").tags
        assert tags["promotion.previous_champion"] == "1"
        assert float(tags["promotion.champion.f1_weighted"]) < float(
            tags["promotion.challenger.f1_weighted"])
        assert tags["promotion.dagster_run_id"] == better.run_id
        assert tags["promotion.schema_change"] == "none"  # same declared schema
        assert tags["promotion.by"] and tags["promotion.at"]

        worse = _run(instance, tracking, STUMP)
        # A refusal is a decision: the run succeeds, the check warns, the run is tagged.
        assert worse.success and not materialized(worse, "champion_model")
        evaluation = check_evaluation(worse, PROMOTION_CHECK)
        assert "is worse than" in evaluation.description
        assert evaluation.severity.value == "WARN"
        assert instance.get_run_by_id(worse.run_id).tags["ml/promotion"] == "refused"
        assert instance.get_run_by_id(better.run_id).tags["ml/promotion"] == "immediate"
        assert evaluation.metadata["champion_version"].value == "2"
        assert str(registry.alias_version(client, name, "champion").version) == "2"
        assert str(registry.alias_version(client, name, "challenger").version) == "3"
        assert client.get_model_version(name, "3").tags["promotion.decision"] == "refused"

        equal = _run(instance, tracking, FOREST)  # same data, same seed: same metrics
        evaluation = check_evaluation(equal, PROMOTION_CHECK)
        assert not evaluation.passed and "does not beat by the margin" in evaluation.description
        assert str(registry.alias_version(client, name, "champion").version) == "2"

    assert json.loads(client.get_registered_model(name).tags[registry.HISTORY_TAG]) == ["1",
                                                                                        "2"]
    change = registry.rollback(client, name)
    assert (change.version, change.previous) == ("1", "2")
    assert str(registry.alias_version(client, name, "champion").version) == "1"
    assert client.get_model_version(name, "1").tags["rollback.reason"] == "manual rollback"
    with pytest.raises(registry.RegistryError, match="no earlier champion"):
        registry.rollback(client, name)


def test_registration_is_idempotent_for_the_same_logged_model(tracking):

    from ml_assets.core.artifacts.saving import log_pipeline
    from ml_assets.core.data.datasets import load_breast_cancer_frame
    from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
    from ml_assets.core.data.schemas import breast_cancer_schema
    from ml_assets.core.modeling.pipeline import ModelParams, build_estimator, fit_final_pipeline
    from ml_assets.features import feature_kinds

    frame = load_breast_cancer_frame()
    split = split_frame(frame, "diagnosis")
    pre = build_preprocessor(split.X_train, feature_kinds(split.X_train, "")).fit(
        split.X_train, split.y_train)
    pipeline = fit_final_pipeline(pre, build_estimator(ModelParams(n_estimators=5)),
                                  split.X_train, split.y_train)
    with tracking.active_run("idempotency-test") as run:
        info = log_pipeline(pipeline, split.X_train, breast_cancer_schema(
            list(split.X_train.columns)), "diagnosis")
    client, name = tracking.client, tracking.registered_model_name
    first = registry.register_version(client, name, info.model_uri, run.info.run_id,
                                      info.model_id, {})
    again = registry.register_version(client, name, info.model_uri, run.info.run_id,
                                      info.model_id, {})
    assert str(first.version) == str(again.version) == "1"
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


def test_promote_refuses_when_the_champion_moved(tracking):
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback(tracking.client, tracking.registered_model_name)


def test_rollback_to_a_named_version(tracking):
    """`rollback --to N`: the current champion is refused; an earlier champion is restored
    and the history returns to it (no duplicate); a version that never was champion is
    said to be one for the first time."""
    from ml_assets.core.registry.champion import HISTORY_TAG, promote
    from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer

    client, name = tracking.client, tracking.registered_model_name
    trained = train_breast_cancer(n_estimators=5)
    experiment = experiment_id(name, tracking.artifact_location)
    for _ in range(4):
        register(trained, name, experiment, alias=None)
    promote(client, name, "1", None, {"promotion.reason": "t"})
    promote(client, name, "2", "1", {"promotion.reason": "t"})
    promote(client, name, "3", "2", {"promotion.reason": "t"})
    with pytest.raises(registry.RegistryError, match="version 3 is already the champion"):
        registry.rollback(client, name, "3")
    change = registry.rollback(client, name, "1")
    assert (change.version, change.previous, change.action) == ("1", "3", "rolled back")
    assert json.loads(client.get_registered_model(name).tags[HISTORY_TAG]) == ["1"]
    change = registry.rollback(client, name, "4")
    assert (change.version, change.action) == ("4", "set by hand")
    assert json.loads(client.get_registered_model(name).tags[HISTORY_TAG]) == ["1", "4"]
    assert registry.rollback(client, name).version == "1"
