"""Where production traffic is read from: the API's prediction log (SQLite file or
PostgreSQL), a landing directory of labelled daily drops, a directory of
late-arriving labels, and the daily batch scoring's input and output directories."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from ml_assets.core.batch.shards import MANIFEST, manifest_parts, read_day, read_manifest
from ml_assets.core.data.logged_rows import answered_rows
from ml_assets.core.data.production_rows import (
    LabelFiles,
    Lineage,
    SkippedFile,
    labelled_rows,
    read_label_files,
    read_landing_files,
    scope_rows,
)
from ml_assets.core.prediction_log import (
    LogMark,
    PredictionLog,
    open_prediction_log,
    resolve_log_location,
)

# Read-only PostgreSQL logs by (process, URL): a sensor asks for every day's row count
# each tick, over one connection rather than one per question. Keyed by process id so
# that a forked child never uses its parent's connection.
_PG_READERS: dict[tuple[int, str], PredictionLog] = {}
_PG_READERS_LOCK = threading.Lock()

# Daily batch scoring (ml_assets/batch.py) writes <batch_output_dir>/<day>/BATCH_MANIFEST
# naming the day's Parquet parts (ml_assets/core/batch/shards.py).
BATCH_MANIFEST = MANIFEST
# Its columns besides the features (and proba_<class> per class of a classifier).
BATCH_META_COLUMNS = ("request_id", "model_name", "model_version", "scored_at",
                      "prediction", "source_file")
BATCH_SOURCE = "batch"


def _needed(names: list[str], features: list[str]) -> list[str]:
    """The columns of batch parts production_data reads (features, ids, outputs)."""
    probabilities = [c for c in names if str(c).startswith("proba_")]
    features = features or [c for c in names if c not in BATCH_META_COLUMNS
                            and c not in probabilities]
    return [*features, "request_id", "model_name", "model_version", "prediction",
            *probabilities]


def _batch_shaped(frame: pd.DataFrame) -> pd.DataFrame:
    """Batch parts' rows as production_data holds them (ids as text, source="batch")."""
    if frame.empty:
        return pd.DataFrame()
    for column in ("request_id", "model_name", "model_version"):
        frame[column] = frame[column].astype(str).to_numpy()
    for column in (c for c in frame.columns if str(c).startswith("proba_")):
        frame[column] = frame[column].to_numpy(dtype=float)
    frame["source"] = BATCH_SOURCE
    return frame


def day_folder(root: str | Path, day: str) -> Path:
    """`root`/`day` for a UTC day given as YYYY-MM-DD (anything else is refused, so a
    day can never name a path outside `root`)."""
    try:
        parsed = date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day {day!r} is not a date (YYYY-MM-DD)") from None
    if parsed.isoformat() != day:
        raise ValueError(f"day {day!r} is not written YYYY-MM-DD")
    return Path(root) / day


def _day_folders(root: Path) -> dict[str, float]:
    """day -> newest CSV/Parquet file mtime, for every day directory under `root`."""
    if not root.is_dir():
        return {}
    days = {}
    for folder in root.iterdir():
        files = [f for f in folder.glob("*") if f.suffix.lower() in (".csv", ".parquet")]
        if folder.is_dir() and files:
            days[folder.name] = max(f.stat().st_mtime for f in files)
    return days


class ProductionDataResource(ConfigurableResource):
    """Reads one UTC day of production rows (features, outputs, labels where known)."""

    prediction_log_path: str = Field(description="SQLite prediction log the API appends to "
                                     "(read when prediction_log_url is empty).")
    prediction_log_url: str = Field(
        default="", description="PostgreSQL prediction log the API appends to "
        "(postgresql://user:password@host:port/database); when set it wins over "
        "prediction_log_path.")
    landing_dir: str = Field(description="Labelled daily drops: <dir>/<YYYY-MM-DD>/*.csv|"
                             "*.parquet with the feature columns and the target.")
    labels_dir: str = Field(description="Late labels: <dir>/*.csv with request_id,label.")
    batch_input_dir: str = Field(
        default="", description="Daily batch scoring input: <dir>/<YYYY-MM-DD>/*.csv|"
        "*.parquet with the champion's feature columns (ML_BATCH_INPUT_DIR).")
    batch_output_dir: str = Field(
        default="", description="Daily batch scoring output: <dir>/<YYYY-MM-DD>/"
        f"{BATCH_MANIFEST} and the Parquet parts it names, one scored row per input row "
        "(ML_BATCH_OUTPUT_DIR).")
    log_rows_in_memory: int = Field(
        default=2_000_000, ge=0, description="A prediction-log day of more rows is read "
        "a segment at a time and stays in the log: production_data holds its sketches, "
        "not its rows; live_performance reads back only the rows whose labels arrived "
        "(ML_LOG_ROWS_IN_MEMORY).")
    log_segment_rows: int = Field(
        default=65_536, ge=1, description="Rows per segment when a prediction-log day "
        "above log_rows_in_memory is read (whole commits: a segment may hold up to one "
        "commit's rows more).")
    batch_rows_in_memory: int = Field(
        default=2_000_000, ge=0, description="A batch-scored day of more rows stays in "
        "its Parquet parts: production_data holds the prediction log's and landing rows "
        "and names the parts; drift and estimated performance read the parts' sketches, "
        "live_performance only the rows whose labels arrived (ML_BATCH_ROWS_IN_MEMORY).")

    def prediction_days(self) -> list[date]:
        if not self._log_exists():
            return []
        return self._log().days()

    def row_count(self, day: str) -> int:
        """How many predictions `day` holds (cheap: no rows are decoded)."""
        if not self._log_exists():
            return 0
        return self._log().row_count(day)

    def predictions(self, day: str, features: bool = True) -> pd.DataFrame:
        """The API's predictions of `day` (empty frame when there are none); without the
        feature columns (not decoded) when not `features`."""
        if not self._log_exists():
            return pd.DataFrame()
        return self._log().read_day(day, features=features)

    def predictions_of(self, request_ids: Iterable[str],
                       features: bool = True) -> pd.DataFrame:
        """The API's logged rows of these requests, whatever their day (empty frame when
        there are none): found through the log's request-id index, so only the batches
        holding them are decoded, not whole days."""
        if not self._log_exists():
            return pd.DataFrame()
        return self._log().read_requests(request_ids, features=features)

    def log_mark(self, day: str) -> LogMark:
        """How far `day`'s log reaches now (its newest batch, the rows up to it)."""
        if not self._log_exists():
            return LogMark(0, 0)
        return self._log().day_mark(day)

    def log_rows_through(self, day: str, through: int) -> int:
        """`day`'s logged rows in batches up to `through` (counted, not decoded)."""
        if not self._log_exists():
            return 0
        return self._log().day_mark(day, through).rows

    def log_segments(self, day: str, through: int,
                     features: bool = True) -> Iterator[pd.DataFrame]:
        """`day`'s logged rows up to batch `through` (a `log_mark`), a segment of about
        `log_segment_rows` rows at a time (whole commits), as `predictions` reads them."""
        if not self._log_exists():
            return iter(())
        return self._log().read_segments(day, through, self.log_segment_rows,
                                         features=features)

    def predictions_through(self, request_ids: Iterable[str], day: str,
                            through: int) -> pd.DataFrame:
        """The logged rows of these requests on `day`, in batches up to `through`."""
        if not self._log_exists():
            return pd.DataFrame()
        return self._log().read_requests(request_ids, day=day, through=through)

    def _log_url(self) -> str:
        url = self.prediction_log_url
        if isinstance(url, EnvVar):  # used outside Dagster, which would have resolved it
            url = url.get_value() or ""
        return url.strip()

    def _log_exists(self) -> bool:
        """False only for a SQLite log whose file is not there yet (a PostgreSQL log
        reads as empty until its table exists)."""
        if self._log_url():
            return True
        kind, where = resolve_log_location(self.prediction_log_path)
        return kind != "sqlite" or Path(where).exists()

    def _log(self) -> PredictionLog:
        """The prediction log, read-only: the URL's when set, else the path's."""
        url = self._log_url()
        if not url:
            return open_prediction_log(self.prediction_log_path, read_only=True)
        key = (os.getpid(), url)
        with _PG_READERS_LOCK:
            if key not in _PG_READERS:  # connects on first read
                _PG_READERS[key] = open_prediction_log(url, read_only=True)
            return _PG_READERS[key]

    def landing_days(self) -> dict[str, float]:
        """day -> newest file mtime, for every day directory in the landing area."""
        return _day_folders(Path(self.landing_dir))

    def landing_files(self, day: str, target: str) -> tuple[pd.DataFrame, list[SkippedFile]]:
        """`day`'s labelled drops, read file by file: a file that cannot be read, has
        no `target` column, or has other columns than the day's first file is left out
        and named (with the reason) instead of failing the day."""
        folder = day_folder(self.landing_dir, day)
        if not folder.is_dir():
            return pd.DataFrame(), []
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".csv", ".parquet"))
        return read_landing_files(files, target)

    def landing(self, day: str, target: str) -> pd.DataFrame:
        """`day`'s readable labelled drops (`landing_files` names the others)."""
        return self.landing_files(day, target)[0]

    def batch_input_days(self) -> dict[str, float]:
        """day -> newest file mtime, for every day directory of batch input."""
        return _day_folders(Path(self.batch_input_dir)) if self.batch_input_dir else {}

    def batch_output_dir_of(self, day: str) -> Path:
        """Where batch scoring writes (and this resource reads) `day`'s parts."""
        if not self.batch_output_dir:
            raise ValueError("no batch output directory is configured (batch_output_dir, "
                             "ML_BATCH_OUTPUT_DIR)")
        return day_folder(self.batch_output_dir, day)

    def batch_manifest_path(self, day: str) -> Path:
        """`day`'s manifest: written last, when every shard of the day is scored."""
        return self.batch_output_dir_of(day) / BATCH_MANIFEST

    def batch_predictions(self, day: str) -> pd.DataFrame:
        """`day`'s batch-scored rows shaped like production_data's logged rows: the
        feature columns, request_id, model_name, model_version, prediction (the class, or a
        regressor's value), proba_<class>... and source="batch". Empty when the day
        was not completely batch-scored (or no output directory is configured)."""
        if not self.batch_output_dir:
            return pd.DataFrame()
        folder = self.batch_output_dir_of(day)
        try:
            # only the columns below, converted once: no copy of the features
            frame = read_day(folder, columns=_needed)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise ValueError(f"batch predictions of {day} ({folder}) cannot be read: "
                             f"{exc}") from exc
        return _batch_shaped(frame)

    def batch_manifest(self, day: str) -> dict | None:
        """`day`'s batch manifest (rows, model_name, model_version, plan_id, parts), or
        None when the day was not completely batch-scored."""
        if not self.batch_output_dir:
            return None
        return read_manifest(self.batch_output_dir_of(day))

    def batch_batches(self, day: str, manifest: dict, features: bool = True,
                      batch_rows: int = 65_536) -> Iterator[pd.DataFrame]:
        """`manifest`'s rows as `batch_predictions` shapes them, a record batch at a time
        (bounded memory: one batch of one part converted at once); without the feature
        columns (not read) when not `features`."""
        import pyarrow.parquet as pq

        folder = self.batch_output_dir_of(day)
        for part in manifest_parts(folder, manifest):
            file = pq.ParquetFile(part, pre_buffer=False)
            columns = _needed(file.schema_arrow.names, list(manifest.get("feature_columns")
                                                            or []))
            if not features:
                columns = [c for c in columns if c in BATCH_META_COLUMNS
                           or str(c).startswith("proba_")]
            for batch in file.iter_batches(batch_size=batch_rows, columns=columns,
                                           use_threads=False):
                yield _batch_shaped(batch.to_pandas())

    def batch_labelled(self, day: str, manifest: dict,
                       request_ids: Iterable[str]) -> pd.DataFrame:
        """`manifest`'s rows whose request_id is among `request_ids` (labels arrived),
        shaped as `batch_predictions` shapes them without the features (live metrics
        need the answers only); only those rows are converted."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = pa.array(sorted({str(r) for r in request_ids}), type=pa.string())
        if not len(wanted):
            return pd.DataFrame()
        folder = self.batch_output_dir_of(day)
        tables = []
        for part in manifest_parts(folder, manifest):
            file = pq.ParquetFile(part, pre_buffer=False)
            columns = [c for c in file.schema_arrow.names
                       if c in BATCH_META_COLUMNS or str(c).startswith("proba_")]
            for batch in file.iter_batches(batch_size=65_536, columns=columns,
                                           use_threads=False):
                table = pa.Table.from_batches([batch])
                hit = pc.is_in(table["request_id"].cast(pa.string()),
                                       value_set=wanted)
                if pc.any(hit).as_py():
                    tables.append(table.filter(hit))
        if not tables:
            return pd.DataFrame()
        return _batch_shaped(pa.concat_tables(tables).to_pandas())

    def label_files(self) -> LabelFiles:
        """Every readable late label (request_id, label; later files win on duplicates)
        and the files left out, each named with the reason (not UTF-8 CSV, no
        request_id/label columns)."""
        root = Path(self.labels_dir)
        return read_label_files(sorted(root.glob("*.csv")) if root.is_dir() else [])

    def labels(self) -> pd.DataFrame:
        """Every readable late label (request_id, label); `label_files` names the files
        left out."""
        return self.label_files().labels


@dataclass(frozen=True)
class LabelledProduction:
    """Labelled production rows of one lineage, as training rows, with what was left
    out: rows of other models or datasets (count per reason) and unreadable files."""

    rows: pd.DataFrame
    excluded: dict[str, int]
    skipped: list[SkippedFile]


def labelled_production_rows(production: ProductionDataResource, columns: list[str],
                             target: str, lineage: Lineage) -> LabelledProduction:
    """Every production row of `lineage` whose true label is known, as training rows
    (`columns`, target last): the lineage's logged predictions of the labelled requests
    (looked up by request id, not by reading every day) joined with their labels, plus
    the labelled landing drops (the dataset's own files: a file without `target` or
    unreadable is left out and named). `excluded` counts the labelled rows of other
    lineages."""
    frames = []
    excluded: dict[str, int] = {}
    label_files = production.label_files()
    skipped = list(label_files.skipped)
    if len(label_files.labels):
        logged = production.predictions_of(label_files.labels["request_id"].astype(str))
        scoped = scope_rows(answered_rows(logged), lineage)
        excluded.update(scoped.excluded)
        joined = labelled_rows(scoped.rows, label_files.labels, columns, target)
        if len(joined):
            frames.append(joined)
    for landing_day in sorted(production.landing_days()):
        landed, bad = production.landing_files(landing_day, target)
        skipped.extend(bad)
        if len(landed):
            frames.append(landed.reindex(columns=columns))
    rows = (pd.concat(frames, ignore_index=True)[columns] if frames
            else pd.DataFrame(columns=columns))
    return LabelledProduction(rows, excluded, skipped)
