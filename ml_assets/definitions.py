"""The code location: assembles stage modules; defines nothing itself."""

from dagster import (
    Definitions,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from ml_assets import (
    automation,
    evaluation,
    features,
    ingestion,
    monitoring,
    registry,
    training,
    validation,
)
from ml_assets.resources.factory import build_resources

STAGES = [ingestion, validation, features, training, evaluation, registry, monitoring]

defs = Definitions(
    assets=automation.with_freshness(load_assets_from_modules(STAGES)),
    asset_checks=load_asset_checks_from_modules(STAGES),
    jobs=automation.jobs,
    schedules=automation.schedules,
    sensors=automation.sensors,
    resources=build_resources(),
    # Steps are sequential and each ML step uses every core itself; in-process
    # avoids a Python start-up per step. Celery is the production scale-out.
    executor=in_process_executor,
)
