"""The code location: assembles stage modules; defines nothing itself."""

from dagster import (
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from ml_assets import (
    automation,
    batch,
    drift,
    estimation,
    evaluation,
    features,
    ingestion,
    monitoring,
    registry,
    rollout,
    training,
    validation,
)
from ml_assets.execution import build_executor
from ml_assets.resources.factory import build_resources

STAGES = [ingestion, validation, features, training, evaluation, registry, rollout,
          monitoring, drift, estimation, batch]

defs = Definitions(
    assets=automation.with_freshness(load_assets_from_modules(STAGES)),
    asset_checks=load_asset_checks_from_modules(STAGES),
    jobs=automation.jobs,
    schedules=automation.schedules,
    sensors=automation.sensors,
    resources=build_resources(),
    executor=build_executor(),  # ML_EXECUTOR: in_process (default), multiprocess, celery
)
