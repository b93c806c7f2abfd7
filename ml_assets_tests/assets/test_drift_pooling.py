"""drift_scores on real daily partitions: quiet days pooled with the days before them,
judged by the calibrated verdicts; the check fails only on a dataset verdict and passes,
saying why, when there is not enough data yet.

One synthetic champion (a 10-tree forest) for the module; each test logs its own days
(in its own weeks) and materializes production_data and drift_scores per day, as the
daily job does, with the filesystem IO manager so that earlier days can be read."""

from __future__ import annotations

import datetime as dt
import uuid
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterInstance,
    Output,
    asset,
    evaluate_automation_conditions,
    materialize,
)

from ml_assets.core.data.datasets import SyntheticSpec, make_synthetic
from ml_assets.core.data.schemas import synthetic_schema
from ml_assets.core.rollout.traffic import shift_rows
from ml_assets.definitions import defs
from ml_assets.drift import drift_scores
from ml_assets.monitoring import _profile_for, production_data
from ml_assets.resources import MlflowTracking
from ml_assets.shared import DRIFT_CHECK, daily_partitions
from ml_assets_tests.support.graph import lineage_version
from ml_assets_tests.support.models import train_frame
from ml_assets_tests.support.production_days import log_day, monitoring_resources

SPEC = SyntheticSpec(n_rows=4_000, n_numeric=6, n_categorical=2, seed=7)


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_store):
    """A champion trained on 1,500 synthetic rows, its reference profile materialized
    (as version 1), and fresh rows of the same distribution to send as traffic."""
    root = tmp_path_factory.mktemp("pooling")
    frame = make_synthetic(SPEC)
    trained = train_frame(frame.iloc[:1_500], synthetic_schema(SPEC), SPEC.target,
                          n_estimators=10)
    profile = _profile_for(trained.pipeline, SimpleNamespace(X_train=trained.X_train,
                                                             X_test=trained.X_test))

    name = f"pooling_{uuid.uuid4().hex[:8]}"
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"], experiment_name=name,
                              registered_model_name=name)
    version = lineage_version(tracking)  # production rows of this version are evidence

    @asset(name="reference_profile", group_name="monitoring")
    def stored_profile() -> Output:
        return Output(profile, metadata={"champion_version": version})

    (root / "dagster").mkdir()
    with DagsterInstance.local_temp(str(root / "dagster")) as instance:
        resources = monitoring_resources(root, tracking)
        assert materialize([stored_profile], instance=instance, resources=resources).success
        fresh = frame.iloc[1_500:].drop(columns=SPEC.target).reset_index(drop=True)
        yield SimpleNamespace(instance=instance, resources=resources, root=root,
                              model=trained.pipeline, fresh=fresh, reference=trained.X_train,
                              version=version, name=name,
                              assets=[stored_profile, production_data, drift_scores],
                              rng=np.random.default_rng(20261207))


def _log(world, rows: pd.DataFrame, day: str, model) -> None:
    log_day(world.root / "log.db", rows, day, model, version=world.version,
            model_name=world.name)


def _traffic(world, n: int, shift: float = 0.0) -> pd.DataFrame:
    rows = world.fresh.iloc[world.rng.choice(len(world.fresh), size=n, replace=False)]
    return shift_rows(rows, world.reference, shift) if shift else rows


def _judge(world, day: str):
    """production_data then drift_scores for `day`: (asset value, check evaluation)."""
    result = materialize(world.assets, selection=AssetSelection.assets(
        "production_data", "drift_scores"), partition_key=day, instance=world.instance,
        resources=world.resources)
    assert result.success
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == DRIFT_CHECK]
    return result.output_for_node("drift_scores"), evaluation


def _days(start: str, count: int, step: int = 1) -> list[str]:
    first = dt.date.fromisoformat(start)
    return [(first + dt.timedelta(days=step * i)).isoformat() for i in range(count)]


def test_a_calm_week_of_50_rows_a_day_is_pooled_and_never_fails(world):
    """A week of 50 rows a day drawn from the training distribution. Alone, every day is
    below min_rows (100): the first has nothing before it (not enough data yet), each
    later one is judged with the day before (100 rows). No day fails the check; under
    the old rule (fixed thresholds, judged alone from 30 rows) such days failed.
    About 15 s: seven daily runs (production_data, drift_scores) are the scenario."""
    outcomes = []
    for day in _days("2026-11-02", 7):
        _log(world, _traffic(world, 50), day, world.model)
        value, evaluation = _judge(world, day)
        outcomes.append((day, value, evaluation))
    first_value, first = outcomes[0][1], outcomes[0][2]
    assert first_value["status"] == "insufficient" and first.passed
    assert "not enough data yet" in first.description
    assert first.description.startswith("only 50 rows over 7 day(s)")
    for day, value, evaluation in outcomes[1:]:
        before = (dt.date.fromisoformat(day) - dt.timedelta(days=1)).isoformat()
        assert value["status"] == "pooled" and value["pooled_days"] == 1, value["note"]
        assert value["window_days"] == [before, day]
        assert (value["rows"], value["day_rows"]) == (100, 50)
        assert evaluation.passed or evaluation.severity.value == "WARN", (
            day, evaluation.description)
        assert not value["dataset_drifted"] and not value["prediction_drifted"]
        assert f"pooled with 1 preceding day(s) ({before})" in evaluation.description
        metadata = evaluation.metadata
        assert metadata["status"].value == "pooled" and metadata["rows"].value == 100
        assert metadata["window_days"].value == [before, day]
    # Every per-feature row says what it was judged by.
    table = outcomes[-1][1]["features"]
    assert {row["feature"] for row in table} == set(world.reference.columns)
    for row in table:
        assert row["status"] == "ok"
        for key in ("statistic", "threshold", "p_value", "effect_size", "effect_threshold"):
            assert np.isfinite(row[key]), (row["feature"], key)
        assert row["null"] and row["effect_measure"]
    # The keys the sensors, status lines and CLI read are still there.
    assert {"share_drifted", "drifted_features", "dataset_drifted", "prediction_drifted",
            "n_rows", "features", "predictions"} <= set(outcomes[-1][1])


def test_a_strong_shift_on_pooled_days_fails_the_check(world):
    """Two days of 50 shifted rows (2 std in half the numeric features) with a day
    without traffic between them (never materialized): the second is pooled over three
    calendar days and fails the check on the dataset verdict."""
    first, last = _days("2026-11-16", 2, step=2)
    for day in (first, last):
        _log(world, _traffic(world, 50, shift=2.0), day, world.model)
    value, evaluation = _judge(world, first)
    assert value["status"] == "insufficient" and evaluation.passed
    value, evaluation = _judge(world, last)
    assert value["status"] == "pooled" and value["window_days"] == _days(first, 3)
    assert value["rows"] == 100 and value["day_rows"] == 50
    assert value["dataset_drifted"] and value["dataset_drifted_features"]
    assert not evaluation.passed and evaluation.severity.value == "ERROR"
    assert "dataset drifted" in evaluation.description
    assert set(value["dataset_drifted_features"]) <= set(
        evaluation.metadata["drifted_features"].value)
    assert evaluation.metadata["check"].value == "fail"
    assert evaluation.metadata["check_alpha"].value == 0.02


def test_a_quiet_day_alone_has_no_verdict_and_passes_saying_why(world):
    day = "2026-11-30"
    _log(world, _traffic(world, 12, shift=2.0), day, world.model)
    result = materialize(world.assets, selection=AssetSelection.assets(
        "production_data", "drift_scores"), partition_key=day, instance=world.instance,
        resources=world.resources)
    value = result.output_for_node("drift_scores")
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == DRIFT_CHECK]
    assert value["status"] == "insufficient" and value["check"] == "no verdict"
    assert value["rows"] == 12 and not value["dataset_drifted"]
    assert evaluation.passed
    assert evaluation.description == ("only 12 rows over 7 day(s) (< 100): not enough "
                                      "data yet, no verdict")
    (materialization,) = [e.materialization for e in result.get_asset_materialization_events()
                          if e.asset_key == AssetKey("drift_scores")]
    assert materialization.metadata["note"].value.startswith("not enough data yet")
    assert materialization.metadata["drift_plot"].value == "none (no verdict)"


def test_the_per_feature_table_shows_each_verdicts_evidence(world):
    day = "2026-12-03"
    _log(world, _traffic(world, 150), day, world.model)
    result = materialize(world.assets, selection=AssetSelection.assets(
        "production_data", "drift_scores"), partition_key=day, instance=world.instance,
        resources=world.resources)
    (materialization,) = [e.materialization for e in result.get_asset_materialization_events()
                          if e.asset_key == AssetKey("drift_scores")]
    table = materialization.metadata["per_feature"]  # a table: drawn on the asset page
    header = [column.name for column in table.schema.columns]
    for column in ("statistic", "threshold", "p_value", "effect_size", "effect_threshold",
                   "null", "drifted", "dataset_drifted"):
        assert column in header, header
    assert {r.data["feature"] for r in table.records} == set(world.reference.columns)
    assert all(isinstance(r.data["statistic"], float) for r in table.records)
    assert materialization.metadata["status"].value == "ok"
    assert materialization.metadata["drift_plot"].value.startswith("![drift](data:image/png")
    value = result.output_for_node("drift_scores")
    assert value["pooled_days"] == 0 and value["prediction_rows"] == 150
    assert value["prediction_version"] == world.version


def test_the_day_is_scored_when_it_lands_even_if_earlier_days_never_did(instance):
    """Eager automation, with the window mapping: the days before the latest may be
    missing (no traffic); the day itself and the profile must not be."""
    latest = daily_partitions.get_last_partition_key()
    earlier = (dt.date.fromisoformat(latest) - dt.timedelta(days=2)).isoformat()
    selection = AssetSelection.assets("drift_scores")
    instance.report_runless_asset_event(AssetMaterialization("reference_profile"))
    result = evaluate_automation_conditions(defs=defs, instance=instance,
                                            asset_selection=selection)
    instance.report_runless_asset_event(AssetMaterialization("production_data",
                                                             partition=earlier))
    result = evaluate_automation_conditions(defs=defs, instance=instance,
                                            asset_selection=selection, cursor=result.cursor)
    assert not result.get_requested_partitions(AssetKey("drift_scores"))  # the day is missing
    instance.report_runless_asset_event(AssetMaterialization("production_data",
                                                             partition=latest))
    result = evaluate_automation_conditions(defs=defs, instance=instance,
                                            asset_selection=selection, cursor=result.cursor)
    assert result.get_requested_partitions(AssetKey("drift_scores")) == {latest}


def test_the_former_share_settings_fail_the_run_naming_the_fix(world):
    """warn_share / fail_share belong to the former rule: with the calibrated check they
    are an error that says what to do (they still work with calibration: fixed)."""
    from dagster import DagsterEventType

    day = "2026-12-05"
    _log(world, _traffic(world, 120), day, world.model)
    config = {"ops": {"drift_scores": {"config": {"fail_share": 0.6}}}}
    result = materialize(world.assets, selection=AssetSelection.assets(
        "production_data", "drift_scores"), partition_key=day, instance=world.instance,
        resources=world.resources, run_config=config, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events
                  if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("drift_scores config: fail_share belong(s) to the former")
    assert "calibration='fixed'" in message
    fixed = {"ops": {"drift_scores": {"config": {"calibration": "fixed", "fail_share": 0.6}}}}
    result = materialize(world.assets, selection=AssetSelection.assets("drift_scores"),
                         partition_key=day, instance=world.instance,
                         resources=world.resources, run_config=fixed)
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == DRIFT_CHECK]
    assert evaluation.metadata["fail_share"].value == 0.6
    assert result.output_for_node("drift_scores")["calibration"] == "fixed"
