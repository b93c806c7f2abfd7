"""A day's score sketches, one per model version that answered it: built from rows (the
prediction log, landing files) or merged from batch shards' sketches, kept as one file
that estimated_performance reads instead of the day's rows."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml_assets.core.estimation.score_sketch import ScoreSketch

_FIELDS = ("format", "levels", "max_cells", "classes", "keys", "counts", "sums", "low",
           "high")


@dataclass(frozen=True)
class DayScores:
    """Model version -> the score sketch of the rows it answered with probabilities;
    `left_out`: rows it answered that no sketch holds, by reason."""

    versions: dict[str, ScoreSketch]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.versions.values())

    def merged(self, other: DayScores) -> DayScores:
        versions = dict(self.versions)
        for version, sketch in other.versions.items():
            versions[version] = (versions[version].merged(sketch) if version in versions
                                 else sketch)
        left_out = dict(self.left_out)
        for reason, count in other.left_out.items():
            left_out[reason] = left_out.get(reason, 0) + count
        return DayScores(versions, left_out)

    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {}  # savez: names -> arrays
        names = sorted(self.versions)
        for i, version in enumerate(names):
            with np.load(io.BytesIO(self.versions[version].to_bytes()),
                         allow_pickle=False) as one:
                arrays.update({f"v{i}_{k}": one[k] for k in one.files})
        arrays["header"] = np.asarray(json.dumps({"versions": names,
                                                  "left_out": self.left_out}))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DayScores:
        """A file written by `to_bytes`, each version's sketch checked as
        `ScoreSketch.from_bytes` checks it (a file is input)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            header = json.loads(str(arrays.pop("header")))
            names = [str(v) for v in header["versions"]]
            left_out = {str(k): int(v) for k, v in dict(header["left_out"]).items()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
            raise ValueError(f"day score sketches unreadable: {type(exc).__name__}: "
                             f"{exc}"[:300]) from None
        versions = {}
        for i, version in enumerate(names):
            buffer = io.BytesIO()
            np.savez(buffer, **{k: arrays[f"v{i}_{k}"] for k in _FIELDS
                                if f"v{i}_{k}" in arrays})
            versions[version] = ScoreSketch.from_bytes(buffer.getvalue())
        return cls(versions, left_out)


def sketch_rows(rows: pd.DataFrame) -> DayScores:
    """The score sketches of production rows (production_data's columns: model_version,
    prediction, proba_<class>): per version, its rows whose probabilities of the classes
    it answered (the proba_ columns it filled) are numbers in [0, 1] and whose answer is
    one of them; the others are counted in `left_out`."""
    if not len(rows) or "model_version" not in rows or "prediction" not in rows:
        return DayScores({})
    answered = rows[rows["model_version"].notna()]
    versions: dict[str, ScoreSketch] = {}
    left_out: dict[str, int] = {}
    for version, group in answered.groupby(answered["model_version"].astype(str)):
        columns = [c for c in group.columns
                   if str(c).startswith("proba_") and group[c].notna().any()]
        if len(columns) < 2:
            left_out["without probabilities (a regressor's, or none logged)"] = (
                left_out.get("without probabilities (a regressor's, or none logged)", 0)
                + len(group))
            continue
        classes = [str(c)[len("proba_"):] for c in columns]
        proba = group[columns].to_numpy(dtype=np.float64)
        index = pd.Categorical(group["prediction"].astype(str), categories=classes).codes
        usable = (index >= 0) & np.isfinite(proba).all(axis=1) & (
            (proba >= 0) & (proba <= 1)).all(axis=1)
        if (~usable).any():
            reason = "answer or probabilities unusable (missing, or not a class)"
            left_out[reason] = left_out.get(reason, 0) + int((~usable).sum())
        versions[str(version)] = ScoreSketch.from_rows(proba[usable], index[usable], classes)
    return DayScores(versions, left_out)
