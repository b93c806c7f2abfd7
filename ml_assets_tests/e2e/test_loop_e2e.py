"""The whole loop with real processes: a champion trained by the graph, the API in a
uvicorn process on 127.0.0.1, the simulator sending drifted traffic, the sensors
evaluated on the real instance, ending with a retrained, registered model version."""

import datetime as dt
import signal

from dagster import AssetKey, DagsterInstance, build_sensor_context

from ml_assets import automation
from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.registry import champion as registry
from ml_assets.core.rollout.traffic import simulate
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.shared import DRIFT_CHECK
from ml_assets_tests.support.api_process import api_process


def test_drifted_traffic_retrains_a_new_version(tmp_path, mlflow_store, unique_name,
                                                monkeypatch):
    monkeypatch.setattr(automation, "SETTINGS", automation.SETTINGS.__class__(
        **{**automation.SETTINGS.__dict__, "retrain_cooldown_seconds": 0}))
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                              experiment_name=unique_name, registered_model_name=unique_name,
                              artifact_location=(tmp_path / "art").as_uri())
    production = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                        landing_dir=str(tmp_path / "landing"),
                                        labels_dir=str(tmp_path / "labels"))
    resources = {"data_source": DataSourceResource(kind="breast_cancer"),
                 "mlflow_tracking": tracking, "production": production}
    training_config = {"ops": {"trained_model": {"config": {"n_estimators": 30,
                                                            "cv_folds": 2}}}}
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        train = defs.resolve_job_def("train_model")
        assert train.execute_in_process(instance=instance, resources=resources,
                                        run_config=training_config).success
        client, name = tracking.client, tracking.registered_model_name
        assert str(registry.alias_version(client, name, "champion").version) == "1"

        env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
               "ML_REGISTERED_MODEL_NAME": name, "ML_PLATFORM_HOME": str(tmp_path / "home"),
               "ML_PREDICTION_LOG_PATH": str(tmp_path / "log.db")}
        with api_process(env, tmp_path) as api:
            frame = load_breast_cancer_frame()
            result = simulate(api.url, frame, "diagnosis", requests=240, shift_after=40,
                              shift=2.0, concurrency=4, labels_dir=tmp_path / "labels",
                              seed=7, max_seconds=120)
            assert result.ok == 240 and result.failed == 0 and result.shifted == 200
            code, _ = api.stop(signal.SIGINT)  # graceful: the prediction log is flushed
        assert code == 0

        # The production-data sensor sees today's log and asks for that partition.
        with build_sensor_context(instance=instance, resources=resources) as context:
            tick = automation.production_data_sensor(context)
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        (request,) = tick.run_requests
        assert request.partition_key == today
        score = defs.resolve_job_def("score_drift")
        scored = score.execute_in_process(instance=instance, resources=resources,
                                          partition_key=today, tags=request.tags,
                                          raise_on_error=False)
        assert len(scored.output_for_node("production_data")) == 240
        (evaluation,) = [e for e in scored.get_asset_check_evaluations()
                         if e.check_name == DRIFT_CHECK]
        assert not evaluation.passed and evaluation.severity.value == "ERROR"
        performance = scored.output_for_node("live_performance")
        assert performance["labelled_rows"] == 240  # late labels joined on request id

        # The drift episode is in the asset's metadata...
        event = instance.get_latest_materialization_event(AssetKey("drift_scores"))
        metadata = event.asset_materialization.metadata
        assert metadata["dataset_drifted"].value is True
        assert "mean radius" in metadata["drifted_features"].value

        # ...and the retrain sensor launches train_model once, tagged with it.
        retrain = automation.retrain_on_drift(build_sensor_context(instance=instance))
        (retrain_request,) = retrain.run_requests
        assert retrain_request.tags["ml/drift_partition"] == today
        assert "mean radius" in retrain_request.tags["ml/drifted_features"]
        again = automation.retrain_on_drift(build_sensor_context(instance=instance,
                                                                 cursor=retrain.cursor))
        assert not again.run_requests
        retrained = train.execute_in_process(instance=instance, resources=resources,
                                             run_config=training_config,
                                             tags=retrain_request.tags, raise_on_error=False)
        assert retrained.output_for_node("registered_model").version == "2"
        version = client.get_model_version(name, "2")
        assert version.tags["promotion.decision"] in ("promoted", "refused")
        run = instance.get_run_by_id(retrained.run_id)
        assert run.tags["ml/trigger"] == "drift"
        # The retrain learned from the labelled production traffic.
        raw = next(e for e in retrained.get_asset_materialization_events()
                   if e.asset_key == AssetKey("raw_data")).materialization.metadata
        assert raw["production_rows"].value == 240 and raw["source_rows"].value == 569
