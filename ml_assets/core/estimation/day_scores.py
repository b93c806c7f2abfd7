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

NO_PROBABILITIES = "without probabilities (a regressor's, or none logged)"
UNUSABLE = "answer or probabilities unusable (missing, or not a class)"
_FIELDS = ("format", "levels", "max_cells", "classes", "keys", "counts", "sums", "low",
           "high")


@dataclass(frozen=True)
class DayScores:
    """Model version -> the score sketch of the rows it answered with probabilities;
    `left_out`: rows answered that no sketch holds, by reason; `unsketched`: those rows
    per model version (a regressor's, say: estimated_performance names why)."""

    versions: dict[str, ScoreSketch]
    left_out: dict[str, int] = field(default_factory=dict)
    unsketched: dict[str, int] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.versions.values())

    def merged(self, other: DayScores) -> DayScores:
        versions = dict(self.versions)
        left_out = _added(self.left_out, other.left_out)
        unsketched = _added(self.unsketched, other.unsketched)
        for version, sketch in other.versions.items():
            mine = versions.get(version)
            if mine is None:
                versions[version] = sketch
            elif sorted(mine.classes) == sorted(sketch.classes):
                versions[version] = mine.merged(sketch.reordered(mine.classes))
            else:  # one version, two sets of classes: the larger kept, the other counted
                kept, dropped = (mine, sketch) if mine.n_rows >= sketch.n_rows else (
                    sketch, mine)
                versions[version] = kept
                left_out = _added(left_out, {"probabilities of other classes than the "
                                             "version's other rows": dropped.n_rows})
                unsketched = _added(unsketched, {version: dropped.n_rows})
        return DayScores(versions, left_out, unsketched)

    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {}  # savez: names -> arrays
        names = sorted(self.versions)
        for i, version in enumerate(names):
            with np.load(io.BytesIO(self.versions[version].to_bytes()),
                         allow_pickle=False) as one:
                arrays.update({f"v{i}_{k}": one[k] for k in one.files})
        arrays["header"] = np.asarray(json.dumps({"versions": names,
                                                  "left_out": self.left_out,
                                                  "unsketched": self.unsketched}))
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
            unsketched = {str(k): int(v)
                          for k, v in dict(header.get("unsketched", {})).items()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
            raise ValueError(f"day score sketches unreadable: {type(exc).__name__}: "
                             f"{exc}"[:300]) from None
        versions = {}
        for i, version in enumerate(names):
            buffer = io.BytesIO()
            np.savez(buffer, **{k: arrays[f"v{i}_{k}"] for k in _FIELDS
                                if f"v{i}_{k}" in arrays})
            versions[version] = ScoreSketch.from_bytes(buffer.getvalue())
        return cls(versions, left_out, unsketched)


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
    unsketched: dict[str, int] = {}
    for version, group in answered.groupby(answered["model_version"].astype(str)):
        columns = sorted(c for c in group.columns
                         if str(c).startswith("proba_") and group[c].notna().any())
        if len(columns) < 2:
            left_out = _added(left_out, {NO_PROBABILITIES: len(group)})
            unsketched = _added(unsketched, {str(version): len(group)})
            continue
        classes = [str(c)[len("proba_"):] for c in columns]
        proba = group[columns].to_numpy(dtype=np.float64)
        index = pd.Categorical(group["prediction"].astype(str), categories=classes).codes
        usable = (index >= 0) & np.isfinite(proba).all(axis=1) & (
            (proba >= 0) & (proba <= 1)).all(axis=1)
        if (~usable).any():
            left_out = _added(left_out, {UNUSABLE: int((~usable).sum())})
            unsketched = _added(unsketched, {str(version): int((~usable).sum())})
        versions[str(version)] = ScoreSketch.from_rows(proba[usable], index[usable], classes)
    return DayScores(versions, left_out, unsketched)


def _added(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, count in b.items():
        out[key] = out.get(key, 0) + int(count)
    return out
