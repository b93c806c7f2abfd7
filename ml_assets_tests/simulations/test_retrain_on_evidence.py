"""The loop through real sensors: a real champion (breast cancer, 5 of 30 features kept
by SelectKBest), days of production traffic answered by it, each day materialized by
the `score_drift` job (production data, drift scores, estimated performance, live
performance), and `retrain_on_drift` ticked with `build_sensor_context` on the same
instance after every day, its cursor carried as the daemon carries it."""

import dataclasses
import datetime as dt
import uuid

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, build_sensor_context

from ml_assets import automation
from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.estimation.store import ARTIFACT, load_estimation
from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.shared import ESTIMATE_CHECK
from ml_assets_tests.support.loop_days import (
    calm_rows,
    conflicting_rows,
    ignored_shift,
    train_loop_champion,
)


@pytest.fixture
def loop(instance, tmp_path, mlflow_store, unique_name, monkeypatch):
    monkeypatch.setattr(automation, "SETTINGS", dataclasses.replace(
        automation.SETTINGS, retrain_cooldown_seconds=0, retrain_on_any_drift=False))
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name,
                              artifact_location=(tmp_path / "art").as_uri())
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    resources = {"data_source": DataSourceResource(kind="breast_cancer"),
                 "mlflow_tracking": tracking, "production": production}
    trained, model, kept = train_loop_champion(instance, resources)
    return {"instance": instance, "resources": resources, "model": model, "kept": kept,
            "split": trained.output_for_node("data_split"), "tracking": tracking,
            "log": tmp_path / "log.db", "cursor": None}


def _answer(loop, rows: pd.DataFrame, day: dt.date) -> list[str]:
    """Log rows as the API logs them: the champion's answers, by the registered model;
    their request ids."""
    pipeline, name = loop["model"].pipeline, loop["tracking"].registered_model_name
    proba = pipeline.predict_proba(rows)
    classes = [str(c) for c in pipeline.classes_]
    stamp = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.timezone.utc)
    ids = [uuid.uuid4().hex for _ in range(len(rows))]
    log = SQLitePredictionLog(loop["log"])
    log.append_many([PredictionRecord(stamp, request_id, 0, name, "1",
                                      list(rows.columns), values.tolist(),
                                      classes[int(np.argmax(p))],
                                      dict(zip(classes, map(float, p), strict=True)))
                     for request_id, values, p in zip(ids, rows.to_numpy(), proba,
                                                      strict=True)])
    log.close()
    return ids


def _day(loop, rows: pd.DataFrame, day: dt.date):
    """One day answered, scored by the daily job, and the retrain sensor ticked."""
    _answer(loop, rows, day)
    result = defs.resolve_job_def("score_drift").execute_in_process(
        instance=loop["instance"], resources=loop["resources"], partition_key=day.isoformat())
    assert result.success
    tick = automation.retrain_on_drift(build_sensor_context(instance=loop["instance"],
                                                            cursor=loop["cursor"]))
    loop["cursor"] = tick.cursor
    estimate = next(e for e in result.get_asset_check_evaluations()
                    if e.check_name == ESTIMATE_CHECK)
    return tick, estimate, result.output_for_node("estimated_performance")


SIZES = (50, 120, 200)


def _conflicting(loop, rng, size) -> pd.DataFrame:
    return conflicting_rows(loop["model"].pipeline, loop["kept"], rng, size)


def _calm(loop, rng, size):
    return calm_rows(loop["split"].X_test, rng, size)


def test_quiet_days_retrain_nothing_a_harmful_shift_once_and_an_ignored_one_warns(loop):
    rng = np.random.default_rng(0)
    start = dt.date(2026, 11, 2)
    features = load_breast_cancer_frame().drop(columns="diagnosis")

    # The calibrator was stored beside the reference profile, as JSON.
    artifact = loop["tracking"].client.download_artifacts(loop["model"].mlflow_run_id,
                                                          ARTIFACT)
    calibrator = load_estimation(open(artifact, "rb").read())
    assert calibrator.classes == ("benign", "malignant")

    # 14 days of 50-200 rows from the held-out distribution: no retrain, and no failed
    # estimate check (whatever the drift check says about so few rows). Three day sizes
    # in turn: drift's calibrated nulls are cached per size, which keeps the test short.
    for offset in range(14):
        tick, estimate, value = _day(loop, _calm(loop, rng, SIZES[offset % 3]),
                                     start + dt.timedelta(days=offset))
        assert not tick.run_requests, tick.skip_reason
        assert estimate.passed, estimate.description
        assert value["verdict"] in ("within", "possibly_below")

    # A harmful shift: benign cases arrive with two of the model's features carrying
    # malignant values (conflicting evidence, where the model is unsure). Two days:
    # exactly one retrain, on the first.
    requests = []
    for offset in (14, 15):
        rows = _conflicting(loop, rng, 120)
        tick, estimate, value = _day(loop, rows, start + dt.timedelta(days=offset))
        assert not estimate.passed and estimate.severity.value == "ERROR", value
        requests += tick.run_requests
    (request,) = requests
    assert request.tags["ml/evidence"] == "estimate"
    assert request.tags["ml/evidence_days"] == (start + dt.timedelta(days=14)).isoformat()
    assert request.tags["ml/drift_check"] == "drift_within_limits"
    assert request.tags["ml/estimate_check"] == ESTIMATE_CHECK
    assert request.tags["ml/estimate"].startswith("estimated below the gate: ")

    # Back to normal for a day (ends the episode), then a shift confined to the 25
    # features the model does not use: drift fails, the estimate does not move, a warning
    # and no retrain.
    _day(loop, _calm(loop, rng, 120), start + dt.timedelta(days=16))
    assert len([c for c in features.columns if c not in loop["kept"]]) == 25
    rows = ignored_shift(_calm(loop, rng, 120), loop["kept"])
    tick, estimate, value = _day(loop, rows, start + dt.timedelta(days=17))
    drift = loop["instance"].get_latest_materialization_event(AssetKey("drift_scores"))
    assert drift is not None
    assert estimate.passed and value["verdict"] == "within"
    assert not tick.run_requests
    assert "did not move the estimated performance" in tick.skip_reason.skip_message


def test_live_performance_shows_the_estimate_against_the_realised_value(loop, tmp_path):
    """Labels arriving for a day that was estimated: live_performance reports, per
    metric, the estimate, its band, the realised value and the error; with the labels
    of the same rows flipped (concept drift) the realised accuracy leaves the band and
    the metadata names it."""
    rng = np.random.default_rng(11)
    split = loop["split"]
    picked = rng.integers(0, len(split.X_test), 200)
    rows = split.X_test.iloc[picked].reset_index(drop=True)
    truth = split.y_test.iloc[picked].astype(str).to_numpy()
    day = dt.date(2026, 11, 3)
    ids = _answer(loop, rows, day)
    job = defs.resolve_job_def("score_drift")

    def scored_with(labels) -> dict:
        (tmp_path / "labels").mkdir(exist_ok=True)
        pd.DataFrame({"request_id": ids, "label": labels}).to_csv(
            tmp_path / "labels" / "day.csv", index=False)
        result = job.execute_in_process(instance=loop["instance"],
                                        resources=loop["resources"],
                                        partition_key=day.isoformat())
        assert result.success
        return result.output_for_node("live_performance")

    first = job.execute_in_process(instance=loop["instance"], resources=loop["resources"],
                                   partition_key=day.isoformat())
    assert first.success and "estimate_vs_realised" not in first.output_for_node(
        "live_performance")  # no labels yet: nothing to compare
    honest = {c["metric"]: c for c in scored_with(truth)["estimate_vs_realised"]}
    assert honest["accuracy"]["labelled_rows"] == 200
    assert honest["accuracy"]["within_band"], honest["accuracy"]
    assert honest["accuracy"]["low"] <= honest["accuracy"]["estimate"] <= honest[
        "accuracy"]["high"]
    classes = sorted(set(truth))
    flipped = np.where(truth == classes[0], classes[1], classes[0])
    drifted = {c["metric"]: c for c in scored_with(flipped)["estimate_vs_realised"]}
    assert not drifted["accuracy"]["within_band"]
    assert drifted["accuracy"]["error"] < -0.5
    event = loop["instance"].get_latest_materialization_event(AssetKey("live_performance"))
    metadata = event.asset_materialization.metadata
    assert "accuracy" in metadata["estimate_outside_band"].value
    assert "concept drift" in metadata["estimate_vs_realised"].value


def test_live_performance_compares_with_the_estimate_of_its_own_run(loop, tmp_path):
    """A day scored, then more of its traffic and its labels arrive: the next score_drift
    run compares the realised values with the estimate it just made on the whole day
    (estimated_performance runs first), never with the earlier run's estimate of part of
    it."""
    rng = np.random.default_rng(12)
    day = dt.date(2026, 11, 4)
    job = defs.resolve_job_def("score_drift")

    def run():
        result = job.execute_in_process(instance=loop["instance"],
                                        resources=loop["resources"],
                                        partition_key=day.isoformat())
        assert result.success
        return result

    ids = _answer(loop, _calm(loop, rng, 60), day)
    early = run().output_for_node("estimated_performance")
    late_rows = _calm(loop, rng, 140)
    ids += _answer(loop, late_rows, day)
    labels = loop["model"].pipeline.predict(late_rows)  # any labels: the bands are compared
    (tmp_path / "labels").mkdir(exist_ok=True)
    pd.DataFrame({"request_id": ids[60:], "label": labels}).to_csv(
        tmp_path / "labels" / "late.csv", index=False)
    result = run()
    estimate = result.output_for_node("estimated_performance")
    compared = {c["metric"]: c for c in result.output_for_node("live_performance")[
        "estimate_vs_realised"]}
    this_run = estimate["per_version"][estimate["model_version"]]["estimate"]["metrics"]
    before = early["per_version"][early["model_version"]]["estimate"]["metrics"]
    assert this_run["accuracy"] != before["accuracy"]  # 200 rows now, 60 before
    assert compared["accuracy"]["estimate"] == this_run["accuracy"]["estimate"]
    assert (compared["accuracy"]["low"], compared["accuracy"]["high"]) == (
        this_run["accuracy"]["low"], this_run["accuracy"]["high"])
