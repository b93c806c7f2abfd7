"""An infer request's body to rows (`decode_request`: the tensors checked and each
feature's column validated as /predict validates it, serving/protocols/v2/columns.py),
and a prediction to the answer's output tensors (`response_outputs`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson

from serving.model.feature_specs import FeatureSpec
from serving.model.input_limits import excerpt
from serving.model.served import ServedModel
from serving.protocols.v2.columns import (
    ColumnInvalid,
    FeatureColumn,
    check_data,
    check_shape,
    column_plan,
    flatten,
    number_rows,
    validate_column,
)
from serving.protocols.v2.errors import V2Error, quote
from serving.protocols.v2.types import (
    DATATYPES,
    FITS,
    INTERVAL,
    JSON_NAMES,
    LABEL,
    NUMERIC,
    PREDICTION,
    PROBABILITIES,
    SEND_AS,
)

_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


@dataclass(frozen=True)
class Decoded:
    """A validated infer request: rows in feature order, the outputs to answer."""

    rows: list[list]
    outputs: tuple[str, ...]
    id: str | None


_NON_FINITE_TOKENS = (b"NaN", b"Infinity")
# A surrogate escape (\ud800-\udfff) or UTF-8-encoded surrogate, which Python's json
# decodes (pairs into one character; lone ones into a str nothing can encode).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _load(body: bytes) -> Any:
    """The parsed body. orjson parses; Python's json only when orjson refused a body
    holding NaN/Infinity (not JSON, but tritonclient writes NaN for missing values) or
    an integer beyond 64 bits (which /predict's parser takes, e.g. for a number)."""
    error: Exception
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    if "64-bit" in str(error) or any(token in body for token in _NON_FINITE_TOKENS):
        try:
            payload = json.loads(body)
            if _SURROGATE.search(body):  # lone ones are refused, as orjson refuses them
                json.dumps(payload, ensure_ascii=False).encode()
            return payload
        except RecursionError:
            error = ValueError("nested too deeply")
        except ValueError as exc:  # UnicodeError included
            error = exc
    raise V2Error(f"the body is not valid JSON: {excerpt(error)}")


def _where(what: str, keys: Any) -> str:
    unknown = sorted(excerpt(str(k), 40) for k in keys)
    return f"{what} has unknown field(s) {', '.join(map(quote, unknown[:5]))}"


def _parameters(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(f"{what} 'parameters' must be an object, not "
                      f"{JSON_NAMES.get(type(value), type(value).__name__)}")
    return value


def _check_input_parameters(parameters: dict, label: str) -> None:
    if "binary_data_size" in parameters:
        raise V2Error(f"{label} uses the binary tensor data extension, which this service "
                      "does not support: send the data as JSON (tritonclient: "
                      "set_data_from_numpy(..., binary_data=False))")
    if any(str(k).startswith("shared_memory") for k in parameters):
        raise V2Error(f"{label} names a shared-memory region; this service does not "
                      "support shared memory: send the data in the body")


def all_numeric(specs: Sequence[FeatureSpec]) -> bool:
    return bool(specs) and all(spec.kind in ("number", "integer") for spec in specs)


def _outputs(raw: Any, model: ServedModel) -> tuple[str, ...]:
    names = ((PREDICTION, INTERVAL) if model.interval else (PREDICTION,)) \
        if model.is_regression else (LABEL, PROBABILITIES)
    if raw is None:
        return names
    if not isinstance(raw, list) or not raw:
        raise V2Error("'outputs' must be a non-empty array of {\"name\": ...} objects")
    chosen: list[str] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2Error("every requested output must be an object with a 'name'")
        if set(item) - _OUTPUT_KEYS:
            raise V2Error(_where(f"requested output {quote(item['name'])}",
                                 set(item) - _OUTPUT_KEYS))
        name = item["name"]
        if "classification" in _parameters(item.get("parameters"), "an output's"):
            raise V2Error("the classification extension is not supported: request "
                          f"{quote(PROBABILITIES)} and rank the classes yourself")
        if name not in names:
            raise V2Error(f"unknown output {quote(name)}: this model answers "
                          + " and ".join(map(quote, names)))
        if name in chosen:
            raise V2Error(f"output {quote(name)} is requested twice")
        chosen.append(name)
    return tuple(chosen)


def decode_request(body: bytes, model: ServedModel, max_rows: int) -> Decoded:
    """Validate an infer request body against `model`: rows (feature order) as /predict
    would validate them, the outputs to answer, the request's id. V2Error otherwise."""
    payload = _load(body)
    if not isinstance(payload, dict):
        raise V2Error("the body must be a JSON object with 'inputs'")
    if set(payload) - _REQUEST_KEYS:
        raise V2Error(_where("the request", set(payload) - _REQUEST_KEYS))
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error("'id' must be a string")
    if "classification" in _parameters(payload.get("parameters"), "the request's"):
        raise V2Error("the classification extension is not supported")
    outputs = _outputs(payload.get("outputs"), model)
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("'inputs' must be a non-empty array of tensors")
    tensors = []
    seen: set[str] = set()
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise V2Error(f"input {i} must be an object with a string 'name'")
        name = tensor["name"]
        label = f"input {quote(name)}"
        if name in seen:
            raise V2Error(f"{label} appears more than once")
        seen.add(name)
        if set(tensor) - _INPUT_KEYS:
            raise V2Error(_where(label, set(tensor) - _INPUT_KEYS))
        _check_input_parameters(_parameters(tensor.get("parameters"), f"{label}'s"), label)
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise V2Error(f"{label} has unknown datatype {quote(datatype)}: use one of "
                          f"{', '.join(DATATYPES)}")
        shape = check_shape(tensor.get("shape"), label)
        if shape[0] > max_rows:
            raise V2Error(f"{label} has shape {shape}: {shape[0]} rows exceed the limit of "
                          f"{max_rows} rows per request (ML_API_MAX_BATCH); split the input")
        if "data" not in tensor:
            raise V2Error(f"{label} has no 'data'")
        tensors.append((name, label, datatype, shape, tensor["data"]))
    plan = column_plan(model.requests)
    by_name = {spec.name: i for i, spec in enumerate(model.features)}
    ignored = getattr(model, "excluded_columns", None) or {}
    if len(tensors) == 1 and tensors[0][0] not in by_name and tensors[0][0] not in ignored:
        rows = _single_tensor(tensors[0], model, plan)
    else:
        rows = _feature_tensors(tensors, model, plan, by_name, ignored)
    return Decoded(rows, outputs, request_id)


def _rows(columns: list[list]) -> list[list]:
    if not columns or not columns[0]:
        raise V2Error("the request holds no rows")
    return list(map(list, zip(*columns, strict=True)))


def _single_tensor(tensor: tuple, model: ServedModel, plan: tuple[FeatureColumn, ...]
                   ) -> list[list]:
    """One numeric tensor [n, n_features] in feature order (all-numeric models)."""
    name, label, datatype, shape, data = tensor
    specs = model.features
    k = len(specs)
    if not all_numeric(specs):
        raise V2Error(f"unknown input {quote(name)}: this model takes one input per "
                      f"feature ({_names(specs)}); a single [n, {k}] tensor is only for "
                      "models whose features are all numbers")
    if len(shape) != 2 or shape[1] != k:
        raise V2Error(f"{label} has shape {shape}, but a single input must be [n, {k}]: "
                      f"one column per feature, in feature order ({_names(specs)}); or "
                      "send one input per feature, named by it")
    if datatype not in NUMERIC:
        raise V2Error(f"{label} has datatype {datatype}: a single tensor must be numeric "
                      "(FP64, FP32, or an INT datatype)")
    flat = flatten(data, shape, label)
    types = set(map(type, flat))
    columns = [flat[j::k] for j in range(k)]
    rows = number_rows(columns, [types] * k, [datatype] * k, plan)
    if rows is not None:
        return rows
    check_data(flat, types, datatype, label, model.feature_names)
    checked = []
    for j, feature in enumerate(plan):
        try:
            checked.append(validate_column(columns[j], feature))
        except ColumnInvalid as exc:
            raise V2Error(f"{label} column {j} (feature {quote(feature.spec.name)}) "
                          f"{exc}") from None
    return _rows(checked)


def _names(specs: Sequence[FeatureSpec], limit: int = 8) -> str:
    shown = ", ".join(quote(s.name) for s in specs[:limit])
    return shown + (f" and {len(specs) - limit} more" if len(specs) > limit else "")


def _feature_tensors(tensors: list[tuple], model: ServedModel,
                     plan: tuple[FeatureColumn, ...], by_name: dict[str, int],
                     ignored: dict[str, str]) -> list[list]:
    """One tensor per feature ([n] or [n, 1]); nullable features may be left out (all
    missing), as /predict lets them be; the schema's non-feature columns (identifiers,
    ...) are accepted and ignored, as /predict ignores them."""
    unknown = [t[0] for t in tensors if t[0] not in by_name and t[0] not in ignored]
    if unknown:
        raise V2Error(f"unknown input {quote(unknown[0])}: this model's inputs are its "
                      f"features ({_names(model.features)})"
                      + (f", and {len(unknown) - 1} more unknown" if len(unknown) > 1
                         else ""))
    given = {t[0] for t in tensors}
    missing = [s.name for s in model.features if s.name not in given and not s.nullable]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise V2Error(f"input {quote(missing[0])} is missing{more}: every feature that is "
                      "not nullable needs an input")
    rows, first = tensors[0][3][0], tensors[0][1]
    for name, label, datatype, shape, _ in tensors:  # no data is read before all agree
        if len(shape) == 2 and shape[1] != 1 or len(shape) > 2:
            raise V2Error(f"{label} has shape {shape}: an input per feature is [n] or "
                          "[n, 1]")
        if shape[0] != rows:
            raise V2Error(f"{label} has {shape[0]} rows but {first} has {rows}: every "
                          "input must have the same number of rows")
        kind = plan[by_name[name]].spec if name in by_name else None
        if kind is not None and datatype not in FITS[kind.kind]:
            raise V2Error(f"{label} has datatype {datatype}, which does not fit the "
                          f"feature (a {kind.kind}{', nullable' if kind.nullable else ''}"
                          f"): send {SEND_AS[kind.kind]}")
    # Per feature: (label, datatype, values); a nullable feature left out: all missing.
    found: list[tuple[str, str, list]] = [("", "FP64", [None] * rows)] * len(plan)
    for name, label, datatype, shape, data in tensors:
        values = flatten(data, shape, label)
        if name in by_name:  # else a schema column that is no model input: ignored
            found[by_name[name]] = (label, datatype, values)
    columns = [values for _, _, values in found]
    types = [set(map(type, values)) for values in columns]
    fast = number_rows(columns, types, [datatype for _, datatype, _ in found], plan)
    if fast is not None:
        return fast
    checked = []
    for (label, datatype, values), column_types, feature in zip(found, types, plan,
                                                                 strict=True):
        if label:
            check_data(values, column_types, datatype, label)
        try:
            checked.append(validate_column(values, feature, column_types))
        except ColumnInvalid as exc:
            raise V2Error(f"{label or quote(feature.spec.name)} {exc}") from None
    return _rows(checked)


def response_outputs(model: ServedModel, names: tuple[str, ...], n: int, answer: tuple
                     ) -> list[dict]:
    outputs = []
    if model.is_regression:
        values, bounds = answer
        for name in names:
            if name == PREDICTION:
                outputs.append({"name": PREDICTION, "datatype": "FP64", "shape": [n],
                                "data": values})
            else:
                outputs.append({"name": INTERVAL, "datatype": "FP64", "shape": [n, 2],
                                "data": list(chain.from_iterable(
                                    (b["lower"], b["upper"]) for b in bounds or ())),
                                "parameters": {"columns": ["lower", "upper"],
                                               "level": 0.95}})
        return outputs
    labels, probabilities = answer
    k = len(model.labels)
    for name in names:
        if name == LABEL:
            outputs.append({"name": LABEL, "datatype": "BYTES", "shape": [n],
                            "data": labels})
        else:
            pick = itemgetter(*model.labels)
            flat = (list(chain.from_iterable(map(pick, probabilities))) if k > 1
                    else list(map(pick, probabilities)))
            outputs.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [n, k],
                            "data": flat, "parameters": {"classes": list(model.labels)}})
    return outputs
