"""Validation: the raw frame checked against its Pandera schema (a blocking gate)."""

from collections.abc import Iterator

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
)

from ml_assets.core.schemas import validate_frame
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
    schema, origin = data_source.schema_for(raw_data)
    frame, report = validate_frame(raw_data, schema)
    yield Output(frame, metadata={
        "schema": origin,
        "dagster/column_schema": table_schema(schema),
        "dagster/row_count": len(frame),
        "valid": report.passed,
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
