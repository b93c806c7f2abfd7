"""A production day's rows that production_data kept where they are, not in its frame:
a batch day above ML_BATCH_ROWS_IN_MEMORY stays in its Parquet parts, a prediction-log
day above ML_LOG_ROWS_IN_MEMORY in the log. production_data names them in its metadata
(which plan, how far into the log, which lineage) and writes their sketches; the readers
here read them again only where a sketch cannot answer, a record batch or a log segment
at a time where they can, and fail naming the fix when what they name has changed.

Shared by the stages (monitoring, drift, estimation); imports no stage module."""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import pandas as pd
from dagster import Failure, MetadataValue

from ml_assets.core.batch.shards import manifest_parts
from ml_assets.core.data.logged_rows import LOG_SOURCE, LogDay
from ml_assets.core.data.production_rows import Lineage
from ml_assets.core.drift.sketch import DriftSketch, merge_sketches
from ml_assets.core.drift.sketch_store import SketchBasis
from ml_assets.core.estimation.day_scores import NO_PROBABILITIES, DayScores, sketch_rows
from ml_assets.core.modeling.live_performance import champion_version
from ml_assets.core.prediction_log import LogMark, PredictionLogError
from ml_assets.resources.production import BATCH_SOURCE, ProductionDataResource

LANDING_SOURCE = "landing"

# production_data's metadata: batch rows left in their Parquet parts (with
# `batch_plan_id`), and log rows left in the log (with `log_through_batch`,
# `log_rows_read`, `log_scope`, `log_champion_version`).
BATCH_IN_PARTS = "batch_rows_in_parts"
LOG_IN_PLACE = "log_rows_in_log"


def _count(metadata: Mapping[str, Any], key: str) -> int:
    value = metadata.get(key)
    return int(value.value) if value is not None else 0


def in_parts(metadata: Mapping[str, Any]) -> int:
    """Batch rows a production_data materialization left in their parts (its metadata)."""
    return _count(metadata, BATCH_IN_PARTS)


def in_log(metadata: Mapping[str, Any]) -> int:
    """Logged rows a production_data materialization left in the log (its metadata)."""
    return _count(metadata, LOG_IN_PLACE)


# -- the prediction log -----------------------------------------------------------------

@dataclass(frozen=True)
class InLog:
    """A log day production_data read a segment at a time and left in the log: how far
    it read (`mark`), what it kept of it (`day`), and the lineage that kept it."""

    mark: LogMark
    day: LogDay
    lineage: Lineage

    @classmethod
    def read(cls, production: ProductionDataResource, day: str, lineage: Lineage,
             basis: SketchBasis | str) -> "InLog | None":
        """`day`'s log when it holds more than `log_rows_in_memory` rows: read a segment
        at a time up to its newest batch now, counted and sketched (drift on `basis`,
        scores), not held. None: a day small enough to read whole."""
        mark = production.log_mark(day)
        if mark.rows <= production.log_rows_in_memory:
            return None
        sketch = basis.sketch if isinstance(basis, SketchBasis) else None
        try:  # the features decoded only to be sketched
            read = LogDay.read_segments(production.log_segments(
                day, mark.through, features=sketch is not None), lineage, sketch)
        except PredictionLogError as exc:
            raise Failure(f"the prediction log of {day} cannot be read: {exc}") from None
        return cls(LogMark(mark.through, read.read), read, lineage)

    def metadata(self) -> dict[str, Any]:
        """What readers of the day's rows need to read these again (`log_rows`)."""
        return {LOG_IN_PLACE: self.day.kept, "log_through_batch": self.mark.through,
                "log_rows_read": self.mark.rows, "log_scope": MetadataValue.json({
                    "model_name": self.lineage.model_name,
                    "versions": sorted(self.lineage.versions)}),
                "log_champion_version": self.day.champion or ""}


def _log_scope(production: ProductionDataResource, day: str,
               metadata: Mapping[str, Any]) -> tuple[int, Lineage]:
    """The batch production_data read `day`'s log up to, and the lineage it kept; a
    Failure naming the fix when the log up to that batch holds other rows now."""
    through = _count(metadata, "log_through_batch")
    read = _count(metadata, "log_rows_read")
    scope = metadata.get("log_scope")
    now = production.log_rows_through(day, through)
    if scope is None or now != read:
        raise Failure(f"production_data of {day} left its logged rows in the prediction "
                      f"log up to batch {through} ({read} rows), which holds {now} rows "
                      f"there now: materialize production_data of {day} again")
    value = dict(scope.value)
    return through, Lineage(str(value["model_name"]), "",
                            frozenset(str(v) for v in value["versions"]))


def log_rows(production: ProductionDataResource, day: str, metadata: Mapping[str, Any],
             features: bool = True) -> Iterator[pd.DataFrame]:
    """The logged rows production_data of `day` kept in the log, a segment at a time,
    as its frame would hold them (answered, of its lineage)."""
    through, lineage = _log_scope(production, day, metadata)
    counted = LogDay()
    try:
        for segment in production.log_segments(day, through, features=features):
            rows = counted.take(segment, lineage)
            if len(rows):
                yield rows
    except PredictionLogError as exc:
        raise Failure(f"the prediction log of {day} cannot be read ({exc}): materialize "
                      f"production_data of {day} again") from None
    if counted.read != _count(metadata, "log_rows_read"):  # a commit landed below the mark since
        _log_scope(production, day, metadata)  # names the fix
        raise Failure(f"the prediction log of {day} changed while being read: "
                      f"materialize production_data of {day} again")


# -- batch parts ------------------------------------------------------------------------

def parts_manifest(production: ProductionDataResource, day: str,
                   metadata: Mapping[str, Any]) -> dict:
    """The manifest of the batch parts production_data of `day` left out of its frame;
    a Failure naming the fix when the day was batch-scored again since."""
    manifest = production.batch_manifest(day)
    plan = metadata.get("batch_plan_id")
    if manifest is None or plan is None or str(manifest["plan_id"]) != str(plan.value):
        raise Failure(f"production_data of {day} left its batch rows in the parts of plan "
                      f"{plan.value if plan is not None else '?'}, which batch scoring has "
                      f"replaced since: materialize production_data of {day} again")
    return manifest


def _batches(production: ProductionDataResource, day: str, manifest: dict,
             features: bool = True) -> Iterator[pd.DataFrame]:
    try:
        yield from production.batch_batches(day, manifest, features=features)
    except OSError as exc:  # the parts replaced while being read
        raise Failure(f"the batch parts of {day} changed while being read ({exc}): "
                      f"materialize production_data of {day} again") from None


def batch_scores_of(production: ProductionDataResource, day: str,
                    manifest: dict) -> DayScores:
    """The score sketches of a batch day's rows, read a record batch at a time (only
    its answers, no features); parts with no probabilities (a regressor's) are counted
    from their footers, not read."""
    import pyarrow.parquet as pq

    version = str(manifest["model_version"])
    try:
        parts = manifest_parts(production.batch_output_dir_of(day), manifest)
        schema = pq.ParquetFile(parts[0]).schema_arrow.names if parts else []
        if not any(str(c).startswith("proba_") for c in schema):
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
            return DayScores({}, {NO_PROBABILITIES: rows} if rows else {},
                             {version: rows} if rows else {})
    except OSError as exc:  # the parts replaced while being read
        raise Failure(f"the batch parts of {day} changed while being read ({exc}): "
                      f"materialize production_data of {day} again") from None
    scores = DayScores({})
    for batch in _batches(production, day, manifest, features=False):
        scores = scores.merged(sketch_rows(batch))
    return scores


# -- readers of a day's rows ------------------------------------------------------------

def _kept_in_place(production: ProductionDataResource, day: str,
                   metadata: Mapping[str, Any], features: bool = True
                   ) -> Iterator[pd.DataFrame]:
    """The rows production_data of `day` kept in place, a record batch or a log segment
    at a time: the log's (as its frame would), then the batch parts'."""
    manifest = parts_manifest(production, day, metadata) if in_parts(metadata) else None
    if in_log(metadata):
        yield from log_rows(production, day, metadata, features=features)
    if manifest is not None:
        yield from _batches(production, day, manifest, features=features)


def with_rows_in_place(load: Callable[[], pd.DataFrame | None], metadata: Mapping[str, Any],
                       production: ProductionDataResource, day: str
                       ) -> Callable[[], pd.DataFrame | None]:
    """`load` (production_data's frame of `day`), plus the rows it kept in place, read
    back whole: only where a day's sketch cannot answer."""
    if not in_parts(metadata) and not in_log(metadata):
        return load

    def both() -> pd.DataFrame | None:
        kept = list(_kept_in_place(production, day, metadata))  # checked before loading
        frame = load()
        return pd.concat([f.drop(columns="model_name", errors="ignore") for f in (
            frame, *kept) if f is not None and len(f)], ignore_index=True)

    return both


def in_place_sketcher(load: Callable[[], pd.DataFrame | None], metadata: Mapping[str, Any],
                      production: ProductionDataResource, day: str
                      ) -> Callable[[SketchBasis], DriftSketch] | None:
    """For a day that kept rows in place: its drift sketch on any basis, built from its
    frame (`load`) and what it kept in place a record batch or segment at a time."""
    if not in_parts(metadata) and not in_log(metadata):
        return None

    def build(basis: SketchBasis) -> DriftSketch:
        kept = _kept_in_place(production, day, metadata)
        first = next(kept, None)  # what it names is checked before the frame is loaded
        frame = load()
        sketch = basis.sketch(frame if frame is not None else pd.DataFrame())
        for rows in chain([first] if first is not None else [], kept):
            sketch = merge_sketches([sketch, basis.sketch(rows)])
        return sketch

    return build


def scores_in_place(production: ProductionDataResource, day: str,
                    metadata: Mapping[str, Any]) -> DayScores:
    """The score sketches of the rows production_data of `day` kept in place (the log's
    a segment at a time without features, the parts' as `batch_scores_of`)."""
    scores = DayScores({})
    if in_log(metadata):
        for rows in log_rows(production, day, metadata, features=False):
            scores = scores.merged(sketch_rows(rows))
    if in_parts(metadata):
        scores = scores.merged(batch_scores_of(production, day, parts_manifest(
            production, day, metadata)))
    return scores


def with_labelled_in_place(rows: pd.DataFrame, metadata: Mapping[str, Any],
                           production: ProductionDataResource, day: str,
                           labels: pd.DataFrame) -> tuple[pd.DataFrame, int, str | None]:
    """production_data's frame of `day` (`rows`), plus the rows it kept in place whose
    labels arrived (only those are read: by request id from the log, the answer columns
    from the parts); the day's row count; and its champion as with every row in memory
    (None: from the rows). With every row in memory they come in the order log, batch,
    landing, so the last champion answer is a landing row's, else the batch's, else the
    log's."""
    if not in_parts(metadata) and not in_log(metadata):
        return rows, len(rows), None
    ids = labels["request_id"].astype(str) if len(labels) else pd.Series(dtype=str)
    source = rows["source"] if "source" in rows else pd.Series("", index=rows.index)
    frames, champions = [rows], [champion_version(rows[source == LANDING_SOURCE])]
    if in_parts(metadata):
        manifest = parts_manifest(production, day, metadata)
        frames.append(production.batch_labelled(day, manifest, ids).drop(
            columns="model_name", errors="ignore"))
        champions.append(str(manifest["model_version"]))
    else:
        champions.append(champion_version(rows[source == BATCH_SOURCE]))
    if in_log(metadata):
        through, lineage = _log_scope(production, day, metadata)
        try:
            logged = production.predictions_through(ids, day, through) if len(ids) else None
        except PredictionLogError as exc:
            raise Failure(f"the prediction log of {day} cannot be read: {exc}") from None
        _log_scope(production, day, metadata)  # and nothing landed below the mark meanwhile
        frames.append(LogDay().take(logged, lineage) if logged is not None and len(logged)
                      else pd.DataFrame())
        champions.append(str(metadata["log_champion_version"].value) or None)
    else:
        champions.append(champion_version(rows[source == LOG_SOURCE]))
    total = len(rows) + in_parts(metadata) + in_log(metadata)
    labelled = pd.concat([f for f in frames if len(f)] or [rows], ignore_index=True)
    return labelled, total, next((c for c in champions if c), None)
