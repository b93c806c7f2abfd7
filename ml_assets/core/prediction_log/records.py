"""What a prediction log holds and raises, shared by its format (`columnar`) and its
readers and writers (`base` and the backends): the record, read_day's columns, the
errors, a day's mark, and the frame of the first format's rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import orjson
import pandas as pd

# Columns of read_day's frame besides the features (one column per feature).
# input_flags: "feature:reason;..." for values the service answered although the
# schema's checks exclude them (ML_API_INPUT_POLICY=accept; reason unseen_category or
# out_of_range), "" for a clean row and for rows logged before the column existed.
# prediction: the predicted class (text); a regression model's rows carry the
# predicted number as text (repr of the float, exact) with no probabilities and a NaN
# confidence; read_day returns the column as float64 for a day whose every row has no
# probabilities (all from regressors). See `numeric_predictions`.
# variant: who answered ("champion", "canary": the challenger answered a canary share,
# "shadow": the challenger scored a copy, never returned; see ml_assets.core.rollout.plan);
# rows logged before the column existed read as "champion". latency_ms: the model time
# of the row's request (NaN when unknown). error: non-empty when the challenger failed
# on this request ("<Type>: <message>"; its prediction is "" then), "" otherwise.
META_COLUMNS = ["timestamp", "request_id", "row_index", "model_name", "model_version",
                "prediction", "confidence", "probabilities", "input_flags", "variant",
                "latency_ms", "error"]


# Rows per frame of read_segments (whole batches: a commit's rows of a day, up to the
# log's batch_rows, more for one bigger request), and batches per page of its index.
SEGMENT_ROWS = 65_536
INDEX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class LogMark:
    """How far a day's log reached when read: the newest batch id (`through`; 0: none)
    and the day's rows up to it. Reading up to `through` again gives the same rows
    unless a commit with a lower id landed since (then `rows` differs)."""

    through: int
    rows: int


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One predicted row: what was asked, what was answered, by which model, when."""

    timestamp: datetime  # UTC
    request_id: str
    row_index: int
    model_name: str
    model_version: str
    feature_names: Sequence[str]
    feature_values: Sequence
    prediction: str  # the class; a regressor's value as repr(float)
    probabilities: dict[str, float]  # {} for a regressor
    input_flags: str = ""  # "island:unseen_category;year:out_of_range", "" when clean
    variant: str = "champion"  # champion | canary | shadow
    latency_ms: float = float("nan")  # model time of the request, in milliseconds
    error: str = ""  # the challenger failed on this request: "<Type>: <msg>"

    @property
    def features(self) -> dict:
        return dict(zip(self.feature_names, self.feature_values, strict=False))

    @property
    def confidence(self) -> float:
        return max(self.probabilities.values()) if self.probabilities else float("nan")


def _day(value: date | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


class PredictionLogError(RuntimeError):
    """The log's storage cannot be reached or used; the message says where (never with
    a password)."""


class PredictionLogUnavailable(PredictionLogError):
    """The log cannot take (or did not commit in time) these rows; nothing about them
    was acknowledged. `retry_after` is a hint in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


def numeric_predictions(frame: pd.DataFrame) -> pd.Series | None:
    """The `prediction` column as float64 when every row comes from a regression model
    (no probabilities, a number as prediction); None otherwise (classes, or a day that
    mixes a classifier's rows with a regressor's)."""
    if not len(frame) or "probabilities" not in frame:
        return None
    if any(bool(p) for p in frame["probabilities"]):
        return None
    values = pd.to_numeric(frame["prediction"], errors="coerce")
    # A challenger's failed rows (error set) have no prediction: NaN there.
    failed = (frame["error"].astype(bool).to_numpy() if "error" in frame
              else np.zeros(len(frame), dtype=bool))
    if values[~failed].isna().any() or failed.all():
        return None
    return values.astype("float64")


def _frame(rows: list[tuple], features: bool = True) -> pd.DataFrame:
    """read_day's frame from rows of the first format, one SQL row per prediction
    (logged_at, request_id, row_index, model_name, model_version, prediction, confidence,
    probabilities JSON, features JSON[, input_flags, variant, latency_ms, error: NULL or
    missing in logs written before they existed reads as "", "champion", NaN, ""])."""
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in META_COLUMNS})
    meta = pd.DataFrame([row[:7] for row in rows], columns=META_COLUMNS[:7])
    meta["timestamp"] = pd.to_datetime(meta["timestamp"], utc=True, format="ISO8601")
    # NULL (no probabilities: a regressor's row) reads as NaN, not None.
    meta["confidence"] = pd.to_numeric(meta["confidence"], errors="coerce").astype("float64")
    meta["probabilities"] = [orjson.loads(row[7]) for row in rows]
    meta["input_flags"] = [(row[9] or "") if len(row) > 9 else "" for row in rows]
    meta["variant"] = [(row[10] or "champion") if len(row) > 10 else "champion"
                       for row in rows]
    meta["latency_ms"] = pd.to_numeric(
        pd.Series([row[11] if len(row) > 11 else None for row in rows], dtype=object),
        errors="coerce").astype("float64")
    meta["error"] = [(row[12] or "") if len(row) > 12 else "" for row in rows]
    values = numeric_predictions(meta)
    if values is not None:
        meta["prediction"] = values
    feature_frame = (pd.DataFrame.from_records([orjson.loads(row[8]) for row in rows])
               if features else pd.DataFrame(index=meta.index))
    # A feature named like a meta column keeps its values under "feature.<name>".
    feature_frame.columns = [f"feature.{c}" if c in META_COLUMNS else c
                             for c in feature_frame.columns]
    frame = pd.concat([meta, feature_frame], axis=1)
    frame.attrs["feature_columns"] = list(feature_frame.columns)
    return frame
