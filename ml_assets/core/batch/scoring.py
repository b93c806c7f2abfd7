"""Batch scoring's rules without Dagster: which files of a day are input, a file read as
training reads files and validated against the champion's own feature schema as the
API validates requests, and the checks of what was written. Shards and their scoring:
ml_assets/core/batch/shards.py and shard_scoring.py; the `batch_predictions` asset
(ml_assets/batch.py) adds the day's partition, the champion's lookup and the checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ml_assets.core.data.datasets import CsvOptions, DataSourceError
from ml_assets.core.data.datasets import _read as read_tabular_file
from ml_assets.core.data.schemas import feature_columns, validate_frame

ROW_COUNT_CHECK = "row_count_matches_input"
COMPLETE_CHECK = "no_missing_predictions"
PROBABILITY_CHECK = "probabilities_valid"
FINITE_CHECK = "predictions_finite"
INPUT_SUFFIXES = (".csv", ".parquet")
PROBABILITY_TOLERANCE = 1e-6


@dataclass
class BatchInputError(Exception):
    """Input that blocks the day: which file, which column(s), what is wrong."""

    file: str
    problem: str
    message: str
    columns: list[str] = field(default_factory=list)
    sample: pd.DataFrame | None = None

    def __str__(self) -> str:
        return self.message


def input_files(folder: Path) -> list[Path]:
    """The day's .csv and .parquet files, sorted by name (other files are left alone)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)


def read_input(file: Path, csv_options: CsvOptions | None = None) -> pd.DataFrame:
    """One file, read as training reads files (CSV dialect sniffed, Parquet, ISO dates);
    unreadable or empty: BatchInputError."""
    try:
        frame = read_tabular_file(file, csv_options or CsvOptions())
    except DataSourceError as exc:
        raise BatchInputError(file.name, "unreadable", str(exc)) from None
    if not len(frame):
        raise BatchInputError(file.name, "no rows", f"{file} has a header but 0 data rows: "
                              "add rows or remove the file")
    return frame


def validate_input(frame: pd.DataFrame, schema: pa.DataFrameSchema, target: str,
                   file: str, model: str = "the champion") -> pd.DataFrame:
    """The file's feature columns validated against the champion's own feature schema
    (dtypes coerced, every value check enforced as the API's reject policy does) and
    in the schema's order. Other columns (the target, identifiers, anything else) are
    ignored, as the API ignores them. A failure raises BatchInputError with the
    schema's sentences (column, rows, values, the fix)."""
    kinds = feature_columns(schema, target)
    features = list(kinds)
    feature_schema = schema.remove_columns([c for c in schema.columns if c not in kinds])
    rows = frame[[c for c in frame.columns if c in kinds]]
    validated, report = validate_frame(rows, feature_schema)
    if not report.passed:
        # validate_frame words a failed coercion twice (coerce_dtype and dtype): once.
        sentences = dict.fromkeys(re.split(r"(?<=\.) (?=column ')", report.message))
        raise BatchInputError(
            file, ", ".join(report.failing_checks),
            f"{file}: {' '.join(sentences)} (checked against the feature schema {model} "
            "was trained with: fix the data, or retrain and promote a model on the new "
            "columns)", report.failing_columns, report.failure_sample)
    validated = validated[features]
    for name in (n for n, kind in kinds.items() if kind == "numeric"):
        values = pd.to_numeric(validated[name], errors="coerce").to_numpy(dtype=float)
        infinite = np.flatnonzero(np.isinf(values))
        if len(infinite):
            # data rows counted from 1 by the frame's index (a shard's batch starts
            # where it starts in its file), by position for other indexes
            index = validated.index
            numbers = (index[infinite[:5]] if pd.api.types.is_integer_dtype(index)
                       else infinite[:5])
            shown = ", ".join(str(int(i) + 1) for i in numbers)
            raise BatchInputError(
                file, "not_finite",
                f"{file}: column {name!r} holds {len(infinite)} infinite value(s) in data "
                f"rows {shown}: the model takes finite numbers only; fix those values "
                "(leave a cell empty for a missing value where the schema allows it)",
                [name])
    return validated


def file_keys(files: list[Path]) -> dict[Path, str]:
    """The part of a request id naming the file: its stem, or its whole name when two of
    the day's files share a stem (a.csv and a.parquet)."""
    stems = [f.stem for f in files]
    return {f: f.name if stems.count(f.stem) > 1 else f.stem for f in files}


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


def output_checks(written: pd.DataFrame, input_rows: int, regression: bool
                  ) -> list[CheckOutcome]:
    """The checks of a written day: row count, completeness, probabilities (a
    classifier's: each in [0, 1], summing to 1 per row), finite predictions (a
    regressor's)."""
    outcomes = [CheckOutcome(
        ROW_COUNT_CHECK, len(written) == input_rows,
        f"{len(written)} rows written for {input_rows} input rows",
        {"written_rows": len(written), "input_rows": input_rows})]
    missing = {c: int(written[c].isna().sum()) if c in written else len(written)
               for c in ("prediction", "model_version")}
    outcomes.append(CheckOutcome(
        COMPLETE_CHECK, not any(missing.values()),
        "; ".join(f"{c}: {n} missing" for c, n in missing.items()), missing))
    proba = written[[c for c in written.columns if str(c).startswith("proba_")]]
    if regression:
        outcomes.append(CheckOutcome(PROBABILITY_CHECK, proba.shape[1] == 0,
                                     "a regressor: no probabilities"
                                     if proba.shape[1] == 0 else
                                     f"a regressor with {proba.shape[1]} proba_ columns"))
        values = pd.to_numeric(written["prediction"], errors="coerce").to_numpy(dtype=float)
        bad = int((~np.isfinite(values)).sum())
        outcomes.append(CheckOutcome(FINITE_CHECK, bad == 0,
                                     f"{bad} of {len(values)} predictions are not finite "
                                     "numbers", {"not_finite": bad}))
        return outcomes
    values = proba.to_numpy(dtype=float)
    outside = int((~((values >= 0) & (values <= 1))).any(axis=1).sum()) if values.size else 0
    sums = values.sum(axis=1) if values.size else np.ones(len(written))
    unbalanced = int((np.abs(sums - 1) > PROBABILITY_TOLERANCE).sum())
    passed = proba.shape[1] > 0 and outside == 0 and unbalanced == 0
    outcomes.append(CheckOutcome(
        PROBABILITY_CHECK, passed,
        (f"{proba.shape[1]} classes; rows with a probability outside [0, 1]: {outside}; "
         f"rows whose probabilities do not sum to 1 (±{PROBABILITY_TOLERANCE:g}): "
         f"{unbalanced}") if proba.shape[1] else "a classifier without proba_ columns",
        {"classes": proba.shape[1], "rows_outside_unit_interval": outside,
         "rows_not_summing_to_one": unbalanced,
         "max_sum_error": float(np.abs(sums - 1).max()) if len(sums) else 0.0}))
    outcomes.append(CheckOutcome(FINITE_CHECK, bool(np.isfinite(values).all()),
                                 "a classifier: every probability is a finite number"
                                 if np.isfinite(values).all() else
                                 "a classifier with non-finite probabilities"))
    return outcomes


# Built-in pandera checks a record batch can be judged by without pandas: name -> test of
# the non-missing values (pandera's default ignore_na).
_BOUND_CHECKS = {
    "greater_than_or_equal_to": lambda v, s: v >= s["min_value"],
    "greater_than": lambda v, s: v > s["min_value"],
    "less_than_or_equal_to": lambda v, s: v <= s["max_value"],
    "less_than": lambda v, s: v < s["max_value"],
    "in_range": lambda v, s: ((v >= s["min_value"]) if s.get("include_min", True)
                              else (v > s["min_value"]))
    & ((v <= s["max_value"]) if s.get("include_max", True) else (v < s["max_value"])),
}
# Schema dtypes whose Arrow counterpart pandera's coercion leaves unchanged.
_ARROW_TYPES = {"float64": "double", "int64": "int64"}


def passes_without_pandas(batch, schema: pa.DataFrameSchema, target: str) -> bool:
    """True only when a pyarrow RecordBatch's feature columns certainly pass
    `validate_input` unchanged: every feature present with the Arrow type of its schema
    dtype (float64/int64: coercion is then the identity), no missing value where the
    schema forbids one, finite, within the built-in bound checks. Anything else (other
    types or checks, a failing value) is False: `validate_input` then decides, and words
    the error. A fast path only: it never rejects."""
    if (schema.checks or getattr(schema, "parsers", None) or schema.unique
            or schema.index is not None):
        return False
    names = set(batch.schema.names)
    for name in feature_columns(schema, target):
        column = schema.columns[name]
        if (name not in names or column.unique or column.regex
                or getattr(column, "parsers", None)
                or _ARROW_TYPES.get(str(column.dtype)) != str(batch.schema.field(name).type)):
            return False
        array = batch.column(name)
        if array.null_count and (not column.nullable or str(column.dtype) == "int64"):
            return False  # an int64 column with nulls becomes float64 in pandas
        values = array.to_numpy(zero_copy_only=False)
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                if np.isinf(values).any() or not column.nullable:
                    return False
                values = values[finite]
        for check in column.checks:
            test = _BOUND_CHECKS.get(check.name)
            if (type(check) is not pa.Check or test is None or not check.ignore_na
                    or not bool(np.all(test(values, check.statistics)))):
                return False
    return True
