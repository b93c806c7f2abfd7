"""Infer a Pandera schema a person would sign off, from the first data seen.

Rules (thresholds are module constants):
- types are kept: int64 (Int64 when nullable, including floats that are all whole
  numbers with gaps), float64, bool (boolean when nullable), str, category and
  datetime64[ns] (with its timezone);
- datetimes, identifiers, constants and free text are validated but get a role that
  keeps them out of the features, with a note saying why (`schemas.EXCLUDED_ROLES`);
- a closed `isin` list only for genuine low-cardinality categories and the target;
- an open categorical records its encoding (`encodings.encoding_for`: one-hot up to 50
  values, beyond that the 50 most frequent values plus an "other" column);
- integers are identifiers when named like one (id, index, rownames ...), when they
  count up in file order or fill a range without gaps, or when they are unique over so
  many rows in so narrow a range that chance cannot explain it (`_too_unique`), whatever
  their order;
- nothing is returned for a frame no model could learn from (0 rows, target empty or
  with a single class, no usable feature): `SchemaInferenceError` says what to fix.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ml_assets.core.data.datasets import unknown_column_message
from ml_assets.core.data.encodings import ENCODING_KEY, encoding_for, encoding_note
from ml_assets.core.data.schemas import (
    NOTE_KEY,
    ROLE_KEY,
    excluded_columns,
    feature_columns,
    schema_from_yaml,
    schema_yaml,
    validate_frame,
)
from ml_assets.core.modeling.tasks import detect_task

MAX_CATEGORIES = 50          # a closed isin list holds at most this many values ...
CATEGORY_SHARE = 0.5         # ... and distinct <= this share of the non-null values
OPEN_CATEGORY_SHARE = 0.2    # more distinct but <= this share: an open categorical feature
IDENTIFIER_SHARE = 0.95      # ints/strings with distinct >= this share of non-null rows ...
IDENTIFIER_MIN_ROWS = 20     # ... over at least this many rows are identifiers
NAMED_IDENTIFIER_SHARE = 0.5  # named like an id: an identifier when distinct > this share
CHANCE_REPEATS = 10.0        # unique ints where this many repeats were expected: an id
FREE_TEXT_WORDS = 3.0        # mean words per value from which text is free text
MIXED_NUMBER_SHARE = 0.8     # a text column whose values are mostly (>=) numbers is an error

DATETIME_NOTE = ("datetime column: validated but not a feature, because a raw timestamp "
                 "does not generalise to future rows; add derived columns (month, weekday, "
                 "hour) to the data if they carry signal")
DATETIME_POLICY = ("Datetime columns are validated but never used as features: a raw "
                   "timestamp does not generalise to future rows. Add derived columns "
                   "(month, weekday, hour) to the data if they carry signal.")

_ID_NAMES = {"id", "uuid", "guid", "key", "index", "rowid", "row_id", "pk", "idx",
             "rownames", "rowname", "row_names", "row.names", "row_name", "rownum",
             "row_num", "row_number", "row_index"}
_ID_SUFFIX = re.compile(r"[_\-\s.](id|uuid|guid|key)$", re.IGNORECASE)
_ID_PREFIX = re.compile(r"^(id|uuid|guid)[_\-\s.]", re.IGNORECASE)
_CAMEL_ID = re.compile(r"(?<=[a-z])(Id|ID|Uuid|Key)$")


class SchemaInferenceError(ValueError):
    """The frame cannot give a usable schema; the message says what to fix."""


def looks_like_identifier_name(name: str) -> bool:
    """id, *_id, uuid, key, customerId, "Unnamed: 0" (a saved pandas index) ..."""
    text = str(name).strip()
    lower = text.lower()
    return (lower in _ID_NAMES or lower.startswith("unnamed:") or bool(_ID_SUFFIX.search(text))
            or bool(_ID_PREFIX.search(text)) or bool(_CAMEL_ID.search(text)))


def _column(dtype, nullable: bool, checks=None, role: str | None = None,
            note: str | None = None, encoding: str | None = None) -> pa.Column:
    metadata = {}
    if role:
        metadata[ROLE_KEY] = role
    if note:
        metadata[NOTE_KEY] = note
    if encoding:
        metadata[ENCODING_KEY] = encoding
    return pa.Column(dtype, checks=checks or [], nullable=nullable, coerce=True,
                     metadata=metadata or None)


def _rows(index, limit: int = 5) -> str:
    return ", ".join(str(int(i) + 1) if isinstance(i, (int, np.integer)) else str(i)
                     for i in list(index)[:limit])


def _mixed_numbers(name: str, values: pd.Series) -> None:
    """Raise when a text column is mostly numbers with a few other values."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna()]
    if len(bad) and len(bad) <= (1 - MIXED_NUMBER_SHARE) * len(values):
        sample = ", ".join(repr(str(v)) for v in bad.head(5))
        raise SchemaInferenceError(
            f"column {name!r} holds numbers except for {len(bad)} value(s) that are not "
            f"numbers, in data row(s) {_rows(bad.index)} (counting from 1 after the header): "
            f"{sample}. Fix those values, or leave the cells empty where the value is "
            "missing, then run again; no schema was written.")


def _integral(series: pd.Series) -> bool:
    values = series.dropna().to_numpy(dtype=float)
    return bool(len(values)) and bool(np.all(np.isfinite(values))
                                      and np.all(values == np.round(values))
                                      and np.all(np.abs(values) < 2**53))


def _sequential(values: pd.Series) -> bool:
    """Row numbers, order numbers, auto-increment keys: unique integers that only grow in
    file order (or fill a range without gaps). Unique incomes or ages are not."""
    numbers = values.to_numpy(dtype=float)
    if len(numbers) < 2:
        return False
    steps = np.diff(numbers)
    gapless = numbers.max() - numbers.min() + 1 == len(np.unique(numbers))
    return bool(np.all(steps > 0) or gapless)


def expected_repeats(rows: int, span: float) -> float:
    """How many values of `rows` integers drawn at random from a range of `span` values
    would repeat an earlier one (the birthday problem): rows - span * (1 - e^(-rows/span))."""
    if rows < 2 or span <= 0:
        return 0.0
    return float(rows - span * -np.expm1(-rows / span))


def _too_unique(values: pd.Series) -> bool:
    """Unique integers in a range so narrow for their number that measured quantities
    would repeat (at least CHANCE_REPEATS repeats expected): keys, in any order. 300,000
    unique values between 1 and 336,776 are keys; 200 unique incomes between 20,000 and
    200,000 are not (0.1 repeats expected)."""
    numbers = values.to_numpy(dtype=float)
    if len(numbers) < IDENTIFIER_MIN_ROWS or len(np.unique(numbers)) != len(numbers):
        return False
    span = numbers.max() - numbers.min() + 1
    return expected_repeats(len(numbers), span) >= CHANCE_REPEATS


def _numeric(name, series: pd.Series, nullable: bool) -> pa.Column:
    checks = [pa.Check.ge(0)] if series.min(skipna=True) >= 0 else []
    non_null = series.dropna()
    if pd.api.types.is_integer_dtype(series) or (nullable and _integral(series)):
        dtype = "Int64" if nullable else "int64"
        unique = non_null.nunique() >= IDENTIFIER_SHARE * len(non_null)
        if len(non_null) >= IDENTIFIER_MIN_ROWS and unique and _sequential(non_null):
            return _column(dtype, nullable, checks, "identifier",
                           f"integer identifier ({non_null.nunique()} distinct values in "
                           f"{len(non_null)} rows, counting up in file order): validated "
                           "but not a feature")
        if _too_unique(non_null):
            span = int(non_null.max() - non_null.min() + 1)
            return _column(dtype, nullable, checks, "identifier",
                           f"integer identifier ({len(non_null)} unique values within a "
                           f"range of {span}, where random values would repeat about "
                           f"{expected_repeats(len(non_null), span):,.0f} times): "
                           "validated but not a feature")
        return _column(dtype, nullable, checks)
    return _column("float64", nullable, checks)


def _text(name, series: pd.Series, nullable: bool, is_target: bool) -> pa.Column:
    non_null = series.dropna()
    if len(non_null) and non_null.map(lambda v: isinstance(v, (bool, np.bool_))).all():
        return _column("boolean" if nullable else "bool", nullable)
    values = non_null.astype(str)
    dtype = "category" if isinstance(series.dtype, pd.CategoricalDtype) else "str"
    distinct = sorted(values.unique().tolist())
    if is_target:
        return pa.Column(dtype, checks=[pa.Check.isin(distinct)], nullable=False, coerce=True)
    _mixed_numbers(str(name), values)
    n, k = len(values), len(distinct)
    if k <= MAX_CATEGORIES and k <= CATEGORY_SHARE * n:
        return _column(dtype, nullable, [pa.Check.isin(distinct)], encoding=encoding_for(k))
    words = values.str.split().str.len().mean()
    if words >= FREE_TEXT_WORDS:
        return _column(dtype, nullable, role="free_text", note=(
            f"free text (on average {words:.1f} words per value, {k} distinct values): "
            "validated but not a feature"))
    if n >= IDENTIFIER_MIN_ROWS and k >= IDENTIFIER_SHARE * n:
        return _column(dtype, nullable, role="identifier", note=(
            f"identifier ({k} distinct values in {n} rows): validated but not a feature"))
    if k <= OPEN_CATEGORY_SHARE * n:
        return _column(dtype, nullable, note=encoding_note(k), encoding=encoding_for(k))
    return _column(dtype, nullable, role="free_text", note=(
        f"high-cardinality text ({k} distinct values in {n} rows): validated but not a "
        "feature"))


def _base_dtype(series: pd.Series, nullable: bool):
    if pd.api.types.is_bool_dtype(series):
        return "boolean" if nullable else "bool"
    if pd.api.types.is_integer_dtype(series) or (pd.api.types.is_float_dtype(series)
                                                 and nullable and _integral(series)):
        return "Int64" if nullable else "int64"
    if pd.api.types.is_float_dtype(series):
        return "float64"
    return "category" if isinstance(series.dtype, pd.CategoricalDtype) else "str"


def infer_column(name, series: pd.Series, target: str, task: str = "auto") -> pa.Column:
    """The schema column for one series (see the module docstring for the rules). A
    regression target (`tasks.detect_task` under `task`) is a float64 column with no
    closed list of values."""
    is_target = name == target
    if series.dtype == object:
        nested = series.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray)))
        if nested.any():
            first = series[nested].iloc[0]
            raise SchemaInferenceError(
                f"column {name!r} holds lists or nested records (e.g. {str(first)[:60]!r} in "
                f"data row {_rows(series.index[nested][:1])}); the platform takes one value "
                "per cell: flatten it into columns, or drop it from the data; no schema was "
                "written.")
    nullable = bool(series.isna().any()) and not is_target
    if pd.api.types.is_datetime64_any_dtype(series):
        if is_target:
            raise SchemaInferenceError(f"target column {name!r} holds dates; choose a "
                                       "column of class labels as the target")
        tz = getattr(series.dtype, "tz", None)
        dtype = f"datetime64[ns, {tz}]" if tz is not None else "datetime64[ns]"
        return _column(dtype, nullable, role="datetime", note=DATETIME_NOTE)
    if is_target:
        if detect_task(series, task).is_regression:  # type: ignore[arg-type]
            return pa.Column("float64", nullable=False, coerce=True)
        return _text(name, series, nullable, is_target=True)
    if series.isna().all():
        return _column(None, True, role="constant",
                       note="empty in every row: validated but not a feature")
    if series.nunique(dropna=True) == 1 and not nullable:
        value = series.dropna().iloc[0]
        return _column(_base_dtype(series, nullable), nullable, role="constant", note=(
            f"the same value ({str(value)!r}) in every row: validated but not a feature"))
    fractional = pd.api.types.is_float_dtype(series) and not _integral(series)
    non_null = series.dropna()
    varied = non_null.nunique() > NAMED_IDENTIFIER_SHARE * len(non_null)
    if (looks_like_identifier_name(str(name)) and varied and not fractional
            and not pd.api.types.is_bool_dtype(series)):
        return _column(_base_dtype(series, nullable), nullable, role="identifier",
                       note="named like an identifier: validated but not a feature")
    if pd.api.types.is_bool_dtype(series):
        return _column("boolean" if nullable else "bool", nullable)
    if pd.api.types.is_numeric_dtype(series):
        return _numeric(name, series, nullable)
    return _text(name, series, nullable, is_target=False)


def _check_target(frame: pd.DataFrame, target: str, where: str, task: str = "auto") -> None:
    if target not in frame.columns:
        raise SchemaInferenceError(unknown_column_message(target, list(frame.columns), where))
    labels = frame[target]
    if labels.isna().all():
        raise SchemaInferenceError(
            f"target column {target!r} is empty in all {len(frame)} rows of {where}: fill in "
            "the labels, or choose another target column; no schema was written.")
    missing = labels[labels.isna()]
    if len(missing):
        raise SchemaInferenceError(
            f"target column {target!r} is empty in {len(missing)} of {len(frame)} rows of "
            f"{where} (data rows {_rows(missing.index)}): fill in those labels or remove "
            "the rows; no schema was written.")
    classes = labels.astype(str).value_counts()
    if len(classes) < 2 and task == "regression":
        raise SchemaInferenceError(
            f"regression target {target!r} has a single value ({classes.index[0]!r} in all "
            f"{len(frame)} rows of {where}); a model needs a target that varies: choose "
            "another target column; no schema was written.")
    if len(classes) < 2:
        raise SchemaInferenceError(
            f"target column {target!r} has a single class ({classes.index[0]!r} in all "
            f"{len(frame)} rows of {where}); a classifier needs at least two: add rows of "
            "another class, or choose another target column; no schema was written.")


def infer_schema(frame: pd.DataFrame, target: str, name: str = "inferred",
                 where: str = "the data", task: str = "auto") -> pa.DataFrameSchema:
    """A schema for `frame`, or SchemaInferenceError when no model could learn from it.

    `where` names the data (a file or directory) in the messages; `task` (ML_TASK)
    decides, with the target's values, whether the target is a class label (str with a
    closed isin list) or a regression target (float64, no isin)."""
    if len(frame) == 0:
        raise SchemaInferenceError(
            f"{where} has 0 data rows: add rows below the header and run again; no schema "
            "was written.")
    try:
        _check_target(frame, target, where, task)
        columns = {column: infer_column(column, frame[column], target, task)
                   for column in frame.columns}
    except SchemaInferenceError:
        raise
    except ValueError as exc:  # a task setting the target cannot have
        raise SchemaInferenceError(f"{exc}; no schema was written.") from None
    schema = pa.DataFrameSchema(columns, strict=True, name=name, ordered=False)
    if not feature_columns(schema, target):
        excluded = ", ".join(f"{c!r} ({role})" for c, role in
                             excluded_columns(schema, target).items())
        raise SchemaInferenceError(
            f"{where} has no usable feature: every column other than the target {target!r} "
            f"is excluded ({excluded or 'there are none'}). Add at least one feature column; "
            "no schema was written.")
    return schema


def checked_schema(frame: pd.DataFrame, target: str, name: str = "inferred",
                   where: str = "the data", task: str = "auto") -> pa.DataFrameSchema:
    """`infer_schema`, then the guard: the schema, as it will be read back from its YAML
    file, must accept the very frame it was inferred from; otherwise nothing may be
    written (an inference bug must never leave a broken file behind)."""
    schema = infer_schema(frame, target, name, where, task)
    written = schema_from_yaml(schema_yaml(schema))
    _, report = validate_frame(frame, written)
    if not report.passed:
        raise SchemaInferenceError(
            f"the schema inferred from {where} does not accept the data it was inferred "
            f"from, so it was not written: {report.message} This is a fault in schema "
            "inference; write the schema file by hand (see the README) and run again.")
    return written
