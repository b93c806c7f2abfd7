"""Which rows of the data source a model never trained on: its held-out split, recorded
with the model (row positions in the source frame) so that `ml-platform simulate` sends
the API rows the model has not seen, as live traffic is.

Training appends labelled production rows after the source's rows (see `raw_data`), and
validation keeps that order, so the held-out rows at positions below the source's row
count are rows of the source frame."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

HELD_OUT_ARTIFACT = "held_out/rows.json"
RECORD_VERSION = 1


def _digest(values: pd.Series) -> str:
    """A short digest of target values, in order, read alike before and after
    validation (numbers as floats: a CSV's 326 is the split's 326.0)."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    text = ([repr(float(v)) for v in numbers] if len(values) and numbers.notna().all()
            else [str(v) for v in values])
    return hashlib.sha256("\x1f".join(text).encode()).hexdigest()[:16]


def held_out_record(validated_index: pd.Index, test_target: pd.Series,
                    production_rows: int = 0) -> dict:
    """The record logged with a model: the positions, in the source frame, of its
    held-out rows (`test_target`, indexed like the validated frame whose index is
    `validated_index`: the source's rows, then `production_rows` labelled production
    rows, which are not recorded), and a digest of their labels."""
    source_rows = len(validated_index) - int(production_rows)
    if not 0 <= production_rows <= len(validated_index):
        raise ValueError(f"production_rows must be between 0 and {len(validated_index)}, "
                         f"got {production_rows}")
    located = validated_index.get_indexer(test_target.index)
    if (located < 0).any():
        raise ValueError("held-out rows that are not rows of the validated frame")
    order = np.argsort(located, kind="stable")
    keep = order[located[order] < source_rows]
    return {"version": RECORD_VERSION, "source_rows": int(source_rows),
            "test_rows": len(test_target), "positions": located[keep].tolist(),
            "target_digest": _digest(test_target.iloc[keep])}


@dataclass(frozen=True)
class UnseenRows:
    """Rows to send as traffic, and a sentence saying what they are."""

    rows: pd.DataFrame
    note: str


def unseen_rows(frame: pd.DataFrame, target: str, record: dict | None) -> UnseenRows:
    """The source rows the model never trained on, from its held-out `record`. Raises
    ValueError naming the problem when the record does not fit `frame` (the data source
    changed since the model was trained, or no record)."""
    if record is None:
        raise ValueError("the champion records no held-out rows (trained before they were "
                         "recorded); retrain it (ml-platform train)")
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError("the champion's held-out record is not one this version reads")
    source_rows = int(record.get("source_rows", -1))
    if source_rows != len(frame):
        raise ValueError(f"the data source now has {len(frame)} rows; the champion was "
                         f"trained when it had {source_rows}: its held-out rows cannot be "
                         "told apart, retrain it on the current data")
    positions = [int(p) for p in record.get("positions", [])]
    if not positions or min(positions) < 0 or max(positions) >= len(frame):
        raise ValueError("the champion's held-out record names no row of the data source")
    rows = frame.iloc[positions].reset_index(drop=True)
    digest = record.get("target_digest")
    if digest is not None and _digest(rows[target]) != digest:
        raise ValueError("the data source's rows changed since the champion was trained "
                         "(its held-out labels differ); retrain it on the current data")
    return UnseenRows(rows, f"{len(rows)} held-out rows of the champion's split (never "
                      "trained on)")
