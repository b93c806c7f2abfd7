"""Typed Dagster resources: where data comes from and where runs are tracked."""

from ml_assets.resources.data_source import DataSourceResource
from ml_assets.resources.mlflow_tracking import MlflowTracking

__all__ = ["DataSourceResource", "MlflowTracking"]
