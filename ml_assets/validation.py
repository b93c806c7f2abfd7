"""Validation: the raw frame checked against its Pandera schema (a blocking gate)."""

from collections.abc import Iterator

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
)

from ml_assets.core.data.schema_inference import DATETIME_POLICY
from ml_assets.core.data.schemas import not_features
from ml_assets.core.data.validation import validate_training_frame
from ml_assets.resources import DataSourceResource

SCHEMA_CHECK = "schema_conforms"


def table_schema(schema) -> TableSchema:
    return TableSchema(columns=[
        TableColumn(name=str(name), type=str(column.dtype),
                    description="; ".join(str(c) for c in column.checks) or None,
                    constraints=None)
        for name, column in schema.columns.items()])


@asset(
    group_name="training",
    kinds={"pandas", "pandera"},
    check_specs=[AssetCheckSpec(
        SCHEMA_CHECK, asset="validated_data", blocking=True,
        description="Every column, dtype and value check of the Pandera schema passes; "
        "downstream assets do not run otherwise.")],
)
def validated_data(context: AssetExecutionContext, raw_data: pd.DataFrame,
                   data_source: DataSourceResource) -> Iterator:
    """The raw frame validated against its Pandera schema, dtypes coerced.

    The schema is declared for packaged data; for a user's files it is inferred on
    first run, written as a versioned YAML file (schemas/<dataset>/v<N>.yaml) and
    used from then on. A failure lists columns, checks and sample failure cases.
    """
    try:
        schema, origin = data_source.schema_for(raw_data)
    except ValueError as exc:  # inference refused the data, or a schema file is broken
        raise Failure(description=str(exc), allow_retries=False) from None
    frame, report = validate_training_frame(raw_data, schema, data_source.target_column,
                                            data_source.schema_file(origin))
    if not report.passed:
        context.log.error(report.message)
    excluded = not_features(schema, data_source.target_column)
    for name, note in excluded.items():
        context.log.info("column %r is not a feature: %s", name, note)
    yield Output(frame, metadata={
        "schema": origin,
        "dagster/column_schema": table_schema(schema),
        "dagster/row_count": len(frame),
        "valid": report.passed,
        "excluded_columns": MetadataValue.json(excluded),
        "datetime_policy": DATETIME_POLICY,
    })
    yield AssetCheckResult(
        check_name=SCHEMA_CHECK,
        passed=report.passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.message,
        metadata={
            "schema": origin,
            "rows": report.n_rows,
            "failures": report.n_failures,
            "failing_columns": MetadataValue.json(report.failing_columns),
            "failing_checks": MetadataValue.json(report.failing_checks),
            "failure_sample": MetadataValue.md(
                report.failure_sample.to_markdown(index=False)
                if len(report.failure_sample) else "none"),
        },
    )
