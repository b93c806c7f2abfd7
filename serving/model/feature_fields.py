"""One feature as a pydantic field of the generated request models (its type, constraints
and validators; serving/model/request_models.py assembles them into models).

str_matches → pattern and str_length → min/max length are always enforced. The input
policy decides the rest: under "reject", ge/gt/le/lt/in_range → minimum/maximum and
isin → enum, enforced and shown in OpenAPI; under "accept" those values are answered
(and flagged by the request models), and OpenAPI shows them only as a description and
`x-known-values` / `x-training-range`. Under both, every number must be finite and
within what the model holds (float32's range, narrower where the fitted preprocessing
would scale it past that; int64 for integers); values are strict (a string is never
read as a number); a nullable feature takes null or NaN.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from serving.model.feature_specs import FeatureSpec
from serving.model.input_limits import FLOAT32_MAX, INT64_MAX, INT64_MIN

_PYTHON_TYPES = {"number": float, "integer": int, "boolean": bool, "string": str}


def _whole_number(value):
    """3.0 → 3 for an integer feature: pandas holds an integer column with gaps as
    floats, so its clients (to_json, to_dict, MLflow) send whole numbers as 3.0. A
    fraction stays a float and is refused by the strict integer type."""
    if type(value) is float and value.is_integer() and abs(value) < 2.0 ** 63:
        return int(value)
    return value



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


def feature_field(spec: FeatureSpec, derived: tuple[float, float] | None = None,
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

