"""The prediction log's rows as monitoring holds them: only answers that reached a client,
of the lineage being judged, shaped like the batch and landing rows (features, ids,
version, variant, prediction, proba_<class>..., source). A day is taken whole or a
segment at a time (`LogDay.read`): a day too big to hold is sketched as it streams.

Pure pandas: the log is read by the caller (ml_assets/resources/production.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from ml_assets.core.data.production_rows import Lineage, scope_rows
from ml_assets.core.drift.sketch import DriftSketch, merge_sketches
from ml_assets.core.estimation.day_scores import DayScores, sketch_rows
from ml_assets.core.modeling.live_performance import champion_version
from ml_assets.core.prediction_log import numeric_predictions

LOG_SOURCE = "prediction_log"
_LOG_META = {"timestamp", "request_id", "row_index", "model_name", "model_version",
             "prediction", "confidence", "probabilities", "input_flags", "variant",
             "latency_ms", "error"}


def answered_rows(logged: pd.DataFrame) -> pd.DataFrame:
    """The logged rows whose answer reached a client: without a shadow's copies (never
    returned; they share the champion's request ids) and a canary's failed attempts."""
    if not len(logged) or "variant" not in logged:
        return logged
    attrs = dict(logged.attrs)
    kept = logged["variant"].fillna("champion") != "shadow"
    if "error" in logged:
        kept &= logged["error"].fillna("") == ""
    answered = logged[kept].reset_index(drop=True)
    answered.attrs.update(attrs)
    return answered


def logged_frame(logged: pd.DataFrame) -> pd.DataFrame:
    """Logged rows as production_data holds them: features, request_id, model_version,
    variant, prediction (a regressor's as numbers), proba_<class>..., source."""
    feature_names = logged.attrs.get("feature_columns")
    if feature_names is None:
        feature_names = [c for c in logged.columns if c not in _LOG_META]
    frame = logged[list(feature_names)].copy()
    frame["request_id"] = logged["request_id"].astype(str).values
    frame["model_version"] = logged["model_version"].astype(str).values
    frame["variant"] = (logged["variant"].fillna("champion").astype(str).values
                        if "variant" in logged else "champion")
    values = numeric_predictions(logged)  # a regressor's rows: numbers
    frame["prediction"] = (logged["prediction"].astype(str).values if values is None
                           else values.to_numpy(dtype=float))
    probabilities = pd.DataFrame(list(logged["probabilities"]))
    for label in probabilities.columns:
        frame[f"proba_{label}"] = probabilities[label].to_numpy(dtype=float)
    frame["source"] = LOG_SOURCE
    return frame


def flagged_counts(logged: pd.DataFrame) -> tuple[int, dict[str, int]]:
    """Logged rows the API answered although the schema's checks exclude a value
    (ML_API_INPUT_POLICY=accept), and the count of flags per reason."""
    if "input_flags" not in logged or not len(logged):
        return 0, {}
    flags = logged["input_flags"].fillna("").astype(str)
    flags = flags[flags != ""]
    reasons: dict[str, int] = {}
    for flag in (f for row in flags for f in row.split(";")):
        reason = flag.rpartition(":")[2]
        reasons[reason] = reasons.get(reason, 0) + 1
    return len(flags), reasons


@dataclass
class LogDay:
    """A log day read a segment at a time, kept as what monitoring needs of it: rows
    read and kept (answered, of the lineage), rows left out by reason, input flags,
    versions, the version of the last champion answer, and its drift and score
    sketches (the drift sketch None without a sketch function)."""

    read: int = 0
    kept: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    flags_by_reason: dict[str, int] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)
    champion: str | None = None
    drift: DriftSketch | None = None
    scores: DayScores = field(default_factory=lambda: DayScores({}))

    def take(self, logged: pd.DataFrame, lineage: Lineage) -> pd.DataFrame:
        """`logged` (a day or a segment of the log) as production_data keeps it:
        answered, of `lineage`, shaped by `logged_frame` (empty: none kept), with what
        it read, kept and left out counted into this day."""
        self.read += len(logged)
        scoped = scope_rows(answered_rows(logged), lineage)
        for reason, count in scoped.excluded.items():
            self.excluded[reason] = self.excluded.get(reason, 0) + count
        if not len(scoped.rows):
            return pd.DataFrame()
        flagged, reasons = flagged_counts(scoped.rows)
        self.flagged += flagged
        for reason, count in reasons.items():
            self.flags_by_reason[reason] = self.flags_by_reason.get(reason, 0) + count
        rows = logged_frame(scoped.rows)
        self.kept += len(rows)
        self.versions.update(rows["model_version"].dropna().astype(str))
        self.champion = champion_version(rows) or self.champion
        return rows

    @classmethod
    def read_segments(cls, segments: Iterable[pd.DataFrame], lineage: Lineage,
                      sketch: Callable[[pd.DataFrame], DriftSketch] | None) -> LogDay:
        """Each segment scoped, counted and sketched in turn, then dropped: memory is
        one segment's, whatever the day's size. Sketches merge exactly (counts and
        quantile sketches: docs/drift.md), so the result is the whole day's."""
        day = cls()
        running: DriftSketch | None = None
        for segment in segments:
            rows = day.take(segment, lineage)
            del segment  # not alive while the next segment decodes
            if not len(rows):
                continue
            day.scores = day.scores.merged(sketch_rows(rows))
            if sketch is not None:
                part = sketch(rows)
                running = part if running is None else merge_sketches([running, part])
            del rows
        if sketch is not None:
            day.drift = running if running is not None else sketch(pd.DataFrame())
        return day
