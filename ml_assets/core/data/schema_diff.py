"""What a new model's feature schema changes for the API's clients: pure, no MLflow.

The prediction API builds its request model from the served model's feature schema
(extra fields forbidden, non-nullable features required, types strict, `isin` and
bounds enforced), so replacing the champion with a model whose schema differs changes
what clients may send. `diff_schemas` compares the *features* of two schemas (columns
whose role is not "feature", e.g. identifiers, are not inputs and are ignored) and says,
change by change, whether existing clients break:

breaking (existing clients get 422)
    a feature removed (clients still send it), a required (non-nullable) feature
    added, a type changed (number → integer, number → string, ...), nullable →
    non-nullable, an allowed `isin` set narrowed (or added), a numeric bound or a
    string length narrowed (or added), a string pattern added or changed;
compatible
    a nullable feature added, integer → number, non-nullable → nullable, a set
    widened (or dropped), a bound loosened (or dropped), a pattern dropped, a dtype
    change within the same JSON type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pandera.pandas as pa

from ml_assets.core.artifacts.loading import FEATURE_SCHEMA_KEY
from ml_assets.core.data.schemas import column_role, feature_columns, schema_from_yaml


@dataclass(frozen=True)
class SchemaChange:
    """One change to one feature, and what it means for clients that call the API."""

    feature: str
    kind: str  # removed, added, type, nullable, allowed_values, bound, length, pattern
    breaking: bool
    what: str  # "feature 'year' removed"
    effect: str  # "clients that send it get 422"

    @property
    def sentence(self) -> str:
        """"feature 'year' removed: clients that send it get 422"."""
        return f"{self.what}: {self.effect}"

    @property
    def summary(self) -> str:
        """"feature 'year' removed (clients that send it get 422)"."""
        return f"{self.what} ({self.effect})"


@dataclass(frozen=True)
class SchemaDiff:
    """The feature changes from the champion's schema to the challenger's.

    `known` is False when one side carries no readable schema: then nothing is judged
    (`breaking` False) and `note` says why."""

    changes: list[SchemaChange] = field(default_factory=list)
    breaking: bool = False
    known: bool = True
    note: str = ""

    @classmethod
    def unknown(cls, note: str) -> SchemaDiff:
        return cls(changes=[], breaking=False, known=False, note=note)

    @property
    def breaking_changes(self) -> list[SchemaChange]:
        return [c for c in self.changes if c.breaking]

    @property
    def compatible_changes(self) -> list[SchemaChange]:
        return [c for c in self.changes if not c.breaking]

    @property
    def sentences(self) -> list[str]:
        return [c.sentence for c in self.changes]

    @staticmethod
    def describe(changes: list[SchemaChange]) -> str:
        """The changes as one clause: "a (why); b (why)"."""
        return "; ".join(c.summary for c in changes)


def api_type(dtype: Any) -> str:
    """The JSON type the API gives a column of `dtype` (as serving's request model does):
    float → number, int/uint → integer, bool → boolean, anything else → string."""
    name = str(dtype).lower()
    if name.startswith("float"):
        return "number"
    if name.startswith(("int", "uint")):
        return "integer"
    if name in ("bool", "boolean"):
        return "boolean"
    return "string"


@dataclass(frozen=True)
class _Limits:
    """What a column's checks allow: bounds as (value, inclusive), isin set, pattern,
    string lengths."""

    low: tuple[float, bool] | None = None
    high: tuple[float, bool] | None = None
    allowed: tuple | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None


def _tighter_low(a: tuple[float, bool] | None, b: tuple[float, bool] | None
                 ) -> tuple[float, bool] | None:
    """The tighter of two lower bounds."""
    if a is None or b is None:
        return a or b
    if a[0] != b[0]:
        return a if a[0] > b[0] else b
    return a if not a[1] else b  # same value: exclusive is tighter


def _tighter_high(a: tuple[float, bool] | None, b: tuple[float, bool] | None
                  ) -> tuple[float, bool] | None:
    if a is None or b is None:
        return a or b
    if a[0] != b[0]:
        return a if a[0] < b[0] else b
    return a if not a[1] else b


def _limits(column: pa.Column) -> _Limits:
    low = high = None
    allowed = pattern = None
    min_length = max_length = None
    for check in column.checks:
        stats = check.statistics or {}
        name = check.name
        lo, hi = stats.get("min_value"), stats.get("max_value")
        if name == "greater_than_or_equal_to" and lo is not None:
            low = _tighter_low(low, (float(lo), True))
        elif name == "greater_than" and lo is not None:
            low = _tighter_low(low, (float(lo), False))
        elif name == "less_than_or_equal_to" and hi is not None:
            high = _tighter_high(high, (float(hi), True))
        elif name == "less_than" and hi is not None:
            high = _tighter_high(high, (float(hi), False))
        elif name == "in_range":
            if lo is not None:
                low = _tighter_low(low, (float(lo), bool(stats.get("include_min", True))))
            if hi is not None:
                high = _tighter_high(high, (float(hi), bool(stats.get("include_max", True))))
        elif name == "isin" and stats.get("allowed_values") is not None:
            values = tuple(stats["allowed_values"])
            allowed = values if allowed is None else tuple(v for v in allowed if v in values)
        elif name == "str_matches" and stats.get("pattern") is not None:
            pattern = str(stats["pattern"])
        elif name == "str_length":
            exact = stats.get("exact_value")
            min_length = exact if exact is not None else lo
            max_length = exact if exact is not None else hi
    return _Limits(low, high, allowed, pattern, min_length, max_length)


def _bound_text(bound: tuple[float, bool] | None, side: str) -> str:
    if bound is None:
        return "none"
    value = int(bound[0]) if float(bound[0]).is_integer() else bound[0]
    if side == "lower":
        return f"{'>=' if bound[1] else '>'} {value}"
    return f"{'<=' if bound[1] else '<'} {value}"


def _bound_change(feature: str, side: str, old: tuple[float, bool] | None,
                  new: tuple[float, bool] | None) -> SchemaChange | None:
    if old == new:
        return None
    pick = _tighter_low if side == "lower" else _tighter_high
    narrowed = new is not None and (old is None or pick(old, new) == new)
    what = (f"feature {feature!r} {side} bound {'narrowed' if narrowed else 'loosened'} from "
            f"{_bound_text(old, side)} to {_bound_text(new, side)}")
    effect = ("clients that send values outside the new bound get 422 under "
              "ML_API_INPUT_POLICY=reject, and their rows are flagged out_of_range under "
              "accept" if narrowed
              else "values accepted before are still accepted")
    return SchemaChange(feature, "bound", narrowed, what, effect)


def _length_change(feature: str, side: str, old: int | None, new: int | None
                   ) -> SchemaChange | None:
    if old == new:
        return None
    if side == "minimum":
        narrowed = new is not None and (old is None or new > old)
    else:
        narrowed = new is not None and (old is None or new < old)
    what = (f"feature {feature!r} {side} length {'narrowed' if narrowed else 'loosened'} "
            f"from {old if old is not None else 'none'} to "
            f"{new if new is not None else 'none'}")
    effect = ("clients that send strings of the old lengths may get 422" if narrowed
              else "values accepted before are still accepted")
    return SchemaChange(feature, "length", narrowed, what, effect)


def _shown(values) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def _column_changes(feature: str, old: pa.Column, new: pa.Column) -> list[SchemaChange]:
    changes: list[SchemaChange] = []
    old_type, new_type = api_type(old.dtype), api_type(new.dtype)
    if old_type != new_type:
        compatible = (old_type, new_type) == ("integer", "number")
        changes.append(SchemaChange(
            feature, "type", not compatible,
            f"feature {feature!r} type changed from {old_type} to {new_type}",
            "clients that send integers are still answered" if compatible
            else f"clients that send a {old_type} get 422"))
    elif str(old.dtype) != str(new.dtype):
        changes.append(SchemaChange(
            feature, "type", False,
            f"feature {feature!r} dtype changed from {old.dtype} to {new.dtype}",
            f"still a JSON {new_type}, clients are unaffected"))
    if bool(old.nullable) and not bool(new.nullable):
        changes.append(SchemaChange(
            feature, "nullable", True, f"feature {feature!r} is no longer nullable",
            "clients that send null or leave it out get 422"))
    elif not bool(old.nullable) and bool(new.nullable):
        changes.append(SchemaChange(
            feature, "nullable", False, f"feature {feature!r} became nullable",
            "clients may now send null or leave it out"))
    before, after = _limits(old), _limits(new)
    if before.allowed != after.allowed:
        if after.allowed is None:
            changes.append(SchemaChange(
                feature, "allowed_values", False,
                f"feature {feature!r} no longer restricted to {_shown(before.allowed)}",
                "values accepted before are still accepted"))
        elif before.allowed is None:
            changes.append(SchemaChange(
                feature, "allowed_values", True,
                f"feature {feature!r} now restricted to {_shown(after.allowed)}",
                "clients that send other values get 422 under ML_API_INPUT_POLICY=reject, "
                "and their rows are flagged unseen_category under accept"))
        else:
            dropped = [v for v in before.allowed if v not in set(after.allowed)]
            added = [v for v in after.allowed if v not in set(before.allowed)]
            if dropped:
                changes.append(SchemaChange(
                    feature, "allowed_values", True,
                    f"feature {feature!r} no longer allows {_shown(dropped)}",
                    "clients that send those values get 422 under "
                    "ML_API_INPUT_POLICY=reject, and their rows are flagged "
                    "unseen_category under accept"))
            if added:
                changes.append(SchemaChange(
                    feature, "allowed_values", False,
                    f"feature {feature!r} now also allows {_shown(added)}",
                    "values accepted before are still accepted"))
    for side, old_bound, new_bound in (("lower", before.low, after.low),
                                       ("upper", before.high, after.high)):
        change = _bound_change(feature, side, old_bound, new_bound)
        if change is not None:
            changes.append(change)
    for side, old_length, new_length in (("minimum", before.min_length, after.min_length),
                                         ("maximum", before.max_length, after.max_length)):
        change = _length_change(feature, side, old_length, new_length)
        if change is not None:
            changes.append(change)
    if before.pattern != after.pattern:
        if after.pattern is None:
            changes.append(SchemaChange(
                feature, "pattern", False,
                f"feature {feature!r} no longer has to match {before.pattern!r}",
                "values accepted before are still accepted"))
        else:
            was = f" (was {before.pattern!r})" if before.pattern is not None else ""
            changes.append(SchemaChange(
                feature, "pattern", True,
                f"feature {feature!r} must now match {after.pattern!r}{was}",
                "clients whose values do not match get 422"))
    return changes


def diff_schemas(champion: pa.DataFrameSchema, challenger: pa.DataFrameSchema,
                 target: str, champion_target: str | None = None) -> SchemaDiff:
    """The changes to the API's inputs when `challenger` replaces `champion`.

    Only feature columns count (`feature_columns`: the target and columns with an
    excluded role are not inputs); `champion_target` is the champion's target when it
    differs from `target`. Changes come in champion schema order, then added features."""
    old_features = feature_columns(champion, champion_target or target)
    new_features = feature_columns(challenger, target)
    changes: list[SchemaChange] = []
    for name in old_features:
        if name not in new_features:
            column = challenger.columns.get(name)
            role = None if column is None or name == target else column_role(column)
            what = (f"feature {name!r} removed" if role is None
                    else f"feature {name!r} removed (now a {role} column, not an input)")
            changes.append(SchemaChange(name, "removed", True, what,
                                        "clients that send it get 422"))
            continue
        changes.extend(_column_changes(name, champion.columns[name],
                                       challenger.columns[name]))
    for name in new_features:
        if name in old_features:
            continue
        column = challenger.columns[name]
        if bool(column.nullable):
            changes.append(SchemaChange(name, "added", False,
                                        f"feature {name!r} added as optional (nullable)",
                                        "clients that do not send it are still answered"))
        else:
            changes.append(SchemaChange(name, "added", True,
                                        f"feature {name!r} added as required",
                                        "clients that do not send it get 422"))
    return SchemaDiff(changes=changes, breaking=any(c.breaking for c in changes))


@dataclass(frozen=True)
class ModelSchema:
    """A logged model's feature schema and target, read from its MLmodel metadata;
    `schema` is None (and `problem` says why) when it carries no readable schema."""

    schema: pa.DataFrameSchema | None
    target: str
    problem: str | None = None
    task: str | None = None  # binary, multiclass, regression; None when not recorded


def model_schema(mlmodel: dict, source: str) -> ModelSchema:
    """The feature schema in a parsed MLmodel document (`read_mlmodel`): text only,
    parsed by `schema_from_yaml` (never a path, never an object). Never raises."""
    metadata = mlmodel.get("metadata") if isinstance(mlmodel, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    target = str(metadata.get("target") or "")
    task = metadata.get("task")
    if task not in ("binary", "multiclass", "regression"):
        task = "multiclass" if metadata.get("classes") else None  # older models
    text = metadata.get(FEATURE_SCHEMA_KEY)
    if text is None:
        return ModelSchema(None, target, f"{source} carries no feature schema", task)
    try:
        return ModelSchema(schema_from_yaml(text), target, task=task)
    except Exception as exc:  # noqa: BLE001 - a broken schema is an unknown one
        return ModelSchema(None, target, f"{source}'s feature schema cannot be read: "
                           f"{str(exc)[:200]}", task)


def _answer(task: str) -> str:
    return "a number" if task == "regression" else "a class label with probabilities"


def task_change(champion: ModelSchema, challenger: ModelSchema) -> SchemaChange | None:
    """A classifier replaced by a regressor or the reverse: every client's answer
    changes shape (`prediction` a number instead of a class, no probabilities)."""
    old, new = champion.task, challenger.task
    if old is None or new is None or (old == "regression") == (new == "regression"):
        return None
    return SchemaChange("prediction", "task", True,
                        f"the model's task changes from {old} to {new}",
                        f"clients get {_answer(new)} instead of {_answer(old)} as "
                        "`prediction`")


def diff_models(champion: ModelSchema, challenger: ModelSchema) -> SchemaDiff:
    """`diff_schemas` of two models' schemas (unknown when either carries none), with a
    change of task (classification <-> regression) first: it always breaks clients."""
    if champion.schema is None or challenger.schema is None:
        problem = champion.problem or challenger.problem or "no feature schema"
        diff = SchemaDiff.unknown(f"{problem}; its inputs are unknown, so the change is "
                                  "not judged breaking")
    else:
        diff = diff_schemas(champion.schema, challenger.schema, challenger.target,
                            champion.target or None)
    change = task_change(champion, challenger)
    if change is None:
        return diff
    return replace(diff, changes=[change, *diff.changes], breaking=True)
