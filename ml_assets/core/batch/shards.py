"""A day of batch input cut into shards (a range of a Parquet file's row groups, or a CSV
file whole), each with a fixed output name inside its plan's directory, and the day's
manifest: the parts that make it complete, read back as one frame.

Layout under <ML_BATCH_OUTPUT_DIR>/<day>/: `parts/<plan_id>/part-<n>.parquet` (one per
shard, written by `shard_scoring.score_shard`) and `manifest.json` (written last,
atomically, naming the parts and their rows). The plan id hashes the input files (name,
size, modification time), the model version and the shard size, so a re-run of a shard
of the same plan replaces its part (never a second copy), while a run on changed input
writes a new plan directory and the last complete day stays readable until it is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ml_assets.core.batch.scoring import BatchInputError, file_keys

# Large enough that a step's fixed cost is a small share of it: under the multiprocess
# executor a step starts an interpreter importing Dagster, MLflow, scikit-learn and ONNX
# Runtime and loads the model (seconds), while a step scores about 200,000 rows/s on a
# free core (30 features, a 50-tree forest): 4,000,000 rows is about 20 s of scoring.
# Memory does not grow with it (one row group and one record batch at a time); a
# shard never spans two files, so a day of small files still has a shard per file.
DEFAULT_SHARD_ROWS = 4_000_000
PARTS_DIR = "parts"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ml_assets.batch.manifest/1"


@dataclass(frozen=True)
class FileStamp:
    """What identifies an input file's content for a plan: size and modification time."""

    name: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, file: Path) -> FileStamp:
        stat = file.stat()
        return cls(file.name, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Shard:
    """Rows of one input file scored by one step: Parquet row groups [start, stop), or
    (row_groups None) a whole CSV file. `first_row` counts the file's data rows before
    the shard (request ids go on from it); `rows` is None for a CSV (known once read)."""

    index: int
    file: str
    key: str
    stamp: FileStamp
    row_groups: tuple[int, int] | None
    first_row: int
    rows: int | None

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def file_name(self) -> str:
        return Path(self.file).name


@dataclass(frozen=True)
class ShardPlan:
    """A day's shards, the model version every shard uses, and when the day was scored
    (one `scored_at` for all its rows, so a re-run shard writes the same rows)."""

    day: str
    plan_id: str
    model_name: str
    model_version: str
    scored_at: str
    shard_rows: int
    shards: tuple[Shard, ...]

    @property
    def planned_rows(self) -> int | None:
        """Input rows of the day when every shard's count is known (no CSV), else None."""
        counts = [s.rows for s in self.shards]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def parts_dir(self, day_dir: Path) -> Path:
        return day_dir / PARTS_DIR / self.plan_id

    def part_path(self, day_dir: Path, shard: Shard) -> Path:
        return self.parts_dir(day_dir) / f"{shard.name}.parquet"

    def sketch_path(self, day_dir: Path, shard: Shard) -> Path:
        """The part's drift sketch, beside it."""
        return self.parts_dir(day_dir) / f"{shard.name}.sketch.npz"

    def scores_path(self, day_dir: Path, shard: Shard) -> Path:
        """The part's score sketch (what performance estimation reads), beside it."""
        return self.parts_dir(day_dir) / f"{shard.name}.scores.npz"


def parquet_row_groups(file: Path) -> list[int]:
    """Rows per row group of a Parquet file (its footer only); unreadable: BatchInputError
    worded as training's reader words it."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(file).metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; re-raised in words
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise BatchInputError(file.name, "unreadable", f"could not read {file} as Parquet "
                              f"({reason}): export it again as Parquet or CSV") from None
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def _row_group_ranges(sizes: list[int], shard_rows: int) -> list[tuple[int, int]]:
    """Consecutive row groups gathered while they hold at most `shard_rows` rows (a row
    group larger than that is a shard alone: a row group is never split)."""
    ranges, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and held + size > shard_rows:
            ranges.append((start, i))
            start, held = i, 0
        held += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


def plan_shards(files: list[Path], *, day: str, model_name: str, model_version: str,
                scored_at: str, shard_rows: int = DEFAULT_SHARD_ROWS) -> ShardPlan:
    """The day's shards in file order: each Parquet file's row groups in ranges of at
    most `shard_rows` rows, each CSV file whole. An unreadable Parquet file or one
    without rows raises BatchInputError (no shard is planned then)."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    if not files:
        raise ValueError("no input files to plan")
    keys = file_keys(files)
    shards: list[Shard] = []
    stamps = []
    for file in files:
        stamp = FileStamp.of(file)
        stamps.append(stamp)
        if file.suffix.lower() != ".parquet":
            shards.append(Shard(len(shards), str(file), keys[file], stamp, None, 0, None))
            continue
        sizes = parquet_row_groups(file)
        if sum(sizes) == 0:
            raise BatchInputError(file.name, "no rows", f"{file} has a header but 0 data "
                                  "rows: add rows or remove the file")
        first = 0
        for start, stop in _row_group_ranges(sizes, shard_rows):
            rows = sum(sizes[start:stop])
            shards.append(Shard(len(shards), str(file), keys[file], stamp, (start, stop),
                                first, rows))
            first += rows
    identity = json.dumps([day, model_name, model_version, shard_rows,
                           [asdict(s) for s in stamps]])
    plan_id = hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()
    return ShardPlan(day, plan_id, model_name, model_version, scored_at, shard_rows,
                     tuple(shards))


def check_unchanged(shard: Shard) -> None:
    """BatchInputError when the shard's file is gone or changed since it was planned."""
    file = Path(shard.file)
    if not file.is_file():
        raise BatchInputError(shard.file_name, "changed", f"{file} was removed after the day "
                              "was planned: score the whole day again")
    if FileStamp.of(file) != shard.stamp:
        raise BatchInputError(shard.file_name, "changed", f"{file} changed after the day was "
                              "planned (size or modification time): score the whole day "
                              "again, so that every shard reads the same input")


# -- the manifest -------------------------------------------------------------------------

def write_json_atomically(data: dict, path: Path) -> None:
    """`data` as JSON at `path`: a temporary file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_manifest(day_dir: Path) -> dict | None:
    """The day's manifest, or None when the day was never completely scored."""
    path = day_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as a batch manifest: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def manifest_parts(day_dir: Path, manifest: dict) -> list[Path]:
    """The part files a manifest names, refused if one would lie outside the day."""
    root = day_dir.resolve()
    parts = []
    for part in manifest["parts"]:
        path = (day_dir / part["path"]).resolve()
        if root not in path.parents:
            raise ValueError(f"manifest of {day_dir} names {part['path']!r}, outside the day")
        parts.append(path)
    return parts


def manifest_sketches(day_dir: Path, manifest: dict, basis: str) -> list[Path] | None:
    """The drift sketches of a manifest's parts when every part has one on `basis` (a
    `SketchBasis.digest`), else None (the day's drift then reads its rows)."""
    parts = manifest.get("parts") or []
    if not parts or any(p.get("sketch_basis") != basis or not p.get("sketch") for p in parts):
        return None
    named = manifest_parts(day_dir, {"parts": [{"path": p["sketch"]} for p in parts]})
    return named if all(path.is_file() for path in named) else None


def manifest_score_sketches(day_dir: Path, manifest: dict) -> list[Path] | None:
    """The score sketches of a manifest's parts when every part has one, else None
    (the day's estimate then reads its rows)."""
    parts = manifest.get("parts") or []
    if not parts or any(not p.get("scores") for p in parts):
        return None
    named = manifest_parts(day_dir, {"parts": [{"path": p["scores"]} for p in parts]})
    return named if all(path.is_file() for path in named) else None


# (the parts' column names, the manifest's feature columns) -> the columns to read
ColumnPick = Callable[[list[str], list[str]], list[str]]


def read_day(day_dir: Path, columns: ColumnPick | None = None) -> pd.DataFrame:
    """Every row of a completely scored day (the manifest's parts, in order), with the
    columns `columns` picks (all by default); an empty frame when the day has no
    manifest. ValueError names a part that lacks a picked column. Parts of one schema
    (every Parquet input) are read as one Arrow table converted once, its buffers
    released as they convert; parts that differ (CSV files typed apart) are concatenated
    by pandas, which upcasts. Either way the frame is what pandas concatenating the
    parts gives (a categorical whose parts' categories differ becomes text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_manifest(day_dir)
    if manifest is None:
        return pd.DataFrame()
    features = list(manifest.get("feature_columns", []))
    parts = manifest_parts(day_dir, manifest)
    frame = pd.DataFrame()
    if parts:
        wanted: list[str] = []
        tables: list[pa.Table] = []
        for path in parts:  # each part's footer read once
            with pq.ParquetFile(path) as file:
                names = file.schema_arrow.names
                if not tables:
                    wanted = list(dict.fromkeys(names if columns is None
                                                else columns(names, features)))
                lacking = [c for c in wanted if c not in names]
                if lacking:
                    raise ValueError(f"{path.name} lacks the column(s) {', '.join(lacking)}")
                tables.append(file.read(columns=wanted))
        if all(table.schema.equals(tables[0].schema) for table in tables):
            table = _same_categories(pa.concat_tables(tables))
            tables.clear()
            frame = table.to_pandas(self_destruct=True)
            del table
        else:
            frame = pd.concat([table.to_pandas() for table in tables], ignore_index=True)
    frame.attrs["feature_columns"] = features
    return frame


def _same_categories(table):
    """Dictionary (categorical) columns whose chunks have different dictionaries decoded
    to their values, as pandas concatenating categoricals of different categories
    gives text; the others left as they are."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            chunks = table.column(i).chunks
            if any(not chunk.dictionary.equals(chunks[0].dictionary) for chunk in chunks[1:]):
                table = table.set_column(i, field.name,
                                         table.column(i).cast(field.type.value_type))
    return table


def remove_other_plans(day_dir: Path, plan: ShardPlan) -> list[str]:
    """Part directories of other plans, and files of this plan's directory that are no
    part of it (temporary files a killed step left), removed; returns what went."""
    removed = []
    parts_root = day_dir / PARTS_DIR
    if parts_root.is_dir():
        for entry in parts_root.iterdir():
            if entry.name != plan.plan_id:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry.name)
    keep = {path(day_dir, s).name for s in plan.shards
            for path in (plan.part_path, plan.sketch_path, plan.scores_path)}
    own = plan.parts_dir(day_dir)
    if own.is_dir():
        for entry in own.iterdir():
            if entry.name not in keep and entry.is_file():
                entry.unlink()
                removed.append(f"{plan.plan_id}/{entry.name}")
    return removed
