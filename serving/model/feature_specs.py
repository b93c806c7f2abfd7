"""The served model's features as the API sees them, read from its Pandera schema.

Columns other than the target whose role is "feature" are features (columns the
schema marks identifier/constant/datetime/free_text are validated at training but
are no model input). float → number, int → integer, bool → boolean, anything else →
string; the schema's checks (ge/gt/le/lt/in_range, isin, str_matches, str_length)
are kept on the `FeatureSpec` for the request models (serving/model/request_models.py).
`frame_from_rows` turns validated rows back into the DataFrame the Pipeline was
trained on; `example_rows` makes rows from the schema alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ml_assets.core.data.schemas import FEATURE_ROLE, column_role

FeatureKind = Literal["number", "integer", "boolean", "string"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature as the API sees it."""

    name: str
    kind: FeatureKind
    nullable: bool
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allowed: tuple | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The non-empty attributes, for GET /model."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items() if v is not None}


def _kind(dtype) -> FeatureKind:
    name = str(dtype).lower()
    if name.startswith(("float", "int", "uint")):
        return "number" if name.startswith("float") else "integer"
    if name in ("bool", "boolean"):
        return "boolean"
    return "string"


def _tighter(current, value, pick):
    return value if current is None else pick(current, value)


def feature_specs(schema: pa.DataFrameSchema, target: str) -> list[FeatureSpec]:
    """The features of `schema` (every column but `target` whose role is "feature"; a
    schema without roles makes every column a feature), in schema order."""
    specs = []
    for name, column in schema.columns.items():
        if name == target or column_role(column) != FEATURE_ROLE:
            continue
        bounds: dict[str, Any] = {}
        for check in column.checks:
            stats = check.statistics or {}
            low, high = stats.get("min_value"), stats.get("max_value")
            if check.name == "greater_than_or_equal_to":
                bounds["ge"] = _tighter(bounds.get("ge"), low, max)
            elif check.name == "greater_than":
                bounds["gt"] = _tighter(bounds.get("gt"), low, max)
            elif check.name == "less_than_or_equal_to":
                bounds["le"] = _tighter(bounds.get("le"), high, min)
            elif check.name == "less_than":
                bounds["lt"] = _tighter(bounds.get("lt"), high, min)
            elif check.name == "in_range":
                low_key = "ge" if stats.get("include_min", True) else "gt"
                high_key = "le" if stats.get("include_max", True) else "lt"
                bounds[low_key] = _tighter(bounds.get(low_key), low, max)
                bounds[high_key] = _tighter(bounds.get(high_key), high, min)
            elif check.name == "isin":
                bounds["allowed"] = tuple(stats["allowed_values"])
            elif check.name == "str_matches":
                bounds["pattern"] = stats["pattern"]
            elif check.name == "str_length":
                exact = stats.get("exact_value")
                bounds["min_length"] = exact if exact is not None else low
                bounds["max_length"] = exact if exact is not None else high
        specs.append(FeatureSpec(name=str(name), kind=_kind(column.dtype),
                                 nullable=bool(column.nullable),
                                 **{k: v for k, v in bounds.items() if v is not None}))
    return specs



def example_rows(specs: list[FeatureSpec], n: int = 2) -> list[dict]:
    """Rows synthesized from the schema alone (valid under every constraint), for the
    smoke prediction of a model that carries no input example."""
    row: dict[str, Any] = {}
    for spec in specs:
        if spec.allowed:
            row[spec.name] = spec.allowed[0]
        elif spec.kind == "boolean":
            row[spec.name] = False
        elif spec.kind == "string":
            row[spec.name] = "x" * max(1, spec.min_length or 1)
        else:
            low = spec.ge if spec.ge is not None else spec.gt
            high = spec.le if spec.le is not None else spec.lt
            if low is not None and high is not None:
                value = (low + high) / 2
            elif low is not None:
                value = low + 1
            elif high is not None:
                value = high - 1
            else:
                value = 0.0
            row[spec.name] = int(value) if spec.kind == "integer" else float(value)
    return [dict(row) for _ in range(n)]


def frame_from_rows(rows: list[list], specs: tuple[FeatureSpec, ...],
                    missing_string: Any = np.nan) -> pd.DataFrame:
    """One DataFrame for a batch of validated rows, with the dtypes training saw
    (numbers float64, missing → NaN; strings object, missing → NaN, which the
    Pipeline's imputer replaces as it did in training; a None would be an unknown
    category to it). `missing_string=None` keeps None, for a model that learned None
    as a category (trained before missing strings were NaN in training frames)."""
    columns = list(zip(*rows, strict=False)) if rows else [() for _ in specs]
    data = {}
    for spec, values in zip(specs, columns, strict=False):
        if spec.kind == "number":
            data[spec.name] = np.array(values, dtype=np.float64)
        elif spec.kind in ("integer", "boolean") and None not in values:
            data[spec.name] = np.array(values, dtype=np.int64 if spec.kind == "integer"
                                       else bool)
        elif spec.kind == "integer":
            data[spec.name] = np.array(values, dtype=np.float64)
        else:
            column = np.array(values, dtype=object)
            if None in values and missing_string is not None:  # NaN, as in the
                column[column == None] = missing_string  # noqa: E711 - training frames
            data[spec.name] = column
    return pd.DataFrame(data, copy=False)
