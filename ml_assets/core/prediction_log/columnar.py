"""The prediction log's storage format: a commit's rows of one day encoded once as an
Arrow IPC stream (one schema, one record batch), and decoded with bounds.

A batch holds the META_COLUMNS (`probabilities` as JSON text per row, so each row
keeps its own classes and key order) and one column per feature, named
`FEATURE_PREFIX + name`. A feature column is typed (bool, int64, float64 or text) when
all its values are of one such kind (int and float mixed: float64), else each value is
stored as JSON text (the field's metadata says so): what a value reads back as is what
the JSON rows of the first format gave (non-finite floats read as missing).

Decoding trusts nothing in the bytes: the stream must be one schema and one
uncompressed record batch of the known column types, its declared size is checked
against the blob's before anything is allocated, and the batch is fully validated
(offsets, UTF-8) before it reaches pandas. Anything else is a `CorruptBatch` naming the
day and the batch.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import chain

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from ml_assets.core.prediction_log.records import (
    META_COLUMNS,
    PredictionLogError,
    PredictionRecord,
    _frame,
    numeric_predictions,
)

FORMAT = 1  # stored with each batch; a reader refuses formats it does not know
FEATURE_PREFIX = "f:"
# A batch whose every feature is a float holds them as one fixed-size list column (the
# names in its metadata) instead of a column each.
BLOCK = "features"
_JSON = {b"encoding": b"json"}
_STRING_META = ("request_id", "model_name", "model_version", "prediction", "probabilities",
                "input_flags", "variant", "error")
_META_TYPES = {"timestamp": pa.timestamp("us", tz="UTC"), "row_index": pa.int64(),
               "confidence": pa.float64(), "latency_ms": pa.float64(),
               **{name: pa.string() for name in _STRING_META}}
_FEATURE_TYPES = (pa.null(), pa.bool_(), pa.int64(), pa.float64(), pa.string())
_NEVER_NULL = ("timestamp", "request_id", "row_index", "model_name", "model_version",
               "prediction", "probabilities")
# Decoding bounds: a batch may not declare more cells (rows x columns) than this many
# per stored byte plus a floor (a real batch has a few cells per 8 bytes; all-missing
# features cost no bytes), nor more columns than MAX_COLUMNS.
CELLS_PER_BYTE = 64
CELL_FLOOR = 1 << 20
NULL_CELLS = 1 << 24  # all-missing feature cells of one batch (a commit is <= 5,000 rows)
MAX_COLUMNS = 20_000
_EPOCH = datetime(1970, 1, 1)
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_SCHEMAS: dict[tuple, tuple[pa.Schema, bytes]] = {}
_CONSTANT: dict[tuple[str, int], pa.Array] = {}  # see _text
_CHECKED: dict[bytes, pa.Schema] = {}  # schema messages already read and checked
# What read_day's frame has always held (pandas' reading of ISO text as UTC).
_TIMESTAMP_DTYPE = pd.to_datetime(["2026-01-01T00:00:00+00:00"], utc=True,
                                  format="ISO8601").dtype


class CorruptBatch(PredictionLogError):
    """A stored batch that cannot be decoded (damaged or crafted bytes)."""


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One day's rows of a commit: the Arrow IPC bytes and the request-id index runs
    (request_id, first row, rows) in row order."""

    day: str
    rows: int
    runs: list[tuple[str, int, int]]
    data: bytes


# -- encoding ---------------------------------------------------------------------------

def encode(records: Sequence[PredictionRecord]) -> list[EncodedBatch]:
    """`records` as one batch per UTC day they fall on (one, but at midnight), in order."""
    days: dict[str, tuple[list[PredictionRecord], list[int]]] = {}
    seen: dict[datetime, tuple[str, int]] = {}  # a request's rows share one timestamp
    for record in records:
        stamp = record.timestamp
        known = seen.get(stamp)
        if known is None:
            known = seen[stamp] = (stamp.date().isoformat(), _micros(stamp))
        rows, micros = days.setdefault(known[0], ([], []))
        rows.append(record)
        micros.append(known[1])
    return [_encode_day(day, rows, micros) for day, (rows, micros) in days.items()]


def _micros(stamp: datetime) -> int:
    """Microseconds since the epoch of a UTC time (naive means UTC, as it always did)."""
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(timezone.utc).replace(tzinfo=None)
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _encode_day(day: str, records: list[PredictionRecord], micros: list[int]
                ) -> EncodedBatch:
    arrays = _meta_arrays(records, micros)
    block = _float_block(records)
    if block is not None:  # the common model: every feature a float, one block
        names, array = block
        arrays.append(array)
        cached = _schema((BLOCK, names), lambda: [pa.field(
            BLOCK, array.type, metadata={b"names": orjson.dumps(names)})])
    else:
        cached = _general_schema(records, arrays)
    schema, header = cached
    # An IPC stream by hand: the schema message (serialized once per shape), the record
    # batch message, the end-of-stream marker.
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    data = b"".join((header, batch.serialize().to_pybytes(), _END_OF_STREAM))
    return EncodedBatch(day, len(records), _runs(records), data)


def _meta_arrays(records: list[PredictionRecord], micros: list[int]) -> list[pa.Array]:
    """The META_COLUMNS of `records`, in order."""
    return [pa.array(micros, _META_TYPES["timestamp"]),
            pa.array([r.request_id for r in records], pa.string()),
            pa.array([r.row_index for r in records], pa.int64()),
            _text([r.model_name for r in records]),
            _text([r.model_version for r in records]),
            _text([r.prediction for r in records]),
            _floats([r.confidence for r in records]),
            # str, not orjson's bytes: pyarrow takes bytes for text ~7x slower
            pa.array([orjson.dumps(r.probabilities).decode() for r in records], pa.string()),
            _text([r.input_flags for r in records]),
            _text([r.variant for r in records]),
            _floats([r.latency_ms for r in records]),
            _text([r.error for r in records])]


def _text(values: list) -> pa.Array:
    """A text column; one of <= 64 rows of one value throughout (a model's name...) is
    built once per value and length, then reused (arrays are immutable; bounded cache)."""
    first = values[0]
    if (len(values) > 64 or not isinstance(first, str) or len(first) > 200
            or values.count(first) != len(values)):
        return pa.array(values, pa.string())
    array = _CONSTANT.get(key := (first, len(values)))  # once: another writer may clear it
    if array is None:
        if len(_CONSTANT) > 1024:
            _CONSTANT.clear()
        array = _CONSTANT[key] = pa.array(values, pa.string())
    return array


def _schema(key: tuple, features: Callable[[], list[pa.Field]]) -> tuple[pa.Schema, bytes]:
    """The schema of a batch shape (the log's columns, then `features()`) and its IPC
    message, built once per shape."""
    cached = _SCHEMAS.get(key)
    if cached is None:
        if len(_SCHEMAS) > 64:  # models come and go; keep the recent ones
            _SCHEMAS.clear()
        schema = pa.schema([*(pa.field(name, _META_TYPES[name]) for name in META_COLUMNS),
                            *features()])
        cached = _SCHEMAS[key] = (schema, schema.serialize().to_pybytes())
    return cached


def _float_block(records: list[PredictionRecord]) -> tuple[tuple[str, ...], pa.Array] | None:
    """(names, block) when every row has the same distinct feature names and every
    value is a float (none missing); None otherwise (the general path decides)."""
    names = records[0].feature_names
    width = len(names)
    if not width or any(r.feature_names is not names and r.feature_names != names
                        for r in records):
        return None
    values = [r.feature_values for r in records]
    if (any(len(v) != width for v in values)
            or set(map(type, chain.from_iterable(values))) != {float}):
        return None
    key = tuple(names)
    return (key, _block(np.array(values, dtype=np.float64))) if len(set(key)) == width else None


def _block(matrix: np.ndarray) -> pa.Array:
    """A block of features from a rows x features matrix (None -> NaN already)."""
    matrix[np.isinf(matrix)] = np.nan  # as the JSON rows stored them: missing
    return pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.ravel(), pa.float64(), from_pandas=True), matrix.shape[1])


def _general_schema(records: list[PredictionRecord], arrays: list[pa.Array]
                    ) -> tuple[pa.Schema, bytes]:
    """Any other rows: the feature columns appended to `arrays` (a block when every
    feature is a float, else a typed or JSON column each), and their schema."""
    fields = []
    columns = _feature_columns(records, len(records))
    kinds = [set(map(type, values)) for values in columns.values()]
    if columns and all(k - {type(None)} == {float} for k in kinds):
        # Every feature a float: one block, one array, not one each.
        block = _block(np.array(list(columns.values()), dtype=np.float64).T)  # None: NaN
        fields.append(pa.field(BLOCK, block.type, metadata={
            b"names": orjson.dumps(list(columns))}))
        arrays.append(block)
    else:
        for (name, values), kind in zip(columns.items(), kinds, strict=True):
            array, metadata = _feature_array(values, kind)
            fields.append(pa.field(FEATURE_PREFIX + name, array.type, metadata=metadata))
            arrays.append(array)
    # The whole metadata in the key: a JSON-encoded text column is not a plain one.
    key = tuple((f.name, f.type, tuple(sorted((f.metadata or {}).items())))
                for f in fields)
    return _schema(key, lambda: fields)


def _feature_columns(records: list[PredictionRecord], n: int) -> dict[str, list]:
    """Feature name -> its value in every row (None where a row lacks the feature), in
    order of first appearance; rows of one request share their names and are transposed
    at once."""
    columns: dict[str, list] = {}
    filled = 0
    start = 0
    while start < n:
        names = records[start].feature_names
        end = start + 1
        while end < n and (records[end].feature_names is names
                           or records[end].feature_names == names):
            end += 1
        run = records[start:end]
        width = len(names)
        if len(set(names)) == width and all(len(r.feature_values) == width for r in run):
            pairs = zip(names, zip(*(r.feature_values for r in run), strict=True),
                        strict=True)
            filled = _extend(columns, pairs, filled, len(run))
        else:  # duplicate names or ragged values: the dict a record's JSON held
            for record in run:
                filled = _extend(columns, ((k, (v,)) for k, v in record.features.items()),
                                 filled, 1)
        start = end
    for values in columns.values():
        if len(values) < n:
            values.extend([None] * (n - len(values)))
    return columns


def _extend(columns: dict[str, list], pairs, filled: int, rows: int) -> int:
    for name, values in pairs:
        column = columns.get(name)
        if column is None:
            column = columns[name] = [None] * filled
        elif len(column) < filled:
            column.extend([None] * (filled - len(column)))
        column.extend(values)
    return filled + rows


def _feature_array(values: list, kinds: set) -> tuple[pa.Array, dict | None]:
    kinds = kinds - {type(None)}
    try:
        if not kinds:
            return pa.nulls(len(values)), None
        if kinds <= {float, int}:
            if kinds == {int}:
                return pa.array(values, pa.int64()), None
            return _floats(values), None
        if kinds == {str}:
            return pa.array(values, pa.string()), None
        if kinds == {bool}:
            return pa.array(values, pa.bool_()), None
    except OverflowError:  # an int beyond int64: JSON keeps it
        pass
    # Mixed kinds (or others JSON turns into text): each value as the JSON it was.
    return pa.array([None if v is None else orjson.dumps(v).decode() for v in values],
                    pa.string()), _JSON


_INFINITE = (float("inf"), float("-inf"))


def _floats(values: list) -> pa.Array:
    """float64 with NaN and infinities as missing, as the JSON rows stored them."""
    if _INFINITE[0] in values or _INFINITE[1] in values:  # a C loop: cheap
        values = [None if v in _INFINITE else v for v in values]
    return pa.array(values, pa.float64(), from_pandas=True)  # from_pandas: NaN -> null


def _runs(records: list[PredictionRecord]) -> list[tuple[str, int, int]]:
    runs: list[tuple[str, int, int]] = []
    start = 0
    for i in range(1, len(records) + 1):
        if i == len(records) or records[i].request_id != records[start].request_id:
            runs.append((records[start].request_id, start, i - start))
            start = i
    return runs


# -- decoding ---------------------------------------------------------------------------

def decode(data, where: str, stored_format: int = FORMAT) -> pa.Table:
    """The table a stored batch holds; CorruptBatch naming `where` ("batch 12 of
    2026-03-01") when the bytes are not a batch this format wrote."""
    if stored_format != FORMAT:
        raise CorruptBatch(f"prediction log: {where} is in format {stored_format}, which "
                           f"this version cannot read (it reads format {FORMAT})")
    try:
        buffer = pa.py_buffer(data)
        reader = pa.ipc.MessageReader.open_stream(buffer)
        first = reader.read_next_message()
        if first.type != "schema":
            raise ValueError(f"starts with a {first.type} message, not the schema")
        key = first.metadata.to_pybytes()
        schema = _CHECKED.get(key)
        if schema is None:  # checked once per distinct schema message
            schema = pa.ipc.read_schema(first)
            _check_schema(schema)
            if len(_CHECKED) > 256:
                _CHECKED.clear()
            _CHECKED[key] = schema
        message = reader.read_next_message()
        if message.type != "record batch":
            raise ValueError(f"holds a {message.type} message where the rows should be")
        rows, compressed = _batch_header(message.metadata)
        if compressed:
            raise ValueError("its rows are compressed (this format never is)")
        budget = CELLS_PER_BYTE * buffer.size + CELL_FLOOR
        if rows < 0 or rows * _width(schema) > budget:
            raise ValueError(f"declares {rows} rows of {_width(schema)} columns, more "
                             f"than {buffer.size} bytes can hold")
        # All-missing columns cost no stored bytes but become object arrays in pandas
        # (8 bytes a cell): bounded on their own, not by the bytes.
        nulls = sum(1 for field in schema if field.type == pa.null())
        if rows * nulls > NULL_CELLS:
            raise ValueError(f"declares {rows} rows of {nulls} all-missing columns "
                             f"(at most {NULL_CELLS} such cells)")
        batch = pa.ipc.read_record_batch(message, schema)
        try:
            extra = reader.read_next_message()
        except StopIteration:
            extra = None
        if extra is not None:
            raise ValueError(f"holds a {extra.type} message after its rows")
        batch.validate(full=True)
        if BLOCK in schema.names and batch.column(BLOCK).null_count:
            raise ValueError("its block of features has missing rows")
        for name in _NEVER_NULL:  # the encoder always writes these
            if batch.column(name).null_count:
                raise ValueError(f"its column {name} has missing values")
    except CorruptBatch:
        raise
    except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OSError,
            StopIteration, struct.error, orjson.JSONDecodeError) as exc:
        reason = ("it ends before its rows" if isinstance(exc, StopIteration)
                  else " ".join(str(exc).split())[:300] or type(exc).__name__)
        raise CorruptBatch(f"prediction log: {where} cannot be decoded: {reason}") from None
    return pa.Table.from_batches([batch])


def _check_schema(schema: pa.Schema) -> None:
    if len(schema) > MAX_COLUMNS:
        raise ValueError(f"has {len(schema)} columns (at most {MAX_COLUMNS})")
    names = schema.names
    if names[:len(META_COLUMNS)] != META_COLUMNS:
        raise ValueError("does not start with the log's columns")
    for field in schema:
        expected = _META_TYPES.get(field.name)
        if expected is not None:
            if field.type != expected:
                raise ValueError(f"column {field.name} is {field.type}, not {expected}")
        elif field.name == BLOCK:
            if len(schema) != len(META_COLUMNS) + 1:
                raise ValueError("holds a block of features beside other features")
            _block_names(field)
        elif not field.name.startswith(FEATURE_PREFIX):
            raise ValueError(f"has an unknown column {field.name[:80]!r}")
        elif field.type not in _FEATURE_TYPES:
            raise ValueError(f"feature {field.name[2:82]!r} is of type {field.type}")
    if len(set(names)) != len(names):
        raise ValueError("names a column twice")


def _block_names(field: pa.Field) -> list[str]:
    """The feature names of a block field (ValueError unless it is one as written)."""
    names = orjson.loads((field.metadata or {}).get(b"names", b"null"))
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise ValueError("its block of features does not name its features")
    if field.type != pa.list_(pa.float64(), len(names)):
        raise ValueError(f"its block of {len(names)} features is {field.type}")
    return names


def _width(schema: pa.Schema) -> int:
    """Columns a batch becomes (a block counts as its features)."""
    block = schema.get_field_index(BLOCK)
    return len(schema) + (schema.field(block).type.list_size - 1 if block >= 0 else 0)


def _batch_header(metadata: pa.Buffer) -> tuple[int, bool]:
    """(rows, compressed) from a record batch message's flatbuffer (Message.header:
    RecordBatch{length, nodes, buffers, compression}), read with bounds checks."""
    raw = metadata.to_pybytes()

    def u32(pos: int) -> int:
        if pos < 0:
            raise ValueError("its header points outside itself")
        return struct.unpack_from("<I", raw, pos)[0]

    def table_field(table: int, index: int) -> int:
        """Absolute position of field `index` of the table at `table` (0: absent)."""
        vtable = table - struct.unpack_from("<i", raw, table)[0]
        if vtable < 0:
            raise ValueError("its header points outside itself")
        size = struct.unpack_from("<H", raw, vtable)[0]
        slot = 4 + 2 * index
        offset = struct.unpack_from("<H", raw, vtable + slot)[0] if slot < size else 0
        return table + offset if offset else 0

    root = u32(0)
    header = table_field(root, 2)  # Message.header
    if not header:
        raise ValueError("its record batch header is missing")
    batch = header + u32(header)
    length = table_field(batch, 0)
    rows = struct.unpack_from("<q", raw, length)[0] if length else 0
    return rows, bool(table_field(batch, 3))


# -- reading ----------------------------------------------------------------------------

def frame(tables: Sequence[pa.Table], features: bool = True) -> pd.DataFrame:
    """read_day's frame of decoded batches, in order (see base.META_COLUMNS); without
    the feature columns when not `features`."""
    if not tables:
        return empty_frame()
    if not features:
        tables = [t.select(META_COLUMNS) for t in tables]
    parts = list(tables)
    if len({t.schema.field(BLOCK).metadata[b"names"] if BLOCK in t.schema.names else None
            for t in parts}) > 1:
        parts = [_expand(t) for t in parts]  # blocks of other features, or typed columns
    if len(parts) > 1 and _promotable(parts):
        parts = [pa.concat_tables(parts, promote_options="permissive")]
    try:
        frames = [_table_frame(t) for t in parts]
    except orjson.JSONDecodeError as exc:  # valid Arrow, damaged text inside
        raise CorruptBatch(f"prediction log: a stored batch holds text that is not JSON "
                           f"where JSON was written ({exc})") from None
    if len(frames) == 1:
        return numeric(frames[0])
    return concat_frames(frames)


def _promotable(tables: Sequence[pa.Table]) -> bool:
    """Whether Arrow can join the batches as pandas would join their frames: each
    feature of one type in every batch (or missing: null), int64 beside float64 at most,
    no JSON-encoded column. Otherwise each batch becomes a frame and pandas joins them."""
    kinds: dict[str, set] = {}
    for table in tables:
        for field in table.schema:
            if field.metadata == _JSON:
                return False
            if field.type != pa.null():
                kinds.setdefault(field.name, set()).add(field.type)
    return all(len(k) == 1 or k == {pa.int64(), pa.float64()} for k in kinds.values())


def _expand(table: pa.Table) -> pa.Table:
    """`table` with its block of features (if any) as a float64 column per feature."""
    if BLOCK not in table.schema.names:
        return table
    names = _block_names(table.schema.field(BLOCK))
    matrix = _block_matrix(table, len(names))
    table = table.drop_columns([BLOCK])
    for j, name in enumerate(names):
        table = table.append_column(FEATURE_PREFIX + name, pa.array(
            matrix[:, j], pa.float64(), from_pandas=True))
    return table


def _block_matrix(table: pa.Table, width: int) -> np.ndarray:
    block = table.column(BLOCK).combine_chunks()
    values = block.flatten().to_numpy(zero_copy_only=False)  # missing -> NaN
    return values.reshape(len(block), width)


def _table_frame(table: pa.Table) -> pd.DataFrame:
    meta = table.select(META_COLUMNS).to_pandas()
    meta["timestamp"] = meta["timestamp"].astype(_TIMESTAMP_DTYPE)
    meta["probabilities"] = [orjson.loads(p) for p in meta["probabilities"]]
    meta["input_flags"] = meta["input_flags"].fillna("")
    variant = meta["variant"]
    meta["variant"] = variant.where(variant.notna() & (variant != ""), "champion")
    meta["error"] = meta["error"].fillna("")
    fields = [f for f in table.schema if f.name.startswith(FEATURE_PREFIX)]
    columns = {}
    if BLOCK in table.schema.names:
        names = _block_names(table.schema.field(BLOCK))
        matrix = _block_matrix(table, len(names))
        columns = {name: matrix[:, j] for j, name in enumerate(names)}
    for field in fields:
        column = table.column(field.name)
        name = field.name[len(FEATURE_PREFIX):]
        if field.metadata == _JSON:
            columns[name] = pd.Series([None if v is None else orjson.loads(v)
                                       for v in column.to_pylist()], dtype=object)
        else:
            columns[name] = column.to_pandas()
    features = pd.DataFrame(columns) if columns else pd.DataFrame(index=meta.index)
    return _assemble(meta, features)


def _assemble(meta: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    # A feature named like a meta column keeps its values under "feature.<name>".
    features.columns = [f"feature.{c}" if c in META_COLUMNS else c for c in features.columns]
    result = pd.concat([meta, features.set_axis(meta.index)], axis=1)
    result.attrs["feature_columns"] = list(features.columns)
    return result


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Frames of read_day (old rows, batches) as one: rows in order, features joined."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    if len(frames) == 1:
        return frames[0]
    names: dict[str, None] = {}
    for part in frames:
        names.update(dict.fromkeys(part.attrs.get("feature_columns", [])))
    texts = []
    for part in frames:  # numbers again below, once, over every row
        part = part.copy()
        if part["prediction"].dtype != object:
            part["prediction"] = [repr(float(v)) for v in part["prediction"]]
        texts.append(part)
    with warnings.catch_warnings():
        # pandas will stop ignoring all-missing parts when typing a joined column; the
        # loop below types such a column from its values either way.
        warnings.simplefilter("ignore", FutureWarning)
        result = pd.concat(texts, ignore_index=True)
    result = result[META_COLUMNS + list(names)]
    for name in names:  # a column missing from some parts: typed as one frame would be
        if result[name].dtype == object:
            inferred = pd.Series(result[name].tolist(), index=result.index)
            if inferred.dtype != object:
                result[name] = inferred
    values = numeric_predictions(result)
    if values is not None:
        result["prediction"] = values
    result.attrs["feature_columns"] = list(names)
    return result


def numeric(frame_: pd.DataFrame) -> pd.DataFrame:
    """`frame_` with a regressor day's predictions as float64 (base.numeric_predictions)."""
    values = numeric_predictions(frame_)
    if values is not None:
        frame_["prediction"] = values
    return frame_


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in META_COLUMNS})


def take_rows(table: pa.Table, runs: Sequence[tuple[int, int]]) -> pa.Table:
    """The rows of `table` in `runs` ((first row, rows), bounds-checked), in order."""
    indices = []
    for first, count in runs:
        if first < 0 or count < 0 or first + count > table.num_rows:
            raise CorruptBatch(f"prediction log: an index entry points at rows {first}-"
                               f"{first + count} of a batch of {table.num_rows}")
        indices.append(np.arange(first, first + count))
    return table.take(pa.array(np.concatenate(indices) if indices else [], pa.int64()))



def requests_frame(old: Iterable[tuple], hits: Iterable[tuple], where: str,
                   features: bool = True) -> pd.DataFrame:
    """read_requests' frame, from the first format's rows ((day, *row)) and the
    request-id index's hits ((batch id, day, format, data, first row, rows)): days in
    order, in each the old rows, then each batch's rows in row order (a batch decoded
    once, named by `where`)."""
    days: dict[str, tuple[list, dict]] = {}
    for day, *row in old:
        days.setdefault(str(day), ([], {}))[0].append(tuple(row))
    for batch_id, day, fmt, data, first, rows in hits:
        batches = days.setdefault(str(day), ([], {}))[1]
        if batch_id not in batches:  # decoded once
            batches[batch_id] = (decode(data, f"batch {batch_id} of {day} in {where}", fmt), [])
        batches[batch_id][1].append((first, rows))
    return concat_frames([concat_frames([_frame(rows, features), frame(
        [take_rows(table, sorted(runs)) for _, (table, runs) in sorted(batches.items())],
        features)]) for _, (rows, batches) in sorted(days.items())])
