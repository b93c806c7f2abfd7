"""Request models generated from the model's Pandera feature schema (one source of truth).

Per served model version (`build_request_models`): PredictRequest (one record),
PredictBatchRequest (`records`) and InvocationsRecord (a row of /invocations, unknown
columns ignored), built with `create_model` from the features (serving/model/
feature_specs.py), one field each (serving/model/feature_fields.py: types, the
schema's checks under the input policy, the ranges the model holds). Under the
"accept" policy, values the schema's isin and range checks exclude are answered and
flagged (`RequestModels.input_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from types import GenericAlias
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic.config import JsonDict
from pydantic.json_schema import models_json_schema

from serving.model.feature_fields import feature_field
from serving.model.feature_specs import FeatureSpec
from serving.model.input_limits import derived_bounds

RECORD_MODEL = "PredictRequest"
INVOCATIONS_RECORD_MODEL = "InvocationsRecord"
BATCH_MODEL = "PredictBatchRequest"
INPUT_POLICIES = ("accept", "reject")
UNSEEN_CATEGORY, OUT_OF_RANGE = "unseen_category", "out_of_range"


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
    fields = {key: feature_field(spec, derived.get(spec.name), policy)
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
