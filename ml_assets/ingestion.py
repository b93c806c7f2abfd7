"""Ingestion: the raw frame, exactly as the data source gives it."""

import pandas as pd
from dagster import AssetExecutionContext, Failure, MetadataValue, Output, RetryPolicy, asset

from ml_assets.core.datasets import DataSourceError
from ml_assets.core.provenance import frame_fingerprint
from ml_assets.resources import DataSourceResource
from ml_assets.settings import PlatformSettings

_settings = PlatformSettings.from_env()

# Transient failures (a share not mounted yet, a file still being written) are
# retried; a misconfigured source fails at once (Failure(allow_retries=False)).
INGESTION_RETRY_POLICY = RetryPolicy(
    max_retries=_settings.ingest_retries, delay=_settings.ingest_retry_delay_seconds)


@asset(group_name="training", retry_policy=INGESTION_RETRY_POLICY, kinds={"pandas"})
def raw_data(context: AssetExecutionContext, data_source: DataSourceResource) -> Output:
    """Raw rows from the configured data source, unvalidated.

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
        raise Failure(description=f"target column {target!r} missing; columns are "
                      f"{list(frame.columns)}", allow_retries=False)
    context.log.info("loaded %d rows x %d columns from %s", len(frame), frame.shape[1],
                     data_source.kind)
    return Output(frame, metadata={
        "source": data_source.kind,
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
