"""Validation: the raw frame checked against its Pandera schema (a blocking gate)."""

from collections.abc import Iterator
from dataclasses import replace

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
from ml_assets.core.data.schemas import (
    ValidationReport,
    column_note,
    excluded_columns,
    validate_frame,
)
from ml_assets.ingestion import PRODUCTION_ROWS_ATTR
from ml_assets.resources import DataSourceResource

SCHEMA_CHECK = "schema_conforms"


def not_features(schema, target: str) -> dict[str, str]:
    """Column -> the sentence saying why it is validated but not given to the model."""
    return {name: column_note(schema.columns[name]) or f"role {role}: not a feature"
            for name, role in excluded_columns(schema, target).items()}


def table_schema(schema) -> TableSchema:
    return TableSchema(columns=[
        TableColumn(name=str(name), type=str(column.dtype),
                    description="; ".join(str(c) for c in column.checks) or None,
                    constraints=None)
        for name, column in schema.columns.items()])


def _validate(raw: pd.DataFrame, schema, target: str, schema_file
              ) -> tuple[pd.DataFrame, ValidationReport]:
    """The source rows against the whole schema; labelled production rows (the last
    `production_rows`, see raw_data) against it without the non-feature columns, which
    the API never receives. Those columns stay empty in the production rows."""
    produced = int(raw.attrs.get(PRODUCTION_ROWS_ATTR, 0) or 0)
    excluded = [c for c in not_features(schema, target) if c in schema.columns]
    if not produced or not excluded or produced > len(raw):
        return validate_frame(raw, schema, schema_file=schema_file)
    source, production = raw.iloc[:-produced], raw.iloc[-produced:]
    if not len(source):
        return validate_frame(production.drop(columns=excluded, errors="ignore"),
                              schema.remove_columns(excluded), schema_file=schema_file)
    source_frame, source_report = validate_frame(source, schema, schema_file=schema_file)
    production_frame, production_report = validate_frame(
        production.drop(columns=excluded, errors="ignore"), schema.remove_columns(excluded),
        schema_file=schema_file)
    if not (source_report.passed and production_report.passed):
        failed = source_report if not source_report.passed else production_report
        where = "" if failed is source_report else "labelled production rows: "
        return raw, replace(failed, n_rows=len(raw), message=where + failed.message)
    combined = pd.concat([source_frame, production_frame], ignore_index=True)
    return combined, replace(source_report, n_rows=len(raw),
                             message=f"{len(source)} source rows and {produced} labelled "
                             f"production rows passed {len(schema.columns)} columns "
                             f"({len(excluded)} not checked on production rows: not "
                             "features)")


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
    frame, report = _validate(raw_data, schema, data_source.target_column,
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
