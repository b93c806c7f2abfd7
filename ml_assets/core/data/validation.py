"""The training frame validated as a whole: the data source's rows against the full
schema, and the labelled production rows appended after them (see the `raw_data` asset)
against the schema without its non-feature columns, which the API never receives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from ml_assets.core.data.schemas import ValidationReport, not_features, validate_frame

# frame.attrs key: how many of the frame's last rows are labelled production rows.
PRODUCTION_ROWS_ATTR = "production_rows"


def validate_training_frame(raw: pd.DataFrame, schema: pa.DataFrameSchema, target: str,
                            schema_file: str | Path | None
                            ) -> tuple[pd.DataFrame, ValidationReport]:
    """The source rows against the whole schema; labelled production rows (the last
    `production_rows`, see raw_data) against it without the non-feature columns, which
    the API never receives. Those columns stay empty in the production rows."""
    produced = int(raw.attrs.get(PRODUCTION_ROWS_ATTR, 0) or 0)
    frame, report = _validate(raw, schema, target, schema_file, produced)
    # The split and the held-out record (core/data/held_out.py) read it downstream.
    frame.attrs[PRODUCTION_ROWS_ATTR] = produced
    return frame, report


def _validate(raw: pd.DataFrame, schema: pa.DataFrameSchema, target: str,
              schema_file: str | Path | None, produced: int
              ) -> tuple[pd.DataFrame, ValidationReport]:
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
