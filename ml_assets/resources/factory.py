"""Build the resources of a profile from settings (environment variables)."""

from __future__ import annotations

import os
from typing import Any, cast

from dagster import EnvVar

from ml_assets.resources.data_source import DataSourceResource
from ml_assets.resources.mlflow_tracking import MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.settings import PlatformSettings


def build_resources(settings: PlatformSettings | None = None) -> dict:
    settings = settings or PlatformSettings.from_env()
    log_url: str = settings.prediction_log_url
    if log_url and os.environ.get("ML_PREDICTION_LOG_URL", "").strip() == log_url:
        # Resolved when the resource is used: Dagster shows the variable's name, not the
        # URL and its password, in the UI.
        log_url = EnvVar("ML_PREDICTION_LOG_URL")
    return {
        "data_source": DataSourceResource(
            # ML_DATA_SOURCE is validated by the resource (pydantic names bad values).
            kind=cast(Any, settings.data_source), path=settings.data_path, target=settings.target,
            schema_dir=str(settings.home / "schemas"), csv_delimiter=settings.csv_delimiter,
            csv_decimal=settings.csv_decimal, csv_encoding=settings.csv_encoding),
        "mlflow_tracking": MlflowTracking(
            tracking_uri=settings.mlflow_tracking_uri,
            experiment_name=settings.experiment_name,
            artifact_location=settings.mlflow_artifact_location,
            registered_model_name=settings.registered_model_name),
        "production": ProductionDataResource(
            prediction_log_path=str(settings.prediction_log_path),
            prediction_log_url=log_url,
            landing_dir=str(settings.landing_dir), labels_dir=str(settings.labels_dir),
            batch_input_dir=str(settings.batch_input_dir),
            batch_output_dir=str(settings.batch_output_dir),
            batch_rows_in_memory=settings.batch_rows_in_memory,
            log_rows_in_memory=settings.log_rows_in_memory),
    }
