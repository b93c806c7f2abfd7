"""Request models generated from the model's Pandera feature schema (one source of truth).

Columns other than the target whose role is "feature" are features (columns the
schema marks identifier/constant/datetime/free_text are validated at training but
are no model input). float → JSON number, int → integer, bool → boolean, anything
else → string; `nullable` features may be null, NaN or left out. str_matches →
pattern and str_length → min/max length are always enforced. The input policy
decides the rest: under "reject", ge/gt/le/lt/in_range → minimum/maximum and
isin → enum, enforced and shown in OpenAPI; under "accept" those values are
answered and flagged (`RequestModels.input_flags`), and OpenAPI shows them only
as a description and `x-known-values` / `x-training-range`. Under both, every
number must be finite and within what the model holds (float32's range, narrower
where the fitted preprocessing would scale it past that; int64 for integers);
values are strict (a string is never read as a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from operator import itemgetter
from types import GenericAlias
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    create_model,
)
from pydantic.config import JsonDict
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from ml_assets.core.data.schemas import FEATURE_ROLE, column_role
from serving.input_limits import FLOAT32_MAX, INT64_MAX, INT64_MIN, derived_bounds

RECORD_MODEL = "PredictRequest"
INVOCATIONS_RECORD_MODEL = "InvocationsRecord"
BATCH_MODEL = "PredictBatchRequest"
_PYTHON_TYPES = {"number": float, "integer": int, "boolean": bool, "string": str}
FeatureKind = Literal["number", "integer", "boolean", "string"]
INPUT_POLICIES = ("accept", "reject")
UNSEEN_CATEGORY, OUT_OF_RANGE = "unseen_category", "out_of_range"
# Said of a null (or NaN) sent for a feature that is not nullable.
NULL_MESSAGE = "may not be null (the model was trained without missing values here)"
NULL_ERROR_TYPE = "null_not_allowed"


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


def _whole_number(value):
    """3.0 → 3 for an integer feature: pandas holds an integer column with gaps as
    floats, so its clients (to_json, to_dict, MLflow) send whole numbers as 3.0. A
    fraction stays a float and is refused by the strict integer type."""
    if type(value) is float and value.is_integer() and abs(value) < 2.0 ** 63:
        return int(value)
    return value


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


def _nan_to_none(value):
    """NaN means missing (pandas and MLflow clients write it so): null where allowed."""
    return None if type(value) is float and value != value else value


_NAN_IS_NULL = BeforeValidator(_nan_to_none)


def _policy_free(spec: FeatureSpec) -> FeatureSpec:
    """`spec` without the checks the accept policy flags instead of enforcing."""
    return replace(spec, ge=None, gt=None, le=None, lt=None, allowed=None)


def _known(spec: FeatureSpec) -> dict[str, Any]:
    """What the accept policy shows instead of enum/minimum/maximum: a description and
    `x-` extensions, which validators and fuzzers do not read as constraints."""
    extra: dict[str, Any] = {}
    said = []
    if spec.allowed is not None:
        extra["x-known-values"] = list(spec.allowed)
        said.append("known values " + ", ".join(repr(v) for v in spec.allowed))
    bounds = {k: getattr(spec, k) for k in ("ge", "gt", "le", "lt")
              if getattr(spec, k) is not None}
    if bounds:
        names = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                 "lt": "exclusiveMaximum"}
        extra["x-training-range"] = {names[k]: v for k, v in bounds.items()}
        symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        said.append("training range " + " and ".join(f"{symbols[k]} {v}"
                                                      for k, v in bounds.items()))
    if said:
        extra["description"] = ("Schema checks: " + "; ".join(said) + ". Other values are "
                                "answered and flagged (ML_API_INPUT_POLICY=accept).")
    return extra


def _annotation(spec: FeatureSpec, derived: tuple[float, float] | None = None,
                policy: str = "reject"):
    """The pydantic type and Field of one feature."""
    shown: dict[str, Any] = {}
    if policy == "accept":
        shown = _known(spec)
        spec = _policy_free(spec)
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
        whole = [BeforeValidator(_whole_number)] if spec.kind == "integer" else []
        python_type = Annotated[(python_type, *whole, Field(**constraints),
                                 *_range_check(spec, derived))]
        constraints = {}
    if spec.nullable:
        python_type = python_type | None
        extra.insert(0, _NAN_IS_NULL)  # runs before the type is checked
    description = shown.pop("description", None)
    field = Field(alias=spec.name, title=spec.name, description=description,
                  json_schema_extra=shown or None, **constraints)
    default = None if spec.nullable else ...
    return Annotated[(python_type, field, *extra)], default


@dataclass(frozen=True)
class FlagCheck:
    """One feature the accept policy checks: its values outside `allowed` are unseen
    categories, outside the bounds out of range (precomputed at model load)."""

    index: int
    name: str
    allowed: frozenset | None
    ge: float | None
    gt: float | None
    le: float | None
    lt: float | None
    nullable: bool = True

    @property
    def bounded(self) -> bool:
        return not (self.ge is None and self.gt is None and self.le is None
                    and self.lt is None)

    def outside(self, value) -> bool:
        return ((self.ge is not None and value < self.ge)
                or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)
                or (self.lt is not None and value >= self.lt))


def flag_checks(specs: list[FeatureSpec] | tuple[FeatureSpec, ...]) -> tuple[FlagCheck, ...]:
    """The features with an isin or range check, for `RequestModels.input_flags`."""
    checks = []
    for i, spec in enumerate(specs):
        check = FlagCheck(i, spec.name,
                          frozenset(spec.allowed) if spec.allowed is not None else None,
                          spec.ge, spec.gt, spec.le, spec.lt, spec.nullable)
        if check.allowed is not None or (check.bounded and spec.kind in ("number",
                                                                         "integer")):
            checks.append(check)
    return tuple(checks)


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
    policy: str = "reject"
    checks: tuple[FlagCheck, ...] = ()  # what input_flags checks (accept policy only)

    def input_flags(self, rows: list[list]) -> tuple[list[str], dict[tuple[str, str], int]]:
        """Per row, "feature:reason;..." for each value the accept policy answered
        although the schema's checks exclude it ("" for a clean row), and the count per
        (feature, reason). Cheap on clean batches: one transposition, then per checked
        feature a set or min/max over its column (C loops); rows are walked only for a
        feature that has a flagged value. ([], {}) when nothing was flagged."""
        if not self.checks or not rows:
            return [], {}
        columns = list(zip(*rows, strict=True))
        flagged: dict[int, list[str]] = {}
        counts: dict[tuple[str, str], int] = {}
        for check in self.checks:
            column = columns[check.index]
            bad: list[int] = []
            reason = UNSEEN_CATEGORY
            if check.allowed is not None:
                seen = set(column)
                seen.discard(None)
                if not seen <= check.allowed:
                    bad = [i for i, v in enumerate(column)
                           if v is not None and v not in check.allowed]
            if not bad and check.bounded:
                values = (column if not check.nullable or None not in column
                          else [v for v in column if v is not None])
                if values and (check.outside(min(values)) or check.outside(max(values))):
                    reason = OUT_OF_RANGE
                    bad = [i for i, v in enumerate(column)
                           if v is not None and check.outside(v)]
            if bad:
                counts[(check.name, reason)] = len(bad)
                flag = f"{check.name}:{reason}"
                for i in bad:
                    flagged.setdefault(i, []).append(flag)
        if not flagged:
            return [], {}
        return [";".join(flagged[i]) if i in flagged else "" for i in range(len(rows))], counts

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
                         example: dict | None = None, pipeline=None,
                         policy: str = "reject",
                         ignored: dict[str, str] | None = None) -> RequestModels:
    """PredictRequest (one record, extra fields forbidden), PredictBatchRequest (`records`,
    1..max_batch of them) and a list validator that ignores unknown columns (the MLflow
    scoring protocol ignores them too). With the fitted `pipeline`, number ranges are
    narrowed to what its preprocessing keeps within float32 (`derived_bounds`).
    `policy`: "reject" enforces the schema's isin and range checks, "accept" answers
    such values and flags them (the service passes ML_API_INPUT_POLICY). `ignored`: the
    schema's non-feature columns (name -> role): a record may carry them (clients often
    send the whole training row, identifier included); they are accepted and dropped."""
    if policy not in INPUT_POLICIES:
        raise ValueError(f"input policy {policy!r}: use one of {', '.join(INPUT_POLICIES)}")
    keys = tuple(f"f{i}" for i in range(len(specs)))
    derived = derived_bounds(pipeline, specs, example) if pipeline is not None else {}
    fields = {key: _annotation(spec, derived.get(spec.name), policy)
              for key, spec in zip(keys, specs, strict=False)}
    common = ConfigDict(strict=True, populate_by_name=False, regex_engine="python-re")
    examples: JsonDict | None = {"examples": [example]} if example else None
    names = {spec.name for spec in specs}
    passengers: dict[str, Any] = {
        f"x{i}": (Any, Field(default=None, alias=name, title=name, description=(
            f"not a model input ({role}): accepted and ignored")))
        for i, (name, role) in enumerate((ignored or {}).items()) if name not in names}
    record = create_model(RECORD_MODEL, __config__=ConfigDict(
        extra="forbid", title=RECORD_MODEL, json_schema_extra=examples, **common),
        **fields, **passengers)
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
                         _getter=itemgetter(*keys), lenient_record=lenient, policy=policy,
                         checks=flag_checks(specs) if policy == "accept" else ())


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
