"""Monitoring: sensors (build_sensor_context on a real instance), the monitoring assets
on a real champion, freshness and schedules."""

import dataclasses
import datetime as dt
import json
import uuid
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    build_sensor_context,
)

from ml_assets import automation
from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog
from ml_assets.core.rollout.traffic import shift_rows
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.shared import DRIFT_CHECK
from ml_assets_tests.support.graph import lineage_version


def _drift_evaluation(instance, passed: bool, partition: str, severity="ERROR",
                      features=("mean radius",)):
    instance.report_runless_asset_event(AssetCheckEvaluation(
        asset_key=AssetKey("drift_scores"), check_name=DRIFT_CHECK, passed=passed,
        severity=AssetCheckSeverity[severity],
        metadata={"partition": MetadataValue.text(partition),
                  "drifted_features": MetadataValue.json(list(features))}))


def _tick(instance, cursor=None):
    return automation.retrain_on_drift(build_sensor_context(instance=instance, cursor=cursor))


def test_retrain_on_drift_fires_once_per_episode_with_tags(instance, monkeypatch):
    """ML_RETRAIN_ON_ANY_DRIFT: the former rule, a failed drift check retrains on its own
    (the evidence rule is tested in test_retrain_on_evidence.py)."""
    monkeypatch.setattr(automation, "SETTINGS", dataclasses.replace(
        automation.SETTINGS, retrain_cooldown_seconds=0, retrain_on_any_drift=True))
    first = _tick(instance)
    assert not first.run_requests and "no new drift or performance evidence" in \
        first.skip_reason.skip_message
    _drift_evaluation(instance, True, "2026-11-18")
    _drift_evaluation(instance, False, "2026-11-19", features=("mean radius", "mean area"))
    result = _tick(instance, first.cursor)
    (request,) = result.run_requests
    assert request.tags["ml/trigger"] == "drift"
    assert request.tags["ml/drift_partition"] == "2026-11-19"
    assert request.tags["ml/drifted_features"] == "mean radius,mean area"
    # The same episode goes on: no second retrain.
    _drift_evaluation(instance, False, "2026-11-20")
    again = _tick(instance, result.cursor)
    assert not again.run_requests and "same episode" in again.skip_reason.skip_message
    # A warning is not a failure, and a passing day ends the episode...
    _drift_evaluation(instance, False, "2026-11-21", severity="WARN")
    _drift_evaluation(instance, True, "2026-11-22")
    calm = _tick(instance, again.cursor)
    assert not calm.run_requests
    # ...so the next failure is a new episode and retrains again.
    _drift_evaluation(instance, False, "2026-11-23")
    new_episode = _tick(instance, calm.cursor)
    assert [r.tags["ml/drift_partition"] for r in new_episode.run_requests] == ["2026-11-23"]
    assert new_episode.run_requests[0].run_key != request.run_key


def test_a_day_re_decided_later_never_retrains_twice_nor_ends_the_episode(instance,
                                                                          monkeypatch):
    """Late labels rebuild an old day's evidence (a new check record for it): the day is
    decided again, but it was retrained for already, and, being older than the days
    decided since, it does not end the episode those days are in."""
    monkeypatch.setattr(automation, "SETTINGS", dataclasses.replace(
        automation.SETTINGS, retrain_cooldown_seconds=0, retrain_on_any_drift=True))
    first = _tick(instance)
    _drift_evaluation(instance, False, "2026-11-19")
    launched = _tick(instance, first.cursor)
    assert [r.tags["ml/drift_partition"] for r in launched.run_requests] == ["2026-11-19"]
    _drift_evaluation(instance, False, "2026-11-20")
    same = _tick(instance, launched.cursor)
    assert not same.run_requests
    _drift_evaluation(instance, False, "2026-11-19")  # re-evaluated: still failing
    again = _tick(instance, same.cursor)
    assert not again.run_requests
    assert "2026-11-19: already retrained for this day" in again.skip_reason.skip_message
    _drift_evaluation(instance, True, "2026-11-19")  # re-evaluated: passing now
    passed_late = _tick(instance, again.cursor)
    _drift_evaluation(instance, False, "2026-11-21")
    still = _tick(instance, passed_late.cursor)
    assert not still.run_requests, "an old day passing late ended the episode"
    assert "same episode" in still.skip_reason.skip_message


def test_the_former_cursor_takes_its_history_as_decided(instance, monkeypatch):
    monkeypatch.setattr(automation, "SETTINGS", dataclasses.replace(
        automation.SETTINGS, retrain_cooldown_seconds=0, retrain_on_any_drift=True))
    _drift_evaluation(instance, False, "2026-11-19")
    upgraded = _tick(instance, json.dumps({"last_id": 5, "in_episode": False}))
    assert not upgraded.run_requests
    assert "cursor upgraded: 1 earlier day(s)" in upgraded.skip_reason.skip_message
    _drift_evaluation(instance, False, "2026-11-20")
    assert [r.tags["ml/drift_partition"] for r in _tick(
        instance, upgraded.cursor).run_requests] == ["2026-11-20"]


def test_the_drifted_features_tag_is_never_cut_mid_name():
    names = [f"feature_number_{i:03d}" for i in range(40)]
    tag = automation.names_within(names)
    assert len(tag) <= 200 and tag.endswith("more")
    shown = tag.split(",")[:-1]
    assert shown == names[:len(shown)]
    assert tag.split(",")[-1] == f"+{len(names) - len(shown)} more"
    assert automation.names_within(["a", "b"]) == "a,b"


def test_retrain_on_drift_respects_the_cooldown(instance, monkeypatch):
    monkeypatch.setattr(automation, "SETTINGS", dataclasses.replace(
        automation.SETTINGS, retrain_cooldown_seconds=3600, retrain_on_any_drift=True))
    _drift_evaluation(instance, False, "2026-11-19")
    launched = _tick(instance)
    assert len(launched.run_requests) == 1
    _drift_evaluation(instance, True, "2026-11-20")
    _drift_evaluation(instance, False, "2026-11-21")  # a new episode, but within the hour
    cooled = _tick(instance, launched.cursor)
    assert not cooled.run_requests and "cooldown" in cooled.skip_reason.skip_message
    state = json.loads(cooled.cursor)
    state["last_launch"] -= 7200  # as if two hours had passed
    _drift_evaluation(instance, True, "2026-11-22")
    _drift_evaluation(instance, False, "2026-11-23")
    assert len(_tick(instance, json.dumps(state)).run_requests) == 1


def _log_rows(path: Path, frame: pd.DataFrame, day: dt.datetime, version="1",
              model=None, name="m") -> None:
    """Append rows to the prediction log as the API would (real predictions if a model
    is given), answered by registered model `name`, version `version`."""
    if model is not None:
        classes = [str(c) for c in model.classes_]
        probabilities = model.predict_proba(frame)
    else:
        classes, probabilities = ["benign", "malignant"], [[0.9, 0.1]] * len(frame)
    log = SQLitePredictionLog(path)
    log.append_many([
        PredictionRecord(day, uuid.uuid4().hex, 0, name, version, list(frame.columns),
                         row.tolist(), classes[int(max(range(len(p)), key=p.__getitem__))],
                         dict(zip(classes, map(float, p), strict=False)))
        for row, p in zip(frame.to_numpy(), probabilities, strict=False)])
    log.close()


def test_production_data_sensor_requests_new_days_once(instance, tmp_path):
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    with build_sensor_context(instance=instance, resources={"production": production}) as ctx:
        assert not automation.production_data_sensor(ctx).run_requests
    rows = load_breast_cancer_frame().drop(columns="diagnosis").head(5)
    _log_rows(tmp_path / "log.db", rows, dt.datetime(2026, 11, 20, 10, tzinfo=dt.timezone.utc))
    (tmp_path / "landing" / "2026-11-21").mkdir(parents=True)
    load_breast_cancer_frame().head(5).to_csv(tmp_path / "landing" / "2026-11-21" / "a.csv",
                                              index=False)
    with build_sensor_context(instance=instance, resources={"production": production}) as ctx:
        result = automation.production_data_sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == ["2026-11-20", "2026-11-21"]
    with build_sensor_context(instance=instance, resources={"production": production},
                              cursor=result.cursor) as ctx:
        assert not automation.production_data_sensor(ctx).run_requests
    _log_rows(tmp_path / "log.db", rows, dt.datetime(2026, 11, 20, 11, tzinfo=dt.timezone.utc))
    with build_sensor_context(instance=instance, resources={"production": production},
                              cursor=result.cursor) as ctx:
        grown = automation.production_data_sensor(ctx)
    assert [r.partition_key for r in grown.run_requests] == ["2026-11-20"]


def test_freshness_and_schedules_are_defined():
    graph = defs.resolve_asset_graph()
    champion = graph.get(AssetKey("champion_model")).freshness_policy
    assert champion.fail_window.to_timedelta() == dt.timedelta(days=7)
    assert graph.get(AssetKey("drift_scores")).freshness_policy is not None
    assert graph.get(AssetKey("drift_scores")).automation_condition is not None
    repository = defs.get_repository_def()
    schedules = {s.name: s for s in repository.schedule_defs}
    assert schedules["daily_drift_scoring"].cron_schedule == "30 0 * * *"
    assert schedules["weekly_retrain"].cron_schedule == "0 3 * * 1"
    for definition in list(repository.sensor_defs) + list(repository.schedule_defs):
        assert definition.default_status.value == "RUNNING", definition.name


def test_monitoring_assets_on_a_real_champion(instance, tmp_path, mlflow_store, unique_name):
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name,
                              artifact_location=(tmp_path / "art").as_uri())
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    resources = {"data_source": DataSourceResource(kind="breast_cancer"),
                 "mlflow_tracking": tracking, "production": production}
    train = defs.resolve_job_def("train_model")
    trained = train.execute_in_process(
        instance=instance, resources=resources,
        run_config={"ops": {"trained_model": {"config": {"n_estimators": 30, "cv_folds": 2}}}})
    assert trained.success
    profile = trained.output_for_node("reference_profile")
    assert len(profile.features) == 30 and profile.predictions
    artifacts = tracking.client.list_artifacts(
        trained.output_for_node("trained_model").mlflow_run_id, "reference_profile")
    assert [a.path for a in artifacts] == ["reference_profile/profile.npz"]
    # The resampled nulls (the forest's probabilities repeat: multiples of 1/30) were
    # drawn at training time into the instance's cache; scoring below draws none.
    event = instance.get_latest_materialization_event(AssetKey("reference_profile"))
    drawn = event.asset_materialization.metadata["drift_nulls_drawn"].value
    nulls_dir = Path(instance.storage_directory()) / "drift_nulls"
    warmed = sorted(nulls_dir.glob("*.npy"))
    assert drawn > 0 and len(warmed) >= drawn

    frame = load_breast_cancer_frame()
    features = frame.drop(columns="diagnosis")
    calm_day = dt.datetime(2026, 11, 20, 9, tzinfo=dt.timezone.utc)
    drift_day = dt.datetime(2026, 11, 21, 9, tzinfo=dt.timezone.utc)
    champion = trained.output_for_node("trained_model").pipeline
    _log_rows(tmp_path / "log.db", features.sample(200, random_state=1), calm_day,
              model=champion, name=unique_name)
    _log_rows(tmp_path / "log.db", shift_rows(features.sample(200, random_state=2), features,
                                              2.0), drift_day, model=champion, name=unique_name)
    (tmp_path / "labels").mkdir()
    score = defs.resolve_job_def("score_drift")
    outcomes = {}
    for day in ("2026-11-20", "2026-11-21"):
        result = score.execute_in_process(instance=instance, resources=resources,
                                          partition_key=day)
        (evaluation,) = [e for e in result.get_asset_check_evaluations()
                         if e.check_name == DRIFT_CHECK]
        outcomes[day] = evaluation
        assert sorted(nulls_dir.glob("*.npy")) == warmed  # read, never drawn
        drift = result.output_for_node("drift_scores")
        assert drift["n_rows"] == 200
    assert outcomes["2026-11-20"].passed, outcomes["2026-11-20"].description
    failing = outcomes["2026-11-21"]
    assert not failing.passed and failing.severity.value == "ERROR"
    assert "mean radius" in failing.metadata["drifted_features"].value

    # Labelled drops in the landing area are scored by the champion, and their labels
    # give live performance for that day.
    (tmp_path / "landing" / "2026-11-22").mkdir(parents=True)
    frame.sample(120, random_state=3).to_csv(tmp_path / "landing" / "2026-11-22" / "d.csv",
                                             index=False)
    result = score.execute_in_process(instance=instance, resources=resources,
                                      partition_key="2026-11-22", raise_on_error=False)
    data = result.output_for_node("production_data")
    assert len(data) == 120 and {"prediction", "label"} <= set(data.columns)
    performance = result.output_for_node("live_performance")
    assert performance["labelled_rows"] == 0  # labels come with request ids or landing rows



def test_run_failure_alerts_page_failures_but_not_refusals(instance, tmp_path, mlflow_store,
                                                           unique_name, monkeypatch):
    import http.server
    import threading

    from dagster import DagsterEventType, DagsterRunStatus, build_run_status_sensor_context

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(automation, "SETTINGS", dataclasses.replace(
        automation.SETTINGS, home=tmp_path / "home",
        alert_webhook_url=f"http://127.0.0.1:{server.server_port}/hook"))
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name)
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "none.db"),
                                        landing_dir=str(tmp_path / "l"),
                                        labels_dir=str(tmp_path / "b"))
    train = defs.resolve_job_def("train_model")
    config = {"ops": {"trained_model": {"config": {"n_estimators": 10, "cv_folds": 2}}}}
    good = {"data_source": DataSourceResource(kind="breast_cancer"),
            "mlflow_tracking": tracking, "production": production}
    assert train.execute_in_process(instance=instance, resources=good, run_config=config).success
    refused = train.execute_in_process(instance=instance, resources=good, run_config=config,
                                       raise_on_error=False)  # same metrics: refused
    broken = train.execute_in_process(
        instance=instance, raise_on_error=False, run_config=config,
        resources={**good, "data_source": DataSourceResource(kind="files",
                                                             path=str(tmp_path / "x.csv"),
                                                             target="y")})
    # A refusal is a decision: the run succeeds (tagged), so the failure sensor never
    # sees it; only the broken run is recorded and paged.
    assert refused.success and not broken.success
    assert instance.get_run_by_id(refused.run_id).tags["ml/promotion"] == "refused"
    try:
        for result in (broken,):
            run = instance.get_run_by_id(result.run_id)
            assert run.status == DagsterRunStatus.FAILURE
            (failure,) = [e.dagster_event for e in instance.all_logs(
                run.run_id, of_type=DagsterEventType.RUN_FAILURE)]
            automation.alert_on_run_failure(build_run_status_sensor_context(
                sensor_name="alert_on_run_failure", dagster_event=failure,
                dagster_instance=instance, dagster_run=run).for_run_failure())
    finally:
        server.shutdown()
    alerts = [json.loads(line) for line in
              (tmp_path / "home" / "alerts.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["run_id"]) for a in alerts] == [("failure", broken.run_id)]
    assert [a["run_id"] for a in received] == [broken.run_id]


def test_monitoring_a_regression_champion(tmp_path, mlflow_store, unique_name):
    """A regressor's reference profile holds a numeric 'prediction'; a day of its logged
    predictions is scored as numbers, and labels (text in the files) give RMSE/MAE/R²."""
    from types import SimpleNamespace

    from dagster import build_asset_context

    from ml_assets.core.drift.scoring import score_drift
    from ml_assets.core.modeling.tasks import regression_metrics
    from ml_assets.monitoring import _profile_for, live_performance, production_data
    from ml_assets_tests.support.models import DIABETES_TARGET, diabetes_frame, train_regression

    trained = train_regression()
    profile = _profile_for(trained.pipeline, SimpleNamespace(X_train=trained.X_train,
                                                             X_test=trained.X_test))
    assert profile.predictions["prediction"].kind == "numeric"
    assert set(profile.predictions) == {"prediction"}

    frame = diabetes_frame()
    calm = frame.sample(200, replace=True, random_state=1)
    # Heavier patients: the predicted progression moves up.
    shifted = frame.sample(200, replace=True, random_state=2)
    shifted = shifted.assign(bmi=shifted["bmi"] + 2 * frame["bmi"].std(),
                             s5=shifted["s5"] + 2 * frame["s5"].std())
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name)
    version = lineage_version(tracking, "diabetes")  # the files' dataset: diabetes.csv
    log = SQLitePredictionLog(tmp_path / "log.db")
    days = {"2026-11-20": calm, "2026-11-21": shifted}
    ids = {}
    for day, rows in days.items():
        features = rows.drop(columns=DIABETES_TARGET)
        values = trained.pipeline.predict(features)
        stamp = dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=dt.timezone.utc)
        ids[day] = [uuid.uuid4().hex for _ in range(len(rows))]
        log.append_many([PredictionRecord(stamp, rid, 0, unique_name, version,
                                          list(features.columns), row.tolist(),
                                          repr(float(v)), {})
                         for rid, row, v in zip(ids[day], features.to_numpy(), values,
                                                strict=True)]).result(30)
    log.close()
    (tmp_path / "labels").mkdir()
    pd.DataFrame({"request_id": ids["2026-11-20"],
                  "label": [str(v) for v in calm[DIABETES_TARGET]]}
                 ).to_csv(tmp_path / "labels" / "late.csv", index=False)
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    reports, data = {}, {}
    source = DataSourceResource(kind="files", path="diabetes.csv", target=DIABETES_TARGET)
    for day in days:
        output, check = production_data(build_asset_context(partition_key=day),
                                        production=production, data_source=source,
                                        mlflow_tracking=tracking)
        assert check.passed
        data[day] = output.value
        assert data[day]["prediction"].dtype == float
        assert not [c for c in data[day].columns if c.startswith("proba_")]
        reports[day] = score_drift(profile, data[day])
    for report in reports.values():
        row = report.predictions.set_index("feature").loc["prediction"]
        assert row["kind"] == "numeric" and row["status"] == "ok" and row["n_cur"] == 200
    assert not reports["2026-11-20"].prediction_drifted
    assert reports["2026-11-21"].prediction_drifted

    performance = next(live_performance(build_asset_context(partition_key="2026-11-20"),
                                        production_data=data["2026-11-20"],
                                        production=production)).value
    expected = regression_metrics(calm[DIABETES_TARGET].to_numpy(),
                                  trained.pipeline.predict(calm.drop(
                                      columns=DIABETES_TARGET)))
    assert performance["labelled_rows"] == 200 and performance["task"] == "regression"
    for name in ("rmse", "mae", "r2", "mape"):
        assert performance[name] == pytest.approx(expected[name], rel=1e-9)
