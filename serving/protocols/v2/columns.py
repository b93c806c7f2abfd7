"""A tensor's data and the feature columns in it: the shape and its flattening, the values
its datatype holds, and every column validated exactly as /predict validates the feature
(the served model's own field validators), with vectorised checks that decide a clean
column (`_fast_column`), or a clean all-number request (`number_rows`), at once. The
same checks decide plainly valid JSON records of /predict/batch and /invocations
(`record_rows`), whose other bodies the generated pydantic models decide.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from serving.model.feature_specs import FeatureSpec
from serving.model.input_limits import excerpt
from serving.model.request_models import RequestModels
from serving.protocols.v2.errors import V2Error, quote
from serving.protocols.v2.types import FLOAT_MAX, INT_RANGES, JSON_NAMES, JSON_TYPES, NONE_TYPE
from serving.protocols.validation_errors import NULL_MESSAGE


@dataclass(frozen=True)
class FeatureColumn:
    """How one feature's column is validated: `adapter` is the record model's own field
    (type, validators, constraints) over a list; `fast` says whether the vectorised
    check may decide a clean column (no membership check, no string constraints)."""

    spec: FeatureSpec
    adapter: TypeAdapter
    fast: bool


# By id(RequestModels): (a weak reference to it, its plan). Weak, so a swapped-out
# model's generated classes are not kept alive here; two entries cover a swap.
_PLANS: dict[int, tuple[weakref.ref, tuple[FeatureColumn, ...]]] = {}
_CONFIG = ConfigDict(strict=True, regex_engine="python-re")


def column_plan(requests: RequestModels) -> tuple[FeatureColumn, ...]:
    """Per feature, its column validator (built once per served model version, ~3 ms
    for 30 features)."""
    cached = _PLANS.get(id(requests))
    if cached is not None and cached[0]() is requests:
        return cached[1]
    features = []
    for key, spec in zip(requests.keys, requests.specs, strict=True):
        field = requests.record.model_fields[key]
        annotation: Any = (Annotated[(field.annotation, *field.metadata)] if field.metadata
                           else field.annotation)
        enforced = spec.allowed is not None and requests.policy == "reject"
        constrained = spec.kind == "string" and (
            spec.pattern is not None or spec.min_length is not None
            or spec.max_length is not None)
        features.append(FeatureColumn(spec, TypeAdapter(list[annotation], config=_CONFIG),
                                      fast=not (enforced or constrained)))
    plan = tuple(features)
    if len(_PLANS) >= 2:
        _PLANS.clear()
    _PLANS[id(requests)] = (weakref.ref(requests), plan)
    return plan


class ColumnInvalid(Exception):
    """Values of one column the feature refuses; `rows`: the bad row indices."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def _is_null(value) -> bool:
    return value is None or (type(value) is float and value != value)


def _refusal(exc: ValidationError, spec: FeatureSpec) -> ColumnInvalid:
    """The first problem of a column's ValidationError as "row i: why", null (or NaN)
    for a feature that may not be null said as /predict says it."""
    errors = exc.errors(include_url=False, include_input=True)
    rows = sorted({e["loc"][0] for e in errors if e["loc"] and isinstance(e["loc"][0], int)})
    first = errors[0]
    why = (NULL_MESSAGE if not spec.nullable and _is_null(first.get("input", 0))
           else excerpt(first["msg"], 200))
    where = f"row {first['loc'][0]}: " if first["loc"] else ""
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return ColumnInvalid(f"{where}{why}{more}", rows)


def _fast_column(values: list, types: set, feature: FeatureColumn) -> list | None:
    """The validated column when a vectorised check can tell it is clean, else None
    (the field validators then decide, and name the problems). Exact because a number's
    or an integer's valid values form an interval (finite, the float32 / int64 /
    preprocessing bounds, and the schema's ge/gt/le/lt under the reject policy): when
    the column's smallest and largest values pass the feature's own validator, every
    value between them does."""
    spec = feature.spec
    if NONE_TYPE in types and not spec.nullable:
        return None
    if spec.kind == "number" and types <= {float, int, NONE_TYPE}:
        try:
            array = np.array(values, dtype=np.float64)  # None → NaN
        except OverflowError:  # an integer beyond float64
            return None
        missing = np.isnan(array)
        if np.isinf(array).any():
            return None
        gaps = bool(missing.any())
        if gaps and not spec.nullable:  # NaN: null, which the feature refuses
            return None
        if not (gaps and missing.all()):
            low = int(np.argmin(np.where(missing, np.inf, array) if gaps else array))
            high = int(np.argmax(np.where(missing, -np.inf, array) if gaps else array))
            try:
                feature.adapter.validate_python([values[low], values[high]])
            except ValidationError:
                return None
        column = array.tolist()
        if gaps:
            for i in np.flatnonzero(missing).tolist():
                column[i] = None
        return column
    if spec.kind == "integer" and types <= {int, NONE_TYPE}:
        present = values if NONE_TYPE not in types else [v for v in values if v is not None]
        if present:
            try:
                feature.adapter.validate_python([min(present), max(present)])
            except ValidationError:
                return None
        return list(values)
    if spec.kind == "boolean" and types <= {bool, NONE_TYPE}:
        return list(values)
    if spec.kind == "string" and types <= {str, NONE_TYPE}:
        return list(values)
    return None


def validate_column(values: list, feature: FeatureColumn, types: set | None = None) -> list:
    """`values` validated as /predict validates the feature (NaN → None where nullable,
    whole floats → int for integers, ints → float for numbers); ColumnInvalid else."""
    types = set(map(type, values)) if types is None else types
    if feature.fast:
        column = _fast_column(values, types, feature)
        if column is not None:
            return column
    try:
        validated: list = feature.adapter.validate_python(values)
    except ValidationError as exc:
        raise _refusal(exc, feature.spec) from None
    return validated


def check_shape(raw: Any, label: str) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise V2Error(f"{label} needs a 'shape': a non-empty array of dimensions")
    for dim in raw:
        if type(dim) is not int or dim < 0:
            raise V2Error(f"{label} has shape {excerpt(raw)}: dimensions must be "
                          "non-negative integers (-1 appears in metadata only)")
    return raw


def flatten(data: Any, shape: list[int], label: str) -> list:
    """The tensor's values, row-major, from `data` flat or nested to `shape` (at most 2
    dimensions here); V2Error when the data does not hold exactly the shape."""
    if not isinstance(data, list):
        raise V2Error(f"{label} needs 'data': an array of values")
    total = math.prod(shape)
    if len(shape) == 2 and data and type(data[0]) is list:
        rows, width = shape
        if set(map(type, data)) != {list} or len(data) != rows or (
                rows and set(map(len, data)) != {width}):
            raise V2Error(f"{label}: nested data does not match shape {shape} (it must "
                          f"hold {rows} arrays of {width} values, or {total} values flat)")
        data = list(chain.from_iterable(data))
    elif len(data) != total:
        raise V2Error(f"{label} has shape {shape} ({total} values) but its data holds "
                      f"{len(data)} values")
    return data


def check_data(values: list, types: set, datatype: str, label: str,
               columns: Sequence[str] = ()) -> None:
    """The data must be what the datatype holds (JSON values and, for INT/FP16/FP32,
    the datatype's range); null is allowed everywhere (it means missing). `columns`:
    the feature names of a single [n, k] tensor's flat values."""
    allowed = JSON_TYPES[datatype]

    def at(i: int) -> str:
        if not columns:
            return f"{label} row {i}"
        j = i % len(columns)
        return f"{label} column {j} (feature {quote(columns[j])}) row {i // len(columns)}"

    if not types <= allowed:
        row, value = next((i, v) for i, v in enumerate(values) if type(v) not in allowed)
        raise V2Error(f"{at(row)}: {datatype} data cannot hold "
                      f"{JSON_NAMES.get(type(value), type(value).__name__)}"
                      + (f" ({excerpt(repr(value), 40)})" if type(value) in (str, float)
                         else ""))
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        present = values if NONE_TYPE not in types else [v for v in values if v is not None]
        if present and (min(present) < low or max(present) > high):
            row = next(i for i, v in enumerate(values)
                       if v is not None and not low <= v <= high)
            raise V2Error(f"{at(row)}: {excerpt(values[row], 40)} does not fit "
                          f"{datatype} ({low} to {high})")
        return
    limit = FLOAT_MAX.get(datatype)
    if limit is not None and values:
        try:
            magnitude = np.abs(np.array(values, dtype=np.float64))
        except OverflowError:
            magnitude = np.array([math.inf if v is not None and abs(v) > 1e308 else 0.0
                                  for v in values])
        magnitude[~np.isfinite(magnitude)] = 0.0  # NaN, ±inf: representable
        big = magnitude > limit
        if big.any():
            row = int(np.flatnonzero(big)[0])
            raise V2Error(f"{at(row)}: {excerpt(values[row], 40)} is beyond "
                          f"{datatype}'s range (±{limit:.7g})")


_NUMBER_TYPES = frozenset({float, int, NONE_TYPE})


def number_rows(columns: list[list], types: list[set], datatypes: list[str],
                plan: tuple[FeatureColumn, ...]) -> list[list] | None:
    """The rows of an all-number model's clean request, decided at once: one float64
    matrix, column-wise checks, one `tolist`. None when any column is not plainly clean
    (or the model is not all numbers): then each column is checked, and its problem
    named, by `check_data` and `validate_column`. The same decision as those make: FP
    data within its datatype's range, no NaN (null) where the feature is not nullable,
    nothing infinite, and each column's extremes accepted by the feature's validator
    (see `_fast_column`)."""
    if not all(f.spec.kind == "number" and f.fast for f in plan) or not all(
            dt in FLOAT_MAX for dt in datatypes) or not all(t <= _NUMBER_TYPES for t in types):
        return None
    try:
        matrix = np.array(columns, dtype=np.float64)  # (features, rows); None → NaN
    except (OverflowError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[1] == 0 or np.isinf(matrix).any():
        return None
    missing = np.isnan(matrix)
    gaps: np.ndarray = np.any(missing, axis=1)
    if any(gap and not f.spec.nullable for gap, f in zip(gaps.tolist(), plan, strict=True)):
        return None
    any_gap = bool(gaps.any())
    limits = [FLOAT_MAX[dt] for dt in datatypes]
    if any(limit is not None for limit in limits):
        largest = np.abs(np.where(missing, 0.0, matrix) if any_gap else matrix).max(axis=1)
        if any(limit is not None and big > limit
               for big, limit in zip(largest.tolist(), limits, strict=True)):
            return None
    low = (np.where(missing, np.inf, matrix) if any_gap else matrix).argmin(axis=1).tolist()
    high = (np.where(missing, -np.inf, matrix) if any_gap else matrix).argmax(axis=1).tolist()
    empty = np.all(missing, axis=1).tolist()
    for j, feature in enumerate(plan):
        if empty[j]:  # all missing (a nullable feature): nothing to bound
            continue
        try:
            feature.adapter.validate_python([columns[j][low[j]], columns[j][high[j]]])
        except ValidationError:
            return None
    rows: list[list] = matrix.T.tolist()
    if any_gap:
        for j, i in np.argwhere(missing).tolist():
            rows[i][j] = None
    return rows


def record_rows(records: Any, requests: RequestModels, limit: int,
                others: bool = False) -> list[list] | None:
    """The rows of JSON records (objects keyed by feature name: /predict/batch's
    `records`, /invocations' rows) validated column by column with the checks above,
    when every record holds exactly the features (`others`: and any other keys, which
    are ignored) and every column is plainly valid; None whenever anything is not: the
    generated pydantic models then decide, and word every error as they always have."""
    if type(records) is not list or not 0 < len(records) <= limit:
        return None
    names = requests.feature_names
    width = len(names)
    if not all(type(r) is dict and (len(r) == width or others and len(r) > width)
               for r in records):
        return None
    try:
        columns = [[r[name] for r in records] for name in names]
    except KeyError:  # a feature missing (or, with `others`, misnamed): pydantic says so
        return None
    plan = column_plan(requests)
    types = [set(map(type, column)) for column in columns]
    rows = number_rows(columns, types, ["FP64"] * width, plan)
    if rows is not None:
        return rows
    checked = []
    for values, kinds, feature in zip(columns, types, plan, strict=True):
        column = _fast_column(values, kinds, feature) if feature.fast else None
        if column is None:
            try:
                column = feature.adapter.validate_python(values)
            except ValidationError:
                return None
        checked.append(column)
    return [list(row) for row in zip(*checked, strict=True)]
