"""Test helpers: resources and runs of the real asset graph on small data."""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance, materialize

from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource
from ml_assets.resources.production import ProductionDataResource

ALL_ASSETS = [defs.get_assets_def(key) for key in
              ["raw_data", "validated_data", "data_split", "feature_preprocessor",
               "trained_model", "model_metrics"]]

FAST_TRAINING = {"n_estimators": 25, "cv_folds": 3}


def run_config(training: dict | None = None, gate: dict | None = None,
               split: dict | None = None, features: dict | None = None) -> dict:
    ops = {"trained_model": {"config": {**FAST_TRAINING, **(training or {})}}}
    if gate:
        ops["model_metrics"] = {"config": gate}
    if split:
        ops["data_split"] = {"config": split}
    if features:
        ops["feature_preprocessor"] = {"config": features}
    return {"ops": ops}


def empty_production(root) -> ProductionDataResource:
    """A production-data resource over empty directories (no traffic yet)."""
    return ProductionDataResource(prediction_log_path=f"{root}/none.db",
                                  landing_dir=f"{root}/landing", labels_dir=f"{root}/labels")


def run_graph(data_source: DataSourceResource, mlflow_tracking, instance: DagsterInstance,
              selection=None, **config):
    config = run_config(**config)
    if selection is not None:
        config["ops"] = {k: v for k, v in config["ops"].items() if k in selection}
    return materialize(
        ALL_ASSETS, selection=selection, instance=instance, raise_on_error=False,
        resources={"data_source": data_source, "mlflow_tracking": mlflow_tracking,
                   "production": empty_production(instance.root_directory)},
        run_config=config)


def materialized(result, name: str) -> bool:
    return any(e.asset_key == AssetKey(name) for e in result.get_asset_materialization_events())


def check_evaluation(result, check_name: str):
    for event in result.get_asset_check_evaluations():
        if event.check_name == check_name:
            return event
    raise AssertionError(f"no evaluation of {check_name}")


def lineage_version(tracking, dataset: str = "breast_cancer") -> str:
    """A new version of `tracking`'s registered model recorded as trained on `dataset`
    (the `dataset` tag registration writes; no model behind it): production rows logged
    under this name and version belong to that dataset's lineage. Returns the version."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from ml_assets.core.registry.lineage import DATASET_TAG

    client, name = tracking.client, tracking.registered_model_name
    try:
        client.create_registered_model(name)
    except MlflowException:  # exists already
        pass
    version = client.create_model_version(name, source=tempfile.gettempdir(),
                                          tags={DATASET_TAG: dataset})
    return str(version.version)
