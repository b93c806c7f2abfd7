"""Labels close the loop by themselves: `live_performance_on_labels` (build_sensor_context
on a real instance, then the run it requests) and `rollout_on_labels`' requests."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pandas as pd
from dagster import AssetKey, AssetSelection, build_sensor_context, materialize

from ml_assets import automation
from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource
from ml_assets.resources.production import ProductionDataResource
from ml_assets_tests.support.graph import lineage_version

DAY = "2026-11-20"


def _log(path: Path, frame: pd.DataFrame, when: dt.datetime, model: str = "m",
         version: str = "1") -> list[tuple[str, str]]:
    """Log `frame`'s rows as the API would (predicting "B" always, answered by `model`
    version `version`); returns the (request_id, true label) of each."""
    features = frame.drop(columns="diagnosis")
    log = SQLitePredictionLog(path)
    ids = [uuid.uuid4().hex for _ in range(len(frame))]
    log.append_many([PredictionRecord(when, rid, 0, model, version, list(features.columns),
                                      row.tolist(), "B", {"B": 0.8, "M": 0.2})
                     for rid, row in zip(ids, features.to_numpy(), strict=True)]).result(30)
    log.close()
    return list(zip(ids, frame["diagnosis"].astype(str), strict=True))


def _write_labels(folder: Path, pairs: list[tuple[str, str]], name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(pairs, columns=["request_id", "label"]).to_csv(folder / name, index=False)


def _tick(instance, production, cursor=None):
    with build_sensor_context(instance=instance, resources={"production": production},
                              cursor=cursor) as context:
        return automation.live_performance_on_labels(context)


def _run(request, instance, production, mlflow_tracking):
    keys = [key.to_user_string() for key in request.asset_selection]
    return materialize([defs.get_assets_def(k) for k in ("production_data", "live_performance")],
                       selection=keys, partition_key=request.partition_key, instance=instance,
                       resources={"production": production, "mlflow_tracking": mlflow_tracking,
                                  "data_source": DataSourceResource(kind="breast_cancer")})


def test_labels_materialize_live_performance_for_the_days_they_label(
        instance, tmp_path, mlflow_tracking):
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    frame = load_breast_cancer_frame().sample(120, random_state=7)
    model = mlflow_tracking.registered_model_name
    version = lineage_version(mlflow_tracking)
    first = _log(tmp_path / "log.db", frame.head(80),
                 dt.datetime(2026, 11, 20, 9, tzinfo=dt.timezone.utc), model, version)
    other_day = _log(tmp_path / "log.db", frame.tail(40),
                     dt.datetime(2026, 11, 21, 9, tzinfo=dt.timezone.utc), model, version)
    assert not _tick(instance, production).run_requests  # no labels yet

    _write_labels(tmp_path / "labels", first[:50], "labels-1.csv")
    result = _tick(instance, production)
    (request,) = result.run_requests  # only the day those labels belong to
    assert request.partition_key == DAY
    assert [k.to_user_string() for k in request.asset_selection] == [
        "production_data", "live_performance"]
    run = _run(request, instance, production, mlflow_tracking)
    assert run.success
    performance = run.output_for_node("live_performance")
    truth = dict(first)
    expected = sum(truth[rid] == "B" for rid, _ in first[:50]) / 50
    assert performance["labelled_rows"] == 50
    assert abs(performance["accuracy"] - expected) < 1e-9
    assert not _tick(instance, production, result.cursor).run_requests  # nothing new

    # More labels for the same day: its production_data is rebuilt again first (it may
    # predate the predictions the labels are for), then live_performance.
    _write_labels(tmp_path / "labels", first[50:], "labels-2.csv")
    again = _tick(instance, production, result.cursor)
    (request,) = again.run_requests
    assert request.partition_key == DAY
    assert [k.to_user_string() for k in request.asset_selection] == [
        "production_data", "live_performance"]
    assert request.run_key != result.run_requests[0].run_key
    run = _run(request, instance, production, mlflow_tracking)
    assert run.output_for_node("live_performance")["labelled_rows"] == 80
    assert instance.get_latest_materialization_event(AssetKey("live_performance"))

    # Labels of another day's predictions, and a file that labels nothing known.
    _write_labels(tmp_path / "labels", other_day, "labels-3.csv")
    _write_labels(tmp_path / "labels", [("unknown-id", "B")], "labels-4.csv")
    later = _tick(instance, production, again.cursor)
    assert [r.partition_key for r in later.run_requests] == ["2026-11-21"]
    (tmp_path / "labels" / "labels-5.csv").write_text("not,a labels file\n\x00\x01")
    broken = _tick(instance, production, later.cursor)
    assert not broken.run_requests and "match no prediction" in broken.skip_reason.skip_message
    # The file is named with the reason it was left out.
    assert "labels-5.csv (has no request_id and label column" in \
        broken.skip_reason.skip_message


def test_the_label_sensors_are_on_by_default():
    repository = defs.get_repository_def()
    for name in ("live_performance_on_labels", "rollout_on_labels"):
        sensor = repository.get_sensor_def(name)
        assert sensor.default_status.value == "RUNNING"


def test_batch_scoring_and_new_production_data_cascade_by_automation_condition(instance):
    """A day's batch scoring re-materializes that day's production_data, which in turn
    re-materializes its live_performance: Dagster's automation conditions, evaluated as
    the daemon's monitoring_automation sensor would."""
    from dagster import AssetMaterialization, evaluate_automation_conditions

    when = dt.datetime(2026, 11, 22, 12, tzinfo=dt.timezone.utc)
    # live_performance compares the day's own estimate: estimated_performance (which
    # needs a reference profile, i.e. a trained champion) runs in the same cascade.
    instance.report_runless_asset_event(AssetMaterialization("reference_profile"))
    selection = AssetSelection.assets("production_data", "estimated_performance",
                                      "live_performance")
    first = evaluate_automation_conditions(defs, instance, asset_selection=selection,
                                           evaluation_time=when)
    assert first.total_requested == 0
    instance.report_runless_asset_event(AssetMaterialization("batch_predictions",
                                                             partition="2026-11-21"))
    scored = evaluate_automation_conditions(defs, instance, asset_selection=selection,
                                            evaluation_time=when, cursor=first.cursor)
    # Both in one run: live_performance after its day's data.
    assert scored.get_requested_partitions(AssetKey("production_data")) == {"2026-11-21"}
    assert scored.get_requested_partitions(AssetKey("estimated_performance")) == {
        "2026-11-21"}
    assert scored.get_requested_partitions(AssetKey("live_performance")) == {"2026-11-21"}
    # New rows from the API's log (production_data_sensor's run): live_performance follows.
    instance.report_runless_asset_event(AssetMaterialization("production_data",
                                                             partition="2026-11-20"))
    after = evaluate_automation_conditions(defs, instance, asset_selection=selection,
                                           evaluation_time=when, cursor=scored.cursor)
    assert after.get_requested_partitions(AssetKey("live_performance")) == {"2026-11-20"}
    assert after.get_num_requested(AssetKey("production_data")) == 0
    # Handled: nothing more until something changes again.
    for day in ("2026-11-20", "2026-11-21"):
        for key in ("estimated_performance", "live_performance"):
            instance.report_runless_asset_event(AssetMaterialization(key, partition=day))
    calm = evaluate_automation_conditions(defs, instance, asset_selection=selection,
                                          evaluation_time=when, cursor=after.cursor)
    assert calm.total_requested == 0


def test_batch_input_sensor_requests_each_changed_day_once(instance, tmp_path):
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"),
                                        batch_input_dir=str(tmp_path / "in"),
                                        batch_output_dir=str(tmp_path / "out"))

    def tick(cursor=None):
        with build_sensor_context(instance=instance, resources={"production": production},
                                  cursor=cursor) as context:
            return automation.batch_input_sensor(context)

    assert not tick().run_requests
    (tmp_path / "in" / DAY).mkdir(parents=True)
    load_breast_cancer_frame().head(5).to_csv(tmp_path / "in" / DAY / "a.csv", index=False)
    first = tick()
    assert [r.partition_key for r in first.run_requests] == [DAY]
    assert not tick(first.cursor).run_requests
    load_breast_cancer_frame().head(7).to_parquet(tmp_path / "in" / DAY / "b.parquet")
    again = tick(first.cursor)
    assert [r.partition_key for r in again.run_requests] == [DAY]
