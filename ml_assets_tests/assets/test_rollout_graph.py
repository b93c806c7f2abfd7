"""A rollout through the asset graph: `champion_model` starts a canary instead of
promoting, `rollout_evaluation` decides on logged, labelled traffic and moves the
registry, and `rollout_on_labels` asks for the evaluation and, after a promotion,
for the new champion's reference profile."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from dagster import AssetKey, build_sensor_context, load_assets_from_modules, materialize

from ml_assets import automation
from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog
from ml_assets.core.registry import champion as registry
from ml_assets.core.rollout.plan import CANARY_ALIAS, read_rollout
from ml_assets.definitions import STAGES, defs
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource


def _train(instance, resources, trees: int, depth: int | None, rollout: dict | None = None):
    config = {"ops": {"trained_model": {"config": {"n_estimators": trees, "max_depth": depth,
                                                   "cv_folds": 2, "n_jobs": 1}}}}
    if rollout:
        config["ops"]["champion_comparison"] = {"config": rollout}
    return defs.resolve_job_def("train_model").execute_in_process(
        instance=instance, resources=resources, run_config=config, raise_on_error=False)


def _log_traffic(path, plan, n: int, accuracy: dict[str, float], seed: int):
    """Log `n` answers per variant as the API would (the variant's accuracy as given);
    returns the (request_id, label) pairs."""
    rng = np.random.default_rng(seed)
    frame = load_breast_cancer_frame()
    features = [c for c in frame.columns if c != "diagnosis"]
    log = SQLitePredictionLog(path)
    records, labels = [], []
    now = dt.datetime.now(dt.timezone.utc)
    for variant, version in (("champion", plan.champion_version), ("canary", plan.version)):
        rows = frame.sample(n, replace=True, random_state=int(rng.integers(1 << 30)))
        for i, (_, row) in enumerate(rows.iterrows()):
            truth = str(row["diagnosis"])
            other = "benign" if truth == "malignant" else "malignant"
            answer = truth if rng.random() < accuracy[variant] else other
            request_id = f"{variant}-{seed}-{i}"
            records.append(PredictionRecord(
                now, request_id, 0, "m", version, features, row[features].tolist(), answer,
                {answer: 0.8, other: 0.2}, variant=variant, latency_ms=1.5))
            labels.append((request_id, truth))
    log.append_many(records).result(60)
    log.close()
    return labels


def test_a_canary_rollout_through_the_graph(instance, tmp_path, mlflow_store, unique_name):
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name,
                              artifact_location=(tmp_path / "art").as_uri())
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    resources = {"data_source": DataSourceResource(kind="breast_cancer"),
                 "mlflow_tracking": tracking, "production": production}
    client = tracking.client
    first = _train(instance, resources, trees=1, depth=1,
                   rollout={"rollout": "canary"})  # a first model is promoted at once
    assert first.success
    assert str(registry.alias_version(client, unique_name, registry.CHAMPION).version) == "1"
    assert not read_rollout(client, unique_name).active

    second = _train(instance, resources, trees=30, depth=None, rollout={
        "rollout": "canary", "canary_share": 0.3, "canary_steps": [0.5],
        "canary_step_minutes": 30})
    assert second.success, [e.message for e in second.all_events if e.is_failure]
    assert str(registry.alias_version(client, unique_name, registry.CHAMPION).version) == "1"
    rollout = read_rollout(client, unique_name)
    assert rollout.active and rollout.plan.version == "2" and rollout.alias_version == "2"
    assert rollout.plan.steps == ((0.0, 0.3), (1800.0, 0.5))
    started = instance.get_latest_materialization_event(AssetKey("champion_model"))
    metadata = started.asset_materialization.metadata
    assert metadata["rollout_mode"].value == "canary"
    from ml_assets.cli import champion_change  # what `ml-platform train` reports from

    assert champion_change(second)["action"] == "rollout_canary"
    assert champion_change(first)["action"] == "promoted"
    # The challenger's reference profile is stored now, ready for its promotion.
    run_id = second.output_for_node("trained_model").mlflow_run_id
    assert [a.path for a in client.list_artifacts(run_id, "reference_profile")]

    # Nothing logged yet: the sensor asks for an evaluation, which keeps collecting.
    with build_sensor_context(instance=instance, resources=resources) as context:
        tick = automation.rollout_on_labels(context)
    (request,) = tick.run_requests
    assert [k.to_user_string() for k in request.asset_selection] == ["rollout_evaluation"]
    evaluation = defs.get_assets_def("rollout_evaluation")
    waiting = materialize([evaluation], instance=instance, resources=resources)
    assert waiting.output_for_node("rollout_evaluation")["action"] == "continue"

    labels = _log_traffic(tmp_path / "log.db", rollout.plan, 300,
                          {"champion": 0.75, "canary": 0.97}, seed=1)
    (tmp_path / "labels").mkdir()
    pd.DataFrame(labels, columns=["request_id", "label"]).to_csv(
        tmp_path / "labels" / "labels-1.csv", index=False)
    with build_sensor_context(instance=instance, resources=resources,
                              cursor=tick.cursor) as context:
        labelled_tick = automation.rollout_on_labels(context)
    assert len(labelled_tick.run_requests) == 1
    decided = materialize([evaluation], instance=instance, resources=resources)
    verdict = decided.output_for_node("rollout_evaluation")
    assert verdict["action"] == "promote" and verdict["outcome"] == "promoted", verdict
    assert str(registry.alias_version(client, unique_name, registry.CHAMPION).version) == "2"
    after = read_rollout(client, unique_name)
    assert not after.active and after.alias_version is None
    assert after.tags["rollout.outcome"] == "promoted"
    assert CANARY_ALIAS not in (client.get_registered_model(unique_name).aliases or {})
    tags = client.get_model_version(unique_name, "2").tags
    assert tags["rollout.decision"] == "promoted" and "test" in tags["rollout.evidence"]
    assert registry.history(client, unique_name)[-1] == "2"

    # The sensor then rebuilds the reference profile for the new champion, once.
    with build_sensor_context(instance=instance, resources=resources,
                              cursor=labelled_tick.cursor) as context:
        refresh = automation.rollout_on_labels(context)
    (profile_request,) = refresh.run_requests
    assert [k.to_user_string() for k in profile_request.asset_selection] == [
        "reference_profile"]
    with build_sensor_context(instance=instance, resources=resources,
                              cursor=refresh.cursor) as context:  # the same run, once
        again = automation.rollout_on_labels(context).run_requests
    assert [r.run_key for r in again] == [profile_request.run_key]
    profile_run = materialize(load_assets_from_modules(STAGES),
                              selection=["reference_profile"], instance=instance,
                              resources=resources)
    assert profile_run.success
    materialization = instance.get_latest_materialization_event(AssetKey("reference_profile"))
    assert materialization.asset_materialization.metadata["champion_version"].value == "2"
    with build_sensor_context(instance=instance, resources=resources,
                              cursor=refresh.cursor) as context:  # current: nothing to do
        assert not automation.rollout_on_labels(context).run_requests


def test_a_rollout_whose_champion_moved_or_that_changed_meanwhile_is_not_acted_on(
        instance, tmp_path, mlflow_store, unique_name):
    from dagster import build_asset_context

    from ml_assets.core.rollout.decision import RolloutCriteria, evaluate_rollout
    from ml_assets.core.rollout.plan import start_rollout
    from ml_assets.rollout import _act
    from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer

    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name)
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    resources = {"mlflow_tracking": tracking, "production": production}
    client = tracking.client
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    model = train_breast_cancer(n_estimators=3, max_depth=2)
    for alias in ("champion", None, None):
        register(model, unique_name, experiment, alias=alias, compile=False)
    old = start_rollout(client, unique_name, "canary", "2", "1", ((0.0, 0.5),))
    stale = read_rollout(client, unique_name)
    # A verdict computed for the old rollout, carried out after a newer one started.
    start_rollout(client, unique_name, "canary", "3", "1", ((0.0, 0.5),))
    rows = pd.DataFrame(columns=["request_id", "label"])
    verdict = evaluate_rollout(pd.DataFrame(), rows, old, RolloutCriteria(max_seconds=1),
                               regression=False,
                               now=old.started_at + dt.timedelta(hours=1))
    assert verdict.action == "rollback"
    assert _act(build_asset_context(), client, unique_name, stale, verdict) == "superseded"
    current = read_rollout(client, unique_name)
    assert current.active and current.plan.version == "3"  # untouched
    # Someone moves the champion under the running rollout: it ends, nothing else moves.
    client.set_registered_model_alias(unique_name, "champion", "3")
    run = materialize([defs.get_assets_def("rollout_evaluation")], instance=instance,
                      resources=resources)
    output = run.output_for_node("rollout_evaluation")
    assert output["outcome"] == "promoted" and "champion is version 3" in output["reason"]
    assert not read_rollout(client, unique_name).active
