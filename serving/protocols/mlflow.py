"""MLflow's scoring protocol for POST /invocations, so MLflow clients switch unchanged.

Accepted like MLflow 3's scoring server: `application/json` with exactly one of
`dataframe_split`, `dataframe_records`, `instances`, `inputs` (plus optional,
ignored `params`), `text/csv`, and `application/vnd.apache.parquet`; charset
must be UTF-8. Columns the model does not know are ignored, as MLflow does.
Rows are then validated by the same generated request model as /predict.
Errors use MLflow's shape, {"error_code": ..., "message": ...}, with status 400
(bad input) or 415 (content type). `Invocations` is the format's adapter of the one
prediction handler; the route itself is in serving/protocols/native.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
from functools import partial
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from serving.http.guards import in_parser, off_loop
from serving.http.responses import OrjsonResponse
from serving.model.feature_specs import FeatureSpec
from serving.model.input_limits import InputOverflow, excerpt
from serving.model.request_models import RequestModels
from serving.model.served import ServedModel
from serving.protocols.base import Decoded
from serving.protocols.platform_json import VARIANT_HEADER, overflow_answer, unavailable_answer
from serving.protocols.v2.columns import record_rows
from serving.protocols.validation_errors import (
    error_summary,
    validation_detail,
    validation_message,
)
from serving.service import Answer, Service

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_JSON = "application/json"
CONTENT_CSV = "text/csv"
CONTENT_PARQUET = "application/vnd.apache.parquet"
PARQUET_BATCH_ROWS = 64  # rows decoded at a time while the decoded size is summed


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
    """Validated feature rows (schema order) from an /invocations body. The row cap is
    enforced before the body is materialized: from Parquet metadata, while counting CSV
    rows, and on list lengths right after JSON parsing."""
    mime, charset, others = _content_type(content_type)
    if charset != "utf-8":
        raise InvocationError("The scoring server only supports UTF-8", 415,
                              "UNSUPPORTED_MEDIA_TYPE")
    if others:
        raise InvocationError("Unrecognized content type parameters: "
                              f"{excerpt(', '.join(others))}", 415, "UNSUPPORTED_MEDIA_TYPE")
    if mime == CONTENT_JSON:
        records = _json_records(body, requests.specs, max_rows)
    elif mime == CONTENT_CSV:
        records = _csv_records(body, requests.specs, max_rows)
    elif mime == CONTENT_PARQUET:
        records = _parquet_records(body, requests.specs, max_rows)
    else:
        raise InvocationError(
            f"This predictor only supports the following content types: "
            f"{[CONTENT_JSON, CONTENT_CSV, CONTENT_PARQUET]}. Got "
            f"{excerpt(repr(content_type))}.", 415, "UNSUPPORTED_MEDIA_TYPE")
    if not records:
        raise InvocationError("the input holds no rows")
    _check_rows(len(records), max_rows)
    rows = record_rows(records, requests, max_rows, others=True)  # plainly valid: columns
    if rows is not None:
        return rows
    try:
        validated = requests.lenient_rows.validate_python(records)
    except ValidationError as exc:
        names = frozenset(requests.feature_names)
        raise InvocationError(validation_message(exc, "row", names),
                              detail=validation_detail(exc, features=names)) from None
    return [requests.row_of(record) for record in validated]


def is_parquet(content_type: str | None) -> bool:
    """Whether an /invocations body declares Parquet."""
    return (content_type or "").split(";")[0].strip().lower() == CONTENT_PARQUET


def _check_rows(count: int, max_rows: int, more: bool = False) -> None:
    if count > max_rows:
        counted = f"more than {max_rows}" if more else str(count)
        raise InvocationError(f"{counted} rows exceed the limit of {max_rows} rows per "
                              "request (ML_API_MAX_BATCH); split the input")


def _content_type(header: str | None) -> tuple[str, str, list[str]]:
    parts = [p.strip() for p in (header or CONTENT_JSON).split(";")]
    params = dict(p.partition("=")[::2] for p in parts[1:] if p)
    charset = params.pop("charset", "utf-8").strip('"').lower()
    return parts[0].lower(), charset, sorted(params)


_NON_FINITE_TOKENS = (b"NaN", b"Infinity")


def _load_json(body: bytes) -> tuple[Any, bool]:
    """The parsed body, and whether it held NaN/Infinity (not JSON, but Python's json
    and MLflow's client write them for missing values). orjson parses; Python's json
    only when orjson refused a body holding such a token (nesting is bounded by orjson
    at 1,024 levels, and a RecursionError of the fallback is a 400)."""
    try:
        return orjson.loads(body), False
    except orjson.JSONDecodeError as exc:
        error = exc
    if not any(token in body for token in _NON_FINITE_TOKENS):
        raise InvocationError("Ensure that input is a valid JSON formatted string. "
                              f"Error: {excerpt(error)}") from None
    try:
        payload = json.loads(body)
    except RecursionError:
        raise InvocationError("Ensure that input is a valid JSON formatted string. "
                              "Error: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvocationError(f"Ensure that input is a valid JSON formatted string. "
                              f"Error: {excerpt(exc)}") from None
    return payload, True


def _json_records(body: bytes, specs: tuple[FeatureSpec, ...], max_rows: int) -> list[dict]:
    payload, non_finite = _load_json(body)
    records = _payload_records(payload, max_rows)
    nullable = {spec.name for spec in specs if spec.nullable}
    if non_finite and nullable:  # NaN is how pandas spells "missing": null where allowed
        records = [{k: None if k in nullable and _is_nan(v) else v for k, v in r.items()}
                   for r in records]
    return records


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _keys(payload: dict, limit: int = 5) -> str:
    keys = [excerpt(k, 20) for k in list(payload)[:limit]]
    return excerpt(str(keys) + (" ..." if len(payload) > limit else ""))


def _payload_records(payload, max_rows: int) -> list[dict]:
    if not isinstance(payload, dict):
        raise InvocationError(f"The input must be a JSON dictionary with exactly one of the "
                              f"input fields {set(FORMATS)}. Received a "
                              f"{type(payload).__name__}.")
    found = [key for key in FORMATS if key in payload]
    if len(found) != 1:
        raise InvocationError(f"The input must be a JSON dictionary with exactly one of the "
                              f"input fields {set(FORMATS)}. Received dictionary with input "
                              f"fields: {_keys(payload)}.")
    key = found[0]
    if not isinstance(payload.get("params", {}), dict):
        raise InvocationError("'params' must be a JSON object (parameter name → value); "
                              f"got a {type(payload['params']).__name__}")
    data = payload[key]
    if key == "dataframe_split":
        return _split_records(data, max_rows)
    if key == "dataframe_records":
        if isinstance(data, list):
            _check_rows(len(data), max_rows)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InvocationError("Dataframe records format must be a list of records "
                                  "(objects mapping column names to values).")
        return data
    return _tensor_records(key, data, max_rows)


def _split_records(data, max_rows: int) -> list[dict]:
    if not isinstance(data, dict):
        raise InvocationError("Dataframe split format must be a dictionary.")
    extra = set(data) - {"columns", "data", "index"}
    if "data" not in data or extra:
        raise InvocationError("Dataframe split format must have 'data' field and optionally "
                              f"'columns' and 'index' fields. Got {_keys(data)}.")
    columns, rows = data.get("columns"), data["data"]
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise InvocationError("dataframe_split needs 'columns' (the feature names) and "
                              "'data' (a list of rows)")
    _check_rows(len(rows), max_rows)
    for i, name in enumerate(columns):
        if not isinstance(name, str):
            raise InvocationError(f"dataframe_split column {i} is a "
                                  f"{type(name).__name__}: column names must be strings")
    width = len(columns)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise InvocationError(f"dataframe_split row {i} has "
                                  f"{len(row) if isinstance(row, list) else 'no'} values; "
                                  f"'columns' names {width}")
    return [dict(zip(columns, row, strict=False)) for row in rows]


def _tensor_records(key: str, data, max_rows: int) -> list[dict]:
    """`instances`/`inputs`: a list of records, columns as lists, or one record."""
    if isinstance(data, list):
        _check_rows(len(data), max_rows)
        if all(isinstance(r, dict) for r in data):
            return data
    if isinstance(data, dict) and data:
        values = list(data.values())
        if all(isinstance(v, list) for v in values):
            lengths = {len(v) for v in values}
            _check_rows(max(lengths), max_rows)
            if len(lengths) != 1:
                raise InvocationError(f"'{key}' columns have different lengths: "
                                      f"{excerpt(sorted(lengths))}")
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
        try:
            return int(text)
        except ValueError:
            number = float(text)  # "3.0": pandas writes an integer column with gaps so
            if number.is_integer() and abs(number) < 2.0 ** 63:
                return int(number)
            raise ValueError(f"{excerpt(repr(text))} is not a whole number") from None
    if spec.kind == "boolean":
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"{excerpt(repr(text))} is not a boolean")
    return text


def _csv_fail(error) -> InvocationError:
    return InvocationError("Failed to parse input as a Pandas DataFrame. Ensure that the "
                           "input is a valid CSV-formatted Pandas DataFrame. Error: "
                           f"{excerpt(error)}")


def _csv_records(body: bytes, specs: tuple[FeatureSpec, ...], max_rows: int) -> list[dict]:
    """Rows of a CSV body as `DataFrame.to_csv(index=False)` writes it (header, then one
    line per row; blank lines skipped), read with the csv module: rows are counted as
    they are read and the body is refused at max_rows + 1, before any frame is built.
    Cells are capped by the csv module's field size limit (128 KiB)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _csv_fail(exc) from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise _csv_fail("No columns to parse from file")
        lines: list[list[str]] = []
        for row in reader:
            if not row:
                continue
            lines.append(row)
            if len(lines) > max_rows:
                _check_rows(len(lines), max_rows, more=True)
    except csv.Error as exc:
        raise _csv_fail(exc) from None
    width = len(header)
    by_name = {spec.name: spec for spec in specs}
    columns = [(i, by_name[name]) for i, name in enumerate(header) if name in by_name]
    records: list[dict] = []
    problems = []
    for r, line in enumerate(lines):
        if len(line) > width:
            raise _csv_fail(f"Expected {width} fields in line {r + 2}, saw {len(line)}")
        record = {}
        for i, spec in columns:
            cell = line[i] if i < len(line) else ""
            try:
                record[spec.name] = _csv_value(cell, spec)
            except ValueError:
                problems.append({"loc": [r, excerpt(spec.name)], "type": f"{spec.kind}_parsing",
                                 "msg": f"{excerpt(repr(cell))} is not a valid {spec.kind}"})
        records.append(record)
    if problems:
        raise InvocationError(error_summary(problems, "row"), detail=problems[:100])
    return records


def _parquet_records(body: bytes, specs: tuple[FeatureSpec, ...], max_rows: int
                     ) -> list[dict]:
    """Rows of a Parquet body. The row count and the uncompressed size of the known
    columns come from the file's metadata and are checked before any data page is read;
    then only the known columns are read."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(body))
        metadata = parquet.metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise InvocationError(f"Failed to parse input as a Pandas DataFrame. Ensure that the "
                              f"input is a valid Parquet file. Error: {excerpt(exc)}"
                              ) from None
    _check_rows(metadata.num_rows, max_rows)
    known = {spec.name for spec in specs}
    columns = [name for name in parquet.schema_arrow.names if name in known]
    indices = {i for i in range(metadata.num_columns)
               if metadata.schema.column(i).path.split(".")[0] in known}
    size = sum(metadata.row_group(g).column(i).total_uncompressed_size
               for g in range(metadata.num_row_groups) for i in indices)
    if size > _parquet_byte_limit(max_rows, len(columns)):
        raise InvocationError(f"the Parquet input's columns hold {size} bytes uncompressed, "
                              f"more than {_parquet_byte_limit(max_rows, len(columns))} "
                              f"for {max_rows} rows; split the input")
    try:
        table = _decode_bounded(body, parquet, columns, indices, max_rows,
                                _parquet_byte_limit(max_rows, len(columns)))
    except InvocationError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise InvocationError(f"Failed to parse input as a Pandas DataFrame. Ensure that the "
                              f"input is a valid Parquet file. Error: {excerpt(exc)}"
                              ) from None
    if table.num_rows > max_rows:  # metadata that lied
        _check_rows(table.num_rows, max_rows)
    nullable = {spec.name for spec in specs if spec.nullable}
    records: list[dict] = [{} for _ in range(table.num_rows)]
    for column in columns:
        values = table.column(column).to_pylist()
        if column in nullable:  # pandas writes a missing value as NaN
            values = [None if _is_nan(v) else v for v in values]
        for record, value in zip(records, values, strict=True):
            record[column] = value
    return records


def _decode_bounded(body: bytes, parquet, columns: list[str], indices: set[int],
                    max_rows: int, limit: int) -> pa.Table:
    """The known columns, decoded batch by batch while their decoded size stays within
    `limit`: the footer's uncompressed sizes say what the pages hold, not what they
    expand to (a 2 MiB dictionary string referenced 1,000 times is 2 GB of text).
    Strings are read dictionary-encoded, so a batch costs its dictionary and indices,
    and the size each cell would take once decoded is summed before anything is."""
    metadata = parquet.metadata
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for i in indices:  # a nested (list) column: more values than rows
            if group.column(i).num_values > group.num_rows:
                raise InvocationError(f"column {excerpt(metadata.schema.column(i).path)!r} "
                                      "holds lists or nested values; every column of "
                                      "the input must hold one value per row")
    strings = [name for name in columns
               if pa.types.is_string(parquet.schema_arrow.field(name).type)
               or pa.types.is_large_string(parquet.schema_arrow.field(name).type)
               or pa.types.is_binary(parquet.schema_arrow.field(name).type)]
    reader = pq.ParquetFile(pa.BufferReader(body), read_dictionary=strings)
    batches, decoded, rows = [], 0, 0
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns,
                                     use_pandas_metadata=False):
        rows += batch.num_rows
        if rows > max_rows:  # metadata that lied
            _check_rows(rows, max_rows, more=True)
        decoded += sum(_decoded_bytes(column) for column in batch.columns)
        if decoded > limit:
            raise InvocationError(f"the Parquet input's columns decode to more than {limit} "
                                  f"bytes (at most 1 KiB per cell, 16 MiB at least, for "
                                  f"{max_rows} rows); split the input")
        batches.append(batch)
    if not batches:
        return reader.schema_arrow.empty_table().select(columns)
    return pa.Table.from_batches(batches)


def _decoded_bytes(column: pa.Array) -> int:
    """The bytes `column` takes once decoded: a dictionary column's referenced values
    summed per cell (never materialised), any other its buffers."""
    if pa.types.is_dictionary(column.type):
        lengths = pc.binary_length(column.dictionary).fill_null(0)
        taken = lengths.take(column.indices.fill_null(0))
        return int(pc.sum(taken).as_py() or 0) + 8 * len(column)
    return column.nbytes


def _parquet_byte_limit(max_rows: int, n_columns: int) -> int:
    """Uncompressed bytes the known columns may hold: 1 KiB per cell (far more than any
    number or category needs), at least 16 MiB."""
    return max(16 * 1024 * 1024, max_rows * max(1, n_columns) * 1024)


class Invocations:
    """MLflow's /invocations as an adapter of the one prediction handler
    (serving/protocols/base.py): answers `{"predictions": [...]}` like `mlflow models
    serve`, with model name, version and variant in headers; errors in MLflow's shape."""

    client_errors: tuple[type[Exception], ...] = (InvocationError,)

    def served(self, service: Service, request: Request) -> ServedModel | Response:
        model = service.store.current
        return unavailable_answer(service, mlflow_style=True) if model is None else model

    def rollout(self) -> bool:
        return True

    async def decode(self, request: Request, body: bytes, model: ServedModel,
                     service: Service) -> Decoded:
        content_type = request.headers.get("content-type")
        # A large body, and any Parquet one, is parsed in a parser thread.
        parse = in_parser if is_parquet(content_type) else partial(off_loop, body)
        rows = await parse(parse_rows, body, content_type, model.requests,
                           service.settings.max_batch)
        return Decoded(rows, content_type)

    def rows_for(self, body: bytes, decoded: Decoded, other: ServedModel,
                 service: Service) -> list[list]:
        return parse_rows(body, decoded.context, other.requests, service.settings.max_batch)

    def client_error(self, exc: Exception, model: ServedModel) -> Response:
        assert isinstance(exc, InvocationError)
        return OrjsonResponse(exc.body(), status_code=exc.status)

    def overflow(self, exc: InputOverflow) -> Response:
        return overflow_answer(exc, mlflow_style=True)

    def render(self, result: Answer, decoded: Decoded, request_id: str) -> Response:
        model = result.model
        return OrjsonResponse({"predictions": result.values}, headers={
            "X-Model-Name": model.name, "X-Model-Version": model.version,
            VARIANT_HEADER: result.variant})


INVOCATIONS = Invocations()
