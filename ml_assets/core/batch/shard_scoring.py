"""One shard of a day's batch input scored in bounded memory: record batches streamed
from the file, validated against the champion's feature schema, answered by its compiled
(ONNX) graph when it passed parity (the Pipeline answers rows the graph cannot: none
at all, near ties, non-finite values), and written as Parquet to a temporary file that
replaces the shard's part only when the checks of what was written pass. `publish`
then says whether the day is complete and writes its manifest."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.compilation import read_compiled
from ml_assets.core.artifacts.loading import LoadedModel, load_pipeline
from ml_assets.core.artifacts.onnx.runtime import CompiledModel, near_ties
from ml_assets.core.batch.scoring import (
    ROW_COUNT_CHECK,
    BatchInputError,
    CheckOutcome,
    output_checks,
    read_input,
    validate_input,
)
from ml_assets.core.batch.shards import (
    MANIFEST,
    MANIFEST_FORMAT,
    Shard,
    ShardPlan,
    check_unchanged,
    remove_other_plans,
    write_json_atomically,
)
from ml_assets.core.data.datasets import CsvOptions, parse_dates
from ml_assets.core.data.schemas import feature_columns
from ml_assets.core.drift.scoring import model_outputs, prediction_columns
from ml_assets.core.drift.sketch import DriftSketch
from ml_assets.core.drift.sketch_store import SketchBasis, write_sketch
from ml_assets.core.modeling.tasks import is_regression_model

RUNTIMES = ("auto", "onnx", "sklearn")
BATCH_ROWS = 65_536  # rows per record batch: bounds a step's memory whatever the shard
SHARDS_CHECK = "all_shards_written"


@dataclass(frozen=True)
class ScoringModel:
    """The champion as batch scoring runs it: its Pipeline, and its compiled graph when
    it passed parity and the runtime setting allows it (`runtime_reason`: why not)."""

    loaded: LoadedModel
    compiled: CompiledModel | None
    runtime_reason: str
    regression: bool

    @property
    def runtime(self) -> str:
        return "sklearn" if self.compiled is None else "onnx"


def open_model(directory: Path, version_tags: dict, runtime: str = "auto",
               source: str | None = None) -> ScoringModel:
    """A downloaded model version (its directory and registry tags) opened by the one
    safe loader, with its compiled graph per `runtime`: 'auto' (the graph when it passed
    parity), 'onnx' (required: ValueError without one), 'sklearn' (never)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    loaded = load_pipeline(str(directory), source=source)
    regression = is_regression_model(loaded.pipeline)
    if runtime == "sklearn":
        return ScoringModel(loaded, None, "runtime sklearn", regression)
    features = list(feature_columns(loaded.schema, loaded.target))
    classes = None if regression else list(loaded.pipeline.classes_)
    task = "regression" if regression else "binary" if len(classes or ()) == 2 else "multiclass"
    compiled, reason = read_compiled(directory, version_tags, features, task, classes)
    if compiled is None and runtime == "onnx":
        raise ValueError(f"runtime onnx requires a compiled graph that passed parity: {reason}")
    return ScoringModel(loaded, compiled, reason, regression)


def answer(model: ScoringModel, rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The model's answer per validated row, as `model_outputs` gives it ('prediction',
    'proba_<class>'), and how many rows the Pipeline answered. The graph answers the
    others; the Pipeline takes rows with a missing categorical (the graph tells None
    from NaN, the Pipeline's imputer may not), near ties and non-finite answers, as the
    API does."""
    compiled = model.compiled
    if compiled is None or not len(rows):
        return model_outputs(model.loaded.pipeline, rows)[0], len(rows)
    pipeline = model.loaded.pipeline
    strings = [name for name, kind in zip(compiled.feature_names, compiled.kinds, strict=True)
               if kind == "string"]
    missing_text = (rows[strings].isna().any(axis=1).to_numpy() if strings
                    else np.zeros(len(rows), dtype=bool))
    if model.regression:
        values = compiled.predict_values_frame(rows)
        slow = np.flatnonzero(~np.isfinite(values) | missing_text)
        if slow.size:
            values[slow] = pipeline.predict(rows.iloc[slow])
        return prediction_columns(values, index=rows.index, regression=True)[0], slow.size
    proba = compiled.predict_proba_frame(rows)
    finite = np.isfinite(proba).all(axis=1)
    np.clip(proba, 0.0, 1.0, out=proba)  # float32 sums land a hair outside [0, 1]
    slow = np.flatnonzero(~finite | missing_text | near_ties(proba))
    if slow.size:
        proba[slow] = pipeline.predict_proba(rows.iloc[slow])
    classes = pipeline.classes_
    return prediction_columns(classes[proba.argmax(axis=1)].astype(str), proba,
                              [str(c) for c in classes], index=rows.index)[0], slow.size


@dataclass
class ShardResult:
    """What one shard step did: rows read and written, rows the Pipeline answered, the
    checks of what it wrote (its part replaced only when all passed), ignored columns."""

    index: int
    file: str
    part: str
    input_rows: int
    written_rows: int
    pipeline_rows: int
    runtime: str
    outcomes: list[CheckOutcome]
    ignored: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    sketch: str = ""  # the part's drift sketch beside it (relative path), if any
    sketch_basis: str = ""  # `SketchBasis.digest` of the profile it is on

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)


def _batches(shard: Shard, csv_options: CsvOptions, features: list[str],
             batch_rows: int) -> Iterator[pd.DataFrame]:
    """The shard's rows, `batch_rows` at a time, indexed by their 0-based data row in the
    file (validation messages count from it); a Parquet shard reads only the feature
    columns (the others are named in `attrs['ignored']`)."""
    file = Path(shard.file)
    if shard.row_groups is None:
        frame = read_input(file, csv_options)
        for start in range(0, len(frame), batch_rows):
            chunk = frame.iloc[start:start + batch_rows]
            chunk.attrs["ignored"] = sorted(set(frame.columns) - set(features))
            yield chunk
        return
    import pyarrow.parquet as pq

    # No pre-buffering, and one row group at a time: asked for a range of row groups,
    # the reader fetches all of them up front (memory growing with the shard).
    reader = pq.ParquetFile(file, pre_buffer=False)
    names = reader.schema_arrow.names
    wanted = [name for name in names if name in set(features)]
    ignored = sorted(set(names) - set(wanted))
    offset = shard.first_row
    for group in range(*shard.row_groups):
        for batch in reader.iter_batches(batch_size=batch_rows, columns=wanted,
                                         row_groups=[group], use_threads=False):
            frame = parse_dates(batch.to_pandas())
            frame.index = pd.RangeIndex(offset, offset + len(frame))
            frame.attrs["ignored"] = ignored
            offset += len(frame)
            yield frame


def _output_table(rows: pd.DataFrame, outputs: pd.DataFrame, plan: ShardPlan,
                  shard: Shard, scored_at: pd.Timestamp):
    """One output row per input row, in the columns the day always had, as an
    Arrow table built column by column (no pandas copy of the features)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(rows, preserve_index=False)
    n = len(rows)
    prefix = f"batch-{plan.day}-{shard.key}-"
    numbers = (rows.index.to_numpy() + 1).astype(str)
    columns = {
        "request_id": pa.array(np.char.add(prefix, numbers), type=pa.string()),
        "model_name": pa.repeat(pa.scalar(plan.model_name), n),
        "model_version": pa.repeat(pa.scalar(str(plan.model_version)), n),
        "scored_at": pa.repeat(pa.scalar(scored_at.to_pydatetime(),
                                         type=pa.timestamp("us", tz="UTC")), n),
        **{str(c): pa.array(outputs[c].to_numpy()) for c in outputs.columns},
        "source_file": pa.repeat(pa.scalar(shard.file_name), n),
    }
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table


# Dictionary encoding only where values repeat: tried on every column, Parquet spends
# time building dictionaries of distinct floats and ids before falling back.
_DICTIONARY_COLUMNS = ["model_name", "model_version", "prediction", "source_file"]


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM, reset by exec unlike ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def merge_outcomes(groups: list[list[CheckOutcome]]) -> list[CheckOutcome]:
    """Check outcomes of several pieces as one per check: passed when every piece
    passed; numbers in metadata summed (maxima for max_*); the first failing piece's
    description (else the first's)."""
    merged: dict[str, CheckOutcome] = {}
    for group in groups:
        for outcome in group:
            seen = merged.get(outcome.name)
            if seen is None:
                merged[outcome.name] = outcome
                continue
            metadata = dict(seen.metadata)
            for key, value in outcome.metadata.items():
                if isinstance(value, int | float) and isinstance(metadata.get(key), int | float):
                    metadata[key] = (max(metadata[key], value) if key.startswith("max_")
                                     else metadata[key] + value)
            description = (outcome.description if seen.passed and not outcome.passed
                           else seen.description)
            merged[outcome.name] = CheckOutcome(outcome.name, seen.passed and outcome.passed,
                                                description, metadata)
    return list(merged.values())


def check_written(path: Path, input_rows: int, regression: bool,
                  batch_rows: int = BATCH_ROWS) -> tuple[int, list[CheckOutcome]]:
    """(rows in the Parquet file, `output_checks` of what it holds), read back in
    record batches of the output columns only."""
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(path, pre_buffer=False)
    columns = [c for c in reader.schema_arrow.names
               if c in ("prediction", "model_version") or c.startswith("proba_")]
    groups, written = [], 0
    for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
        frame = batch.to_pandas()
        written += len(frame)
        groups.append([o for o in output_checks(frame, len(frame), regression)
                       if o.name != ROW_COUNT_CHECK])
    count = CheckOutcome(ROW_COUNT_CHECK, written == input_rows,
                         f"{written} rows written for {input_rows} input rows",
                         {"written_rows": written, "input_rows": input_rows})
    if not groups:  # nothing written: the other checks on an empty frame
        empty = pd.DataFrame({"prediction": [], "model_version": []})
        groups.append([o for o in output_checks(empty, 0, regression)
                       if o.name != ROW_COUNT_CHECK])
    return written, [count, *merge_outcomes(groups)]


Scorer = Callable[[ScoringModel, pd.DataFrame], tuple[pd.DataFrame, int]]


def score_shard(plan: ShardPlan, shard: Shard, model: ScoringModel, day_dir: Path,
                csv_options: CsvOptions | None = None, *, scorer: Scorer = answer,
                batch_rows: int = BATCH_ROWS,
                sketch: SketchBasis | None = None) -> ShardResult:
    """Score one shard into its part file (`plan.part_path`): record batches read,
    validated (BatchInputError names the file, column and data rows), answered by
    `scorer`, written to a temporary file that is read back, checked, and renamed over
    the part only when every check passes. The temporary file never outlives the call.
    `sketch`: the profile to sketch the answered rows against, batch by batch (merged:
    bounded memory), written beside the part (`plan.sketch_path`) with it."""
    import pyarrow.parquet as pq

    check_unchanged(shard)
    loaded = model.loaded
    features = list(feature_columns(loaded.schema, loaded.target))
    label = f"champion version {plan.model_version} of {plan.model_name}"
    scored_at = pd.Timestamp(plan.scored_at)
    part = plan.part_path(day_dir, shard)
    sketch_file = plan.sketch_path(day_dir, shard)
    temporary = part.with_name(f".{part.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    rows_in = pipeline_rows = 0
    ignored: list[str] = []
    writer = None
    sketched: DriftSketch | None = None
    try:
        for raw in _batches(shard, csv_options or CsvOptions(), features, batch_rows):
            ignored = raw.attrs.get("ignored", [])
            rows = validate_input(raw, loaded.schema, loaded.target, shard.file_name, label)
            outputs, slow = scorer(model, rows)
            table = _output_table(rows, outputs, plan, shard, scored_at)
            if writer is None:  # the directory made once a batch is valid
                part.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(temporary, table.schema.remove_metadata(),
                                          use_dictionary=_DICTIONARY_COLUMNS)
            writer.write_table(table.cast(writer.schema))
            if sketch is not None:
                day_rows = sketch.sketch(pd.concat([rows, outputs], axis=1))
                sketched = day_rows if sketched is None else sketched.merged(day_rows)
            rows_in += len(rows)
            pipeline_rows += slow
        if writer is None:
            raise BatchInputError(shard.file_name, "no rows", f"{shard.file} has a header "
                                  "but 0 data rows: add rows or remove the file")
        writer.close()
        writer = None
        if shard.rows is not None and rows_in != shard.rows:
            raise BatchInputError(shard.file_name, "changed", f"{shard.file} gave {rows_in} "
                                  f"rows where the plan counted {shard.rows}: score the day "
                                  "again")
        written, outcomes = check_written(temporary, rows_in, model.regression, batch_rows)
        sketch_file.unlink(missing_ok=True)  # a sketch never outlives its part's rows
        if all(o.passed for o in outcomes):
            os.replace(temporary, part)
            if sketched is not None:
                write_sketch(sketch_file, sketched)
    finally:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)
    has_sketch = sketched is not None and sketch_file.is_file()
    return ShardResult(shard.index, shard.file_name, str(part.relative_to(day_dir)), rows_in,
                       written, pipeline_rows, model.runtime, outcomes, list(ignored),
                       peak_rss_mib(),
                       str(sketch_file.relative_to(day_dir)) if has_sketch else "",
                       sketch.digest if has_sketch and sketch is not None else "")


def publish(plan: ShardPlan, results: list[ShardResult], day_dir: Path,
            features: list[str]) -> tuple[list[CheckOutcome], dict | None]:
    """Whether the day is complete, and its manifest when it is: every planned shard
    has a result whose checks passed and a part file holding exactly its rows, and the
    rows written add up to the rows read. The manifest is then written atomically and
    other plans' parts removed; otherwise nothing changes on disk (the last complete
    day stays readable). Returns the day's check outcomes and the manifest."""
    import pyarrow.parquet as pq

    by_index = {r.index: r for r in results}
    problems = []
    for shard in plan.shards:
        result = by_index.get(shard.index)
        path = plan.part_path(day_dir, shard)
        if result is None:
            problems.append(f"{shard.name}: no result")
        elif not result.passed:
            problems.append(f"{shard.name}: checks failed, part not written")
        elif not path.is_file():
            problems.append(f"{shard.name}: {path.name} missing")
        elif pq.ParquetFile(path).metadata.num_rows != result.input_rows:
            problems.append(f"{shard.name}: {path.name} holds "
                            f"{pq.ParquetFile(path).metadata.num_rows} rows, not "
                            f"{result.input_rows}")
    complete = CheckOutcome(
        SHARDS_CHECK, not problems,
        f"{len(plan.shards) - len(problems)} of {len(plan.shards)} shards written"
        + (f" ({'; '.join(problems[:5])})" if problems else ""),
        {"shards": len(plan.shards), "missing_or_failed": len(problems)})
    read = sum(r.input_rows for r in results)
    written = sum(r.written_rows for r in results)
    expected = plan.planned_rows if plan.planned_rows is not None else read
    count = CheckOutcome(ROW_COUNT_CHECK, written == read == expected,
                         f"{written} rows written for {read} input rows"
                         + ("" if expected == read else f" ({expected} planned)"),
                         {"written_rows": written, "input_rows": read})
    outcomes = [count, *[o for o in merge_outcomes([r.outcomes for r in results])
                         if o.name != ROW_COUNT_CHECK], complete]
    if not all(o.passed for o in outcomes):
        return outcomes, None
    per_file: dict[str, int] = {}
    for result in sorted(results, key=lambda r: r.index):
        per_file[result.file] = per_file.get(result.file, 0) + result.input_rows
    ordered = sorted(results, key=lambda r: r.index)
    manifest = {
        "format": MANIFEST_FORMAT, "day": plan.day, "plan_id": plan.plan_id,
        "model_name": plan.model_name, "model_version": plan.model_version,
        "scored_at": plan.scored_at, "rows": read,
        "files": per_file, "feature_columns": features,
        "pipeline_rows": sum(r.pipeline_rows for r in results),
        "parts": [{"path": r.part, "rows": r.input_rows, "file": r.file,
                   "peak_rss_mib": round(r.peak_rss_mib, 1),
                   **({"sketch": r.sketch, "sketch_basis": r.sketch_basis}
                      if r.sketch else {})} for r in ordered],
    }
    write_json_atomically(manifest, day_dir / MANIFEST)
    remove_other_plans(day_dir, plan)
    return outcomes, manifest
