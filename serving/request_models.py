"""Request models generated from the model's Pandera feature schema (one source of truth).

Columns other than the target are features. float → JSON number, int → integer,
bool → boolean, anything else → string; `nullable` features may be null or left
out. Simple Pandera checks become constraints the API enforces and OpenAPI shows:
ge/gt/le/lt/in_range → minimum/maximum, isin → enum, str_matches → pattern,
str_length → min/max length. Every number must be finite and within what the
model holds (float32's range, narrower where the fitted preprocessing would
scale it past that; int64 for integers); values are strict (a string is never
read as a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from types import GenericAlias
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic.config import JsonDict
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from serving.input_limits import FLOAT32_MAX, INT64_MAX, INT64_MIN, derived_bounds

RECORD_MODEL = "PredictRequest"
INVOCATIONS_RECORD_MODEL = "InvocationsRecord"
BATCH_MODEL = "PredictBatchRequest"
_PYTHON_TYPES = {"number": float, "integer": int, "boolean": bool, "string": str}
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
    """The features of `schema` (every column but `target`), in schema order."""
    specs = []
    for name, column in schema.columns.items():
        if name == target:
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


def _member_of(allowed: tuple):
    allowed_set = set(allowed)

    def check(value):
        if value is not None and value not in allowed_set:
            raise ValueError(f"must be one of {list(allowed)}")
        return value

    return AfterValidator(check)


def _range_check(spec: FeatureSpec, derived: tuple[float, float] | None) -> list:
    """What keeps a number inside what the model holds: float32's range for numbers
    (int64's for integers), tighter where the pipeline's preprocessing would overflow
    (`derived`); sides the schema's own checks already bound more tightly are left out.
    Returns [AfterValidator, Field(json_schema_extra)] or []."""
    low, high = ((-FLOAT32_MAX, FLOAT32_MAX) if spec.kind == "number"
                 else (float(INT64_MIN), float(INT64_MAX)))
    if derived is not None:
        low, high = max(low, derived[0]), min(high, derived[1])
    if spec.kind == "integer":  # exact ints: float(INT64_MAX) rounds up to 2**63
        low = INT64_MIN if low <= INT64_MIN else math.ceil(low)
        high = INT64_MAX if high >= INT64_MAX else math.floor(high)
    upper = min((v for v in (spec.le, spec.lt) if v is not None), default=None)
    lower = max((v for v in (spec.ge, spec.gt) if v is not None), default=None)
    high_bound = None if upper is not None and upper <= high else high
    low_bound = None if lower is not None and lower >= low else low
    if high_bound is None and low_bound is None:
        return []
    why = ("larger magnitudes overflow the model's float32 input" if spec.kind == "number"
           else "the model's integer input holds int64 values")
    if derived is not None:
        why = "larger magnitudes overflow the model's float32 input after its preprocessing"
    kind = "value_too_large"
    schema: dict[str, Any] = {}
    if high_bound is not None:
        schema["maximum"] = int(high_bound) if spec.kind == "integer" else high_bound
    if low_bound is not None:
        schema["minimum"] = int(low_bound) if spec.kind == "integer" else low_bound

    def check(value):
        if value is None or isinstance(value, bool):
            return value
        if high_bound is not None and value > high_bound:
            raise PydanticCustomError(kind, "Input should be at most {limit}: {why}",
                                      {"limit": schema["maximum"], "why": why})
        if low_bound is not None and value < low_bound:
            raise PydanticCustomError(kind, "Input should be at least {limit}: {why}",
                                      {"limit": schema["minimum"], "why": why})
        return value

    return [AfterValidator(check), Field(json_schema_extra=schema)]


def _annotation(spec: FeatureSpec, derived: tuple[float, float] | None = None):
    """The pydantic type and Field of one feature."""
    python_type: Any = _PYTHON_TYPES[spec.kind]
    extra: list = []
    if spec.allowed is not None and spec.kind == "string":
        python_type = Literal[tuple(str(v) for v in spec.allowed)]
    elif spec.allowed is not None:
        extra.append(_member_of(spec.allowed))
    constraints: dict[str, Any] = {}
    if spec.kind in ("number", "integer"):
        constraints = {k: getattr(spec, k) for k in ("ge", "gt", "le", "lt")
                       if getattr(spec, k) is not None}
        if spec.kind == "number":
            constraints["allow_inf_nan"] = False
    elif spec.kind == "string":
        if spec.pattern is not None:
            constraints["pattern"] = f"^(?:{spec.pattern})"
        if spec.min_length is not None:
            constraints["min_length"] = spec.min_length
        if spec.max_length is not None:
            constraints["max_length"] = spec.max_length
    if spec.kind in ("number", "integer"):
        # constraints inside the nullable union, so OpenAPI shows them on the number
        python_type = Annotated[(python_type, Field(**constraints),
                                 *_range_check(spec, derived))]
        constraints = {}
    if spec.nullable:
        python_type = python_type | None
    field = Field(alias=spec.name, title=spec.name, **constraints)
    default = None if spec.nullable else ...
    return Annotated[(python_type, field, *extra)], default


@dataclass(frozen=True)
class RequestModels:
    """The generated models of one served model version."""

    specs: tuple[FeatureSpec, ...]
    record: type[BaseModel]
    batch: type[BaseModel]
    lenient_rows: TypeAdapter
    keys: tuple[str, ...]
    feature_names: tuple[str, ...]
    _getter: Any = None
    lenient_record: type[BaseModel] | None = None  # a row of /invocations (for OpenAPI)

    def row_of(self, record: BaseModel) -> list:
        """Feature values of a validated record, in schema order."""
        values = self._getter(record.__dict__)
        return list(values) if len(self.keys) > 1 else [values]

    def records_of(self, batch: BaseModel) -> list[BaseModel]:
        """The validated records of a `batch` instance (a field of a runtime-built model,
        so read like `row_of` reads features)."""
        records: list[BaseModel] = batch.__dict__["records"]
        return records

    def json_schemas(self) -> dict[str, dict]:
        """Component schemas for OpenAPI (feature names as property names)."""
        models: list[tuple[type[BaseModel], Any]] = [(self.record, "validation"),
                                                     (self.batch, "validation")]
        if self.lenient_record is not None:
            models.append((self.lenient_record, "validation"))
        _, top = models_json_schema(models, ref_template="#/components/schemas/{model}",
                                    by_alias=True)
        return top["$defs"]


def build_request_models(specs: list[FeatureSpec], max_batch: int,
                         example: dict | None = None, pipeline=None) -> RequestModels:
    """PredictRequest (one record, extra fields forbidden), PredictBatchRequest (`records`,
    1..max_batch of them) and a list validator that ignores unknown columns (the MLflow
    scoring protocol ignores them too). With the fitted `pipeline`, number ranges are
    narrowed to what its preprocessing keeps within float32 (`derived_bounds`)."""
    keys = tuple(f"f{i}" for i in range(len(specs)))
    derived = derived_bounds(pipeline, specs, example) if pipeline is not None else {}
    fields = {key: _annotation(spec, derived.get(spec.name))
              for key, spec in zip(keys, specs, strict=False)}
    common = ConfigDict(strict=True, populate_by_name=False, regex_engine="python-re")
    examples: JsonDict | None = {"examples": [example]} if example else None
    record = create_model(RECORD_MODEL, __config__=ConfigDict(
        extra="forbid", title=RECORD_MODEL, json_schema_extra=examples, **common), **fields)
    record.__doc__ = "One record: every feature of the served model's schema, by name."
    batch = create_model(BATCH_MODEL, __config__=ConfigDict(extra="forbid", title=BATCH_MODEL,
                                                            strict=True),
                         records=(_list_of(record),
                                  Field(min_length=1, max_length=max_batch,
                                        description=f"1 to {max_batch} records")))
    batch.__doc__ = "Many records, answered in order."
    lenient = create_model(INVOCATIONS_RECORD_MODEL, __config__=ConfigDict(
        extra="ignore", title=INVOCATIONS_RECORD_MODEL, **common), **fields)
    lenient.__doc__ = ("One row of /invocations: the features by name; other columns are "
                       "ignored, as MLflow's scoring server does.")
    return RequestModels(specs=tuple(specs), record=record, batch=batch,
                         lenient_rows=TypeAdapter(_list_of(lenient)), keys=keys,
                         feature_names=tuple(spec.name for spec in specs),
                         _getter=itemgetter(*keys), lenient_record=lenient)


def _list_of(model: type[BaseModel]) -> Any:
    """`list[model]` for a model class built at runtime (what that subscript evaluates to;
    a type checker cannot take a variable as a type argument)."""
    return GenericAlias(list, (model,))


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


def frame_from_rows(rows: list[list], specs: tuple[FeatureSpec, ...]) -> pd.DataFrame:
    """One DataFrame for a batch of validated rows, with the dtypes training saw
    (numbers float64, missing → NaN; strings object, missing → None)."""
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
            data[spec.name] = np.array(values, dtype=object)
    return pd.DataFrame(data, copy=False)
