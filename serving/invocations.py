"""MLflow's scoring protocol for POST /invocations, so MLflow clients switch unchanged.

Accepted like MLflow 3's scoring server: `application/json` with exactly one of
`dataframe_split`, `dataframe_records`, `instances`, `inputs` (plus optional,
ignored `params`), `text/csv`, and `application/vnd.apache.parquet`; charset
must be UTF-8. Columns the model does not know are ignored, as MLflow does.
Rows are then validated by the same generated request model as /predict.
Errors use MLflow's shape, {"error_code": ..., "message": ...}, with status 400
(bad input) or 415 (content type).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import orjson
import pandas as pd
from pydantic import ValidationError

from serving.request_models import FeatureSpec, RequestModels

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_JSON = "application/json"
CONTENT_CSV = "text/csv"
CONTENT_PARQUET = "application/vnd.apache.parquet"


class InvocationError(Exception):
    """A request the protocol refuses; rendered as MLflow renders its errors."""

    def __init__(self, message: str, status: int = 400, error_code: str = "BAD_REQUEST",
                 detail: list | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.detail = detail

    def body(self) -> dict:
        body: dict[str, Any] = {"error_code": self.error_code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body


def parse_rows(body: bytes, content_type: str | None, requests: RequestModels,
               max_rows: int) -> list[list]:
    """Validated feature rows (schema order) from an /invocations body."""
    mime, charset, others = _content_type(content_type)
    if charset != "utf-8":
        raise InvocationError("The scoring server only supports UTF-8", 415,
                              "UNSUPPORTED_MEDIA_TYPE")
    if others:
        raise InvocationError(f"Unrecognized content type parameters: {', '.join(others)}",
                              415, "UNSUPPORTED_MEDIA_TYPE")
    if mime == CONTENT_JSON:
        records = _json_records(body, requests.specs)
    elif mime == CONTENT_CSV:
        records = _csv_records(body, requests.specs)
    elif mime == CONTENT_PARQUET:
        records = _parquet_records(body, requests.specs)
    else:
        raise InvocationError(
            f"This predictor only supports the following content types: "
            f"{[CONTENT_JSON, CONTENT_CSV, CONTENT_PARQUET]}. Got {content_type!r}.",
            415, "UNSUPPORTED_MEDIA_TYPE")
    if not records:
        raise InvocationError("the input holds no rows")
    if len(records) > max_rows:
        raise InvocationError(f"{len(records)} rows exceed the limit of {max_rows} rows per "
                              "request (ML_API_MAX_BATCH); split the input")
    try:
        validated = requests.lenient_rows.validate_python(records)
    except ValidationError as exc:
        raise InvocationError(validation_message(exc, "row"),
                              detail=validation_detail(exc)) from None
    return [requests.row_of(record) for record in validated]


def _content_type(header: str | None) -> tuple[str, str, list[str]]:
    parts = [p.strip() for p in (header or CONTENT_JSON).split(";")]
    params = dict(p.partition("=")[::2] for p in parts[1:] if p)
    charset = params.pop("charset", "utf-8").strip('"').lower()
    return parts[0].lower(), charset, sorted(params)


def _load_json(body: bytes) -> tuple[Any, bool]:
    """The parsed body, and whether it held NaN/Infinity (not JSON, but Python's json
    and MLflow's client write them for missing values)."""
    try:
        return orjson.loads(body), False
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body), True
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvocationError(f"Ensure that input is a valid JSON formatted string. "
                              f"Error: {exc}") from None


def _json_records(body: bytes, specs: tuple[FeatureSpec, ...]) -> list[dict]:
    payload, non_finite = _load_json(body)
    records = _payload_records(payload)
    nullable = {spec.name for spec in specs if spec.nullable}
    if non_finite and nullable:  # NaN is how pandas spells "missing": null where allowed
        records = [{k: None if k in nullable and _is_nan(v) else v for k, v in r.items()}
                   for r in records]
    return records


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _payload_records(payload) -> list[dict]:
    if not isinstance(payload, dict):
        raise InvocationError(f"The input must be a JSON dictionary with exactly one of the "
                              f"input fields {set(FORMATS)}. Received a "
                              f"{type(payload).__name__}.")
    found = [key for key in FORMATS if key in payload]
    if len(found) != 1:
        raise InvocationError(f"The input must be a JSON dictionary with exactly one of the "
                              f"input fields {set(FORMATS)}. Received dictionary with input "
                              f"fields: {list(payload)}.")
    key = found[0]
    data = payload[key]
    if key == "dataframe_split":
        return _split_records(data)
    if key == "dataframe_records":
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InvocationError("Dataframe records format must be a list of records "
                                  "(objects mapping column names to values).")
        return data
    return _tensor_records(key, data)


def _split_records(data) -> list[dict]:
    if not isinstance(data, dict):
        raise InvocationError("Dataframe split format must be a dictionary.")
    extra = set(data) - {"columns", "data", "index"}
    if "data" not in data or extra:
        raise InvocationError("Dataframe split format must have 'data' field and optionally "
                              f"'columns' and 'index' fields. Got {sorted(data)}.")
    columns, rows = data.get("columns"), data["data"]
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise InvocationError("dataframe_split needs 'columns' (the feature names) and "
                              "'data' (a list of rows)")
    width = len(columns)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise InvocationError(f"dataframe_split row {i} has "
                                  f"{len(row) if isinstance(row, list) else 'no'} values; "
                                  f"'columns' names {width}")
    return [dict(zip(columns, row, strict=False)) for row in rows]


def _tensor_records(key: str, data) -> list[dict]:
    """`instances`/`inputs`: a list of records, columns as lists, or one record."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, dict) and data:
        values = list(data.values())
        if all(isinstance(v, list) for v in values):
            lengths = {len(v) for v in values}
            if len(lengths) != 1:
                raise InvocationError(f"'{key}' columns have different lengths: "
                                      f"{sorted(lengths)}")
            names = list(data)
            return [dict(zip(names, row, strict=False)) for row in zip(*values, strict=False)]
        if not any(isinstance(v, (list, dict)) for v in values):
            return [data]
    raise InvocationError(f"'{key}' must be a list of records, an object of equally long "
                          "column lists, or one record; this model takes named features")


def _csv_value(text: str, spec: FeatureSpec):
    if text == "":
        return None
    if spec.kind == "number":
        return float(text)
    if spec.kind == "integer":
        return int(text)
    if spec.kind == "boolean":
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    return text


def _csv_records(body: bytes, specs: tuple[FeatureSpec, ...]) -> list[dict]:
    try:
        frame = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False,
                            encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise InvocationError(f"Failed to parse input as a Pandas DataFrame. Ensure that the "
                              f"input is a valid CSV-formatted Pandas DataFrame. Error: {exc}"
                              ) from None
    by_name = {spec.name: spec for spec in specs}
    columns = [c for c in frame.columns if c in by_name]
    records: list[dict] = [{} for _ in range(len(frame))]
    problems = []
    for column in columns:
        spec = by_name[column]
        for i, text in enumerate(frame[column].tolist()):
            try:
                records[i][column] = _csv_value(text, spec)
            except ValueError:
                problems.append({"loc": [i, column], "type": f"{spec.kind}_parsing",
                                 "msg": f"{text!r} is not a valid {spec.kind}"})
    if problems:
        raise InvocationError(_summary(problems, "row"), detail=problems)
    return records


def _parquet_records(body: bytes, specs: tuple[FeatureSpec, ...]) -> list[dict]:
    try:
        frame = pd.read_parquet(io.BytesIO(body))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise InvocationError(f"Failed to parse input as a Pandas DataFrame. Ensure that the "
                              f"input is a valid Parquet file. Error: {exc}") from None
    nullable = {spec.name for spec in specs if spec.nullable}
    known = {spec.name for spec in specs}
    columns = [c for c in frame.columns if c in known]
    records: list[dict] = [{} for _ in range(len(frame))]
    for column in columns:
        values = frame[column].tolist()
        if column in nullable:  # pandas writes a missing value as NaN
            values = [None if _is_nan(v) else v for v in values]
        for record, value in zip(records, values, strict=True):
            record[column] = value
    return records


def validation_detail(exc: ValidationError) -> list[dict]:
    """Pydantic errors as FastAPI shows them (loc, msg, type), without echoing input."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)]


def _summary(detail: list[dict], index_word: str, limit: int = 5) -> str:
    parts = []
    for item in detail[:limit]:
        loc = list(item["loc"])
        where = ""
        if loc and isinstance(loc[0], int):
            where = f"{index_word} {loc.pop(0)}: "
        name = ".".join(str(p) for p in loc) or "body"
        parts.append(f"{where}{name!s}: {item['msg']}")
    more = f" (and {len(detail) - limit} more)" if len(detail) > limit else ""
    return "invalid input: " + "; ".join(parts) + more


def validation_message(exc: ValidationError, index_word: str = "row") -> str:
    """One line naming each failing field and its problem."""
    return _summary(validation_detail(exc), index_word)
