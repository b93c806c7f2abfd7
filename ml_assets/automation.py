"""Automation: jobs (sensors and schedules join here as the loop closes)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

TRAINING_GROUP = "training"

train_model_job = define_asset_job(
    "train_model",
    selection=AssetSelection.groups(TRAINING_GROUP),
    description="Materialize the whole training graph: raw data to gated metrics.",
)

jobs = [train_model_job]
