"""Automation: jobs (sensors and schedules join here as the loop closes)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

train_model_job = define_asset_job(
    "train_model",
    selection=AssetSelection.groups("training", "registry"),
    description="The whole training graph: raw data, validation, features, training, "
    "the metrics gate, registration and champion/challenger promotion.",
)

jobs = [train_model_job]
