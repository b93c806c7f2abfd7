"""Typed MLflow resource: one MLflow run per Dagster run, shared by every step.

It follows dagster-mlflow's convention (the MLflow run is found by its
`dagster_run_id` tag, so steps in other processes join the same run) but is a
typed ConfigurableResource that talks through an explicit MlflowClient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlflow
from dagster import ConfigurableResource, InitResourceContext
from mlflow.tracking import MlflowClient
from pydantic import Field, PrivateAttr

DAGSTER_RUN_TAG = "dagster_run_id"


class MlflowTracking(ConfigurableResource):
    """Where runs, models and the registry live (embedded SQLite by default)."""

    tracking_uri: str = Field(description="MLflow tracking URI: sqlite:///... or http://...")
    experiment_name: str = Field(default="ml_platform", description="MLflow experiment.")
    artifact_location: str = Field(default="", description="Artifact root for a new "
                                   "experiment (file URI or object-store URI).")
    registry_uri: str = Field(default="", description="Registry URI if not the tracking URI.")
    registered_model_name: str = Field(default="ml_platform_model", description="Registered "
                                       "model that holds every gated version.")

    _client: MlflowClient | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        mlflow.set_tracking_uri(self.tracking_uri)
        if self.registry_uri:
            mlflow.set_registry_uri(self.registry_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            mlflow.set_tracking_uri(self.tracking_uri)
            self._client = MlflowClient(self.tracking_uri, self.registry_uri or None)
        return self._client

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment_name, artifact_location=self.artifact_location or None)
        except mlflow.exceptions.MlflowException:  # created concurrently by another step
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:  # not a concurrent creation after all
                raise
            return experiment.experiment_id

    def run_id_for(self, dagster_run_id: str, run_name: str | None = None,
                   tags: dict[str, str] | None = None) -> str:
        """The MLflow run of this Dagster run, created on first use."""
        experiment_id = self.experiment_id()
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'",
            max_results=1)
        if found:
            return found[0].info.run_id
        run = self.client.create_run(
            experiment_id, run_name=run_name,
            tags={DAGSTER_RUN_TAG: dagster_run_id, **(tags or {})})
        return run.info.run_id

    @contextlib.contextmanager
    def active_run(self, dagster_run_id: str, run_name: str | None = None,
                   tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
        """Make this Dagster run's MLflow run the active one for `mlflow.*` calls;
        marks it FAILED if the block raises, FINISHED otherwise."""
        run_id = self.run_id_for(dagster_run_id, run_name, tags)
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=run_id) as run:
            yield run
