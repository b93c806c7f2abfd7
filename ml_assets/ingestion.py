"""Ingestion: the raw frame, exactly as the data source gives it."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)
from pydantic import Field

from ml_assets.core.data.datasets import DataSourceError, unknown_column_message
from ml_assets.core.data.production_rows import skipped_sentences
from ml_assets.core.data.provenance import frame_fingerprint
from ml_assets.core.data.validation import PRODUCTION_ROWS_ATTR
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource, labelled_production_rows
from ml_assets.settings import PlatformSettings
from ml_assets.shared import lineage_of

_settings = PlatformSettings.from_env()

# Transient failures (a share not mounted yet, a file still being written) are
# retried; a misconfigured source fails at once (Failure(allow_retries=False)).
INGESTION_RETRY_POLICY = RetryPolicy(
    max_retries=_settings.ingest_retries, delay=_settings.ingest_retry_delay_seconds)


class IngestionConfig(Config):
    include_production_labels: bool = Field(
        default=_settings.train_on_production_labels,
        description="Append production rows whose true labels have arrived (late labels "
        "joined on request_id, labelled landing drops), so a retrain after drift learns "
        "from the new data; only rows this registered model answered with a version "
        "trained on this dataset. Default from ML_TRAIN_ON_PRODUCTION_LABELS (true).")


@asset(group_name="training", retry_policy=INGESTION_RETRY_POLICY, kinds={"pandas"})
def raw_data(context: AssetExecutionContext, config: IngestionConfig,
             data_source: DataSourceResource, production: ProductionDataResource,
             mlflow_tracking: MlflowTracking) -> Output:
    """Raw rows from the configured data source, plus the labelled production rows of
    this registered model on this dataset (rows answered by another registered model,
    or by a version trained on another dataset, never enter), unvalidated. A labels or
    landing file that cannot be used is left out and named in the metadata.

    Default: scikit-learn's breast cancer data (ships with the package). Retries
    on transient errors (ML_INGEST_RETRIES, ML_INGEST_RETRY_DELAY_SECONDS).
    """
    try:
        frame = data_source.load()
    except DataSourceError as exc:
        raise Failure(description=f"data source {data_source.kind!r}: {exc}",
                      allow_retries=False) from None
    target = data_source.target_column
    if target not in frame.columns:
        raise Failure(description=unknown_column_message(target, list(frame.columns),
                                                         data_source.kind),
                      allow_retries=False)
    base_rows, production_rows = len(frame), 0
    excluded: dict[str, int] = {}
    skipped: list[str] = []
    lineage = None
    if config.include_production_labels:
        lineage = lineage_of(mlflow_tracking, data_source)
        try:
            labelled = labelled_production_rows(production, list(frame.columns), target,
                                                lineage)
        except (ValueError, OSError) as exc:
            raise Failure(description=f"labelled production data: {exc}",
                          allow_retries=False) from None
        excluded, skipped = labelled.excluded, skipped_sentences(labelled.skipped)
        for sentence in skipped:
            context.log.warning("file left out of the labelled production rows: %s", sentence)
        for reason, count in excluded.items():
            context.log.info("%d production rows left out: %s", count, reason)
        if len(labelled.rows):
            frame = pd.concat([frame, labelled.rows], ignore_index=True)
            production_rows = len(labelled.rows)
    # The last `production_rows` rows come from production: they carry the features and
    # the target only (the API never sees identifiers or datetimes), so validation
    # checks them against the feature columns of the schema.
    frame.attrs[PRODUCTION_ROWS_ATTR] = production_rows
    context.log.info("loaded %d rows x %d columns from %s (+%d labelled production rows)",
                     base_rows, frame.shape[1], data_source.kind, production_rows)
    return Output(frame, metadata={
        "source": data_source.kind,
        "source_rows": base_rows,
        "production_rows": production_rows,
        "production_lineage": lineage.describe() if lineage is not None else "not used",
        "production_rows_excluded": MetadataValue.json(excluded),
        "skipped_files": MetadataValue.json(skipped),
        "dagster/row_count": len(frame),
        "columns": len(frame.columns),
        "target": target,
        "class_counts": MetadataValue.json(
            {str(k): int(v) for k, v in frame[target].value_counts(dropna=False).items()}),
        "fingerprint": frame_fingerprint(frame),
        "preview": MetadataValue.md(_preview(frame)),
    })


def _preview(frame: pd.DataFrame, rows: int = 5, columns: int = 8) -> str:
    return frame.iloc[:rows, :columns].to_markdown(index=False)
