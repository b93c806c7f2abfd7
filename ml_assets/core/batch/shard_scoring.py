"""One shard of a day's batch input scored in bounded memory: record batches streamed
from the file, validated against the champion's feature schema, answered by its compiled
(ONNX) graph when it passed parity (the Pipeline answers rows the graph cannot: none
at all, near ties, non-finite values), and written as Parquet to a temporary file that
replaces the shard's part only when the checks of what was written pass. `publish`
then says whether the day is complete and writes its manifest."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    passes_without_pandas,
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
from ml_assets.core.estimation.score_sketch import ScoreSketch
from ml_assets.core.modeling.jobs import one_job
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
    parity), 'onnx' (required: ValueError without one), 'sklearn' (never). With a graph,
    the Pipeline (near ties, a few rows per batch) predicts on one thread (`one_job`);
    without one it keeps its own n_jobs, as it scores every row."""
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
    if compiled is not None:  # its Pipeline answers a few rows a batch: no joblib pool
        one_job(loaded.pipeline)
    return ScoringModel(loaded, compiled, reason, regression)


def _graph_answer(model: ScoringModel, feed: dict[str, np.ndarray], n: int,
                  missing_text: np.ndarray, rows_at: Callable[[np.ndarray], pd.DataFrame]
                  ) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """(a regressor's values or None, a classifier's probabilities or None, rows the
    Pipeline answered) for a feed of `n` rows: the graph's answers, the Pipeline's
    (`rows_at(positions)` gives it those rows) where the graph cannot answer."""
    compiled, pipeline = model.compiled, model.loaded.pipeline
    assert compiled is not None
    raw = np.asarray(compiled.run(feed), dtype=np.float64)
    if model.regression:
        values = raw.reshape(-1)
        if values.shape != (n,):
            raise ValueError(f"the graph gave {values.shape[0]} values for {n} rows")
        slow = np.flatnonzero(~np.isfinite(values) | missing_text)
        if slow.size:
            values[slow] = pipeline.predict(rows_at(slow))
        return values, None, slow.size
    proba = raw
    if proba.shape != (n, len(compiled.classes)):
        raise ValueError(f"the graph gave probabilities of shape {proba.shape} for {n} "
                         f"rows of {len(compiled.classes)} classes")
    finite = np.isfinite(proba).all(axis=1)
    np.clip(proba, 0.0, 1.0, out=proba)  # float32 sums land a hair outside [0, 1]
    slow = np.flatnonzero(~finite | missing_text | near_ties(proba))
    if slow.size:
        proba[slow] = pipeline.predict_proba(rows_at(slow))
    return None, proba, slow.size


def answer(model: ScoringModel, rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The model's answer per validated row, as `model_outputs` gives it ('prediction',
    'proba_<class>'), and how many rows the Pipeline answered. The graph answers the
    others; the Pipeline takes rows with a missing categorical (the graph tells None
    from NaN, the Pipeline's imputer may not), near ties and non-finite answers, as the
    API does."""
    compiled = model.compiled
    if compiled is None or not len(rows):
        return model_outputs(model.loaded.pipeline, rows)[0], len(rows)
    strings = [name for name, kind in zip(compiled.feature_names, compiled.kinds, strict=True)
               if kind == "string"]
    missing_text = (rows[strings].isna().any(axis=1).to_numpy() if strings
                    else np.zeros(len(rows), dtype=bool))
    values, proba, slow = _graph_answer(model, compiled.inputs_from_frame(rows), len(rows),
                                        missing_text, lambda at: rows.iloc[at])
    if proba is None:
        return prediction_columns(values, index=rows.index, regression=True)[0], slow
    classes = model.loaded.pipeline.classes_
    return prediction_columns(classes[proba.argmax(axis=1)].astype(str), proba,
                              [str(c) for c in classes], index=rows.index)[0], slow


def _answer_batch(model: ScoringModel, batch, features: list[str]
                  ) -> tuple[dict[str, Any], int] | None:
    """`answer` for a validated pyarrow RecordBatch of numeric features, fed to the graph
    from Arrow's buffers with no pandas frame (only the Pipeline's rows become one);
    None when the model has no graph or takes text (then `answer` on a frame)."""
    compiled = model.compiled
    if compiled is None or any(kind != "number" for kind in compiled.kinds) or not len(batch):
        return None
    # float64 as inputs_from_frame feeds it: nulls as NaN, integers widened
    import pyarrow as pa

    feed = {name: np.ascontiguousarray(batch.column(name).to_numpy(zero_copy_only=False),
                                       dtype=np.float64).reshape(-1, 1)
            for name in compiled.feature_names}
    features_only = batch.select(features)
    values, proba, slow = _graph_answer(
        model, feed, len(batch), np.zeros(len(batch), dtype=bool),
        lambda at: features_only.take(at).to_pandas())
    if proba is None:
        return {"prediction": values}, slow
    classes = [str(c) for c in model.loaded.pipeline.classes_]
    # the class names taken by index in Arrow: no NumPy array of strings on the way
    outputs: dict[str, Any] = {"prediction": pa.array(classes, type=pa.string()).take(
        pa.array(proba.argmax(axis=1)))}
    for position, label in enumerate(classes):
        outputs[f"proba_{label}"] = proba[:, position]
    return outputs, slow


@dataclass
class ShardResult:
    """What one shard step did: rows read and written, rows the Pipeline answered, the
    checks of what it wrote (its part replaced only when all passed), ignored columns,
    and the seconds it spent per stage (`STAGES`)."""

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
    scores: str = ""  # the part's score sketch beside it (relative path); classifiers
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)


# Where a shard step's time goes, as ShardResult.seconds and the manifest report it
# ("sketch": the drift and score sketches of each batch).
STAGES = ("read", "validate", "score", "write", "sketch", "check")


def _batches(shard: Shard, csv_options: CsvOptions, features: list[str],
             batch_rows: int) -> Iterator[tuple[int, Any, list[str]]]:
    """The shard's rows, `batch_rows` at a time, with the 0-based data row in the file of
    each piece's first row (validation messages and request ids count from it) and the
    file's columns that are no feature (ignored). A Parquet shard gives pyarrow record
    batches of the feature columns only; a CSV file gives pandas frames."""
    file = Path(shard.file)
    if shard.row_groups is None:
        frame = read_input(file, csv_options)
        ignored = sorted(set(frame.columns) - set(features))
        for start in range(0, len(frame), batch_rows):
            yield start, frame.iloc[start:start + batch_rows], ignored
        return
    import pyarrow.parquet as pq

    # No pre-buffering, and one row group at a time: asked for a range of row groups,
    # the reader fetches all of them up front (memory growing with the shard). Columns
    # are decoded on pyarrow's threads (a row group's memory either way).
    reader = pq.ParquetFile(file, pre_buffer=False)
    names = reader.schema_arrow.names
    wanted = [name for name in names if name in set(features)]
    ignored = sorted(set(names) - set(wanted))
    offset = shard.first_row
    for group in range(*shard.row_groups):
        for batch in reader.iter_batches(batch_size=batch_rows, columns=wanted,
                                         row_groups=[group], use_threads=True):
            yield offset, batch, ignored
            offset += batch.num_rows


def _as_frame(batch, offset: int) -> pd.DataFrame:
    """A record batch as pandas, indexed by data row in the file, dates parsed as
    training's reader parses them."""
    frame = parse_dates(batch.to_pandas())
    frame.index = pd.RangeIndex(offset, offset + len(frame))
    return frame


def _output_table(features: Any, outputs: dict[str, Any], first_row: int,
                  plan: ShardPlan, shard: Shard, scored_at: pd.Timestamp):
    """One output row per input row, in the columns the day always had: the validated
    feature columns (a pyarrow RecordBatch, or a validated frame), request_id,
    model_name, model_version, scored_at, the model's outputs, source_file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(features, pd.DataFrame):
        table = pa.Table.from_pandas(features, preserve_index=False)
    else:
        # as pandas would write it: a float NaN as a null
        table = pa.Table.from_batches([features])
        for i, column in enumerate(table.columns):
            if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
                table = table.set_column(i, table.field(i), pc.if_else(
                    pc.is_nan(column), pa.scalar(None, column.type), column))
    n = table.num_rows
    numbers = pc.cast(pa.array(np.arange(first_row + 1, first_row + n + 1)), pa.string())
    columns = {
        "request_id": pc.binary_join_element_wise(
            f"batch-{plan.day}-{shard.key}-", numbers, ""),
        "model_name": pa.repeat(pa.scalar(plan.model_name), n),
        "model_version": pa.repeat(pa.scalar(str(plan.model_version)), n),
        "scored_at": pa.repeat(pa.scalar(scored_at.to_pydatetime(),
                                         type=pa.timestamp("us", tz="UTC")), n),
        **{str(c): values if isinstance(values, pa.Array) else pa.array(np.asarray(values))
           for c, values in outputs.items()},
        "source_file": pa.repeat(pa.scalar(shard.file_name), n),
    }
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table


def _with_answers(rows: Any, outputs: dict[str, Any]) -> pd.DataFrame:
    """The rows (a validated frame or record batch) and their answers as one frame, as
    drift sketching reads them; a record batch converted column by column, with no
    consolidated copy of the features."""
    import pyarrow as pa

    if isinstance(rows, pd.DataFrame):
        return pd.concat([rows, pd.DataFrame(outputs, index=rows.index)], axis=1)
    table = pa.Table.from_batches([rows])
    for name, values in outputs.items():
        table = table.append_column(name, values if isinstance(values, pa.Array)
                                    else pa.array(np.asarray(values)))
    return table.to_pandas(split_blocks=True)


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


def _batch_checks(outputs: dict[str, Any], model_version: str, regression: bool
                  ) -> list[CheckOutcome]:
    """`output_checks` of the output columns handed to the writer (all but the row
    count, which the written file's footer gives)."""
    import pyarrow as pa

    n = len(outputs["prediction"])
    frame = pd.DataFrame({name: pd.arrays.ArrowExtensionArray(values)
                          if isinstance(values, pa.Array) else np.asarray(values)
                          for name, values in outputs.items()})
    frame["model_version"] = pd.arrays.ArrowExtensionArray(
        pa.repeat(pa.scalar(model_version), n))
    return [o for o in output_checks(frame, len(frame), regression)
            if o.name != ROW_COUNT_CHECK]


Scorer = Callable[[ScoringModel, pd.DataFrame], tuple[pd.DataFrame, int]]


def score_shard(plan: ShardPlan, shard: Shard, model: ScoringModel, day_dir: Path,
                csv_options: CsvOptions | None = None, *, scorer: Scorer = answer,
                batch_rows: int = BATCH_ROWS,
                sketch: SketchBasis | None = None) -> ShardResult:
    """Score one shard into its part file (`plan.part_path`): record batches read,
    validated (BatchInputError names the file, column and data rows), answered by
    `scorer`, written to a temporary file renamed over the part only when every check
    passes: the output checks of each batch as it is handed to the writer, the row
    count from the written file's footer. The temporary file never outlives the call.
    `sketch`: the profile to sketch the answered rows against, batch by batch (merged:
    bounded memory), written beside the part (`plan.sketch_path`) with it.

    A Parquet batch whose features certainly pass (`passes_without_pandas`) is scored
    and written from Arrow without a pandas frame; others, CSV files, and a `scorer`
    other than `answer`, go through `validate_input` and a frame as they always did."""
    import pyarrow.parquet as pq

    check_unchanged(shard)
    loaded = model.loaded
    features = list(feature_columns(loaded.schema, loaded.target))
    label = f"champion version {plan.model_version} of {plan.model_name}"
    scored_at = pd.Timestamp(plan.scored_at)
    part = plan.part_path(day_dir, shard)
    sketch_file = plan.sketch_path(day_dir, shard)
    scores_file = plan.scores_path(day_dir, shard)
    temporary = part.with_name(f".{part.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    rows_in = pipeline_rows = 0
    ignored: list[str] = []
    checks: list[list[CheckOutcome]] = []
    seconds = dict.fromkeys(STAGES, 0.0)
    writer = None
    sketched: DriftSketch | None = None
    scored: ScoreSketch | None = None
    classes = None if model.regression else [str(c) for c in model.loaded.pipeline.classes_]
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] += now - clock
        clock = now

    try:
        for first_row, piece, not_features in _batches(
                shard, csv_options or CsvOptions(), features, batch_rows):
            lap("read")
            ignored = not_features
            fast = False
            if isinstance(piece, pd.DataFrame):
                rows = validate_input(piece, loaded.schema, loaded.target, shard.file_name,
                                      label)
            elif passes_without_pandas(piece, loaded.schema, loaded.target):
                rows, fast = piece.select(features), True
            else:
                rows = validate_input(_as_frame(piece, first_row), loaded.schema,
                                      loaded.target, shard.file_name, label)
            lap("validate")
            answered = _answer_batch(model, rows, features) if fast and scorer is answer \
                else None
            if answered is None:
                if fast:
                    rows = _as_frame(rows, first_row)
                frame_outputs, slow = scorer(model, rows)
                outputs = {str(c): frame_outputs[c].to_numpy() for c in frame_outputs.columns}
            else:
                outputs, slow = answered
            lap("score")
            checks.append(_batch_checks(outputs, str(plan.model_version), model.regression))
            lap("check")
            table = _output_table(rows, outputs, first_row, plan, shard, scored_at)
            if writer is None:  # the directory made once a batch is valid
                part.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(temporary, table.schema.remove_metadata(),
                                          use_dictionary=_DICTIONARY_COLUMNS)
            writer.write_table(table.cast(writer.schema))
            lap("write")
            if sketch is not None:
                day_rows = sketch.sketch(_with_answers(rows, outputs))
                sketched = day_rows if sketched is None else sketched.merged(day_rows)
            if classes is not None:
                batch_scores = score_sketch(outputs, classes)
                scored = batch_scores if scored is None else scored.merged(batch_scores)
            rows_in += table.num_rows
            pipeline_rows += slow
            lap("sketch")
        if writer is None:
            raise BatchInputError(shard.file_name, "no rows", f"{shard.file} has a header "
                                  "but 0 data rows: add rows or remove the file")
        writer.close()
        writer = None
        lap("write")
        if shard.rows is not None and rows_in != shard.rows:
            raise BatchInputError(shard.file_name, "changed", f"{shard.file} gave {rows_in} "
                                  f"rows where the plan counted {shard.rows}: score the day "
                                  "again")
        written = pq.ParquetFile(temporary).metadata.num_rows
        outcomes = [CheckOutcome(ROW_COUNT_CHECK, written == rows_in,
                                 f"{written} rows written for {rows_in} input rows",
                                 {"written_rows": written, "input_rows": rows_in}),
                    *merge_outcomes(checks)]
        sketch_file.unlink(missing_ok=True)  # a sketch never outlives its part's rows
        scores_file.unlink(missing_ok=True)
        if all(o.passed for o in outcomes):
            os.replace(temporary, part)
            if sketched is not None:
                write_sketch(sketch_file, sketched)
            if scored is not None:
                write_sketch(scores_file, scored)
        lap("check")
    finally:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)
    has_sketch = sketched is not None and sketch_file.is_file()
    return ShardResult(shard.index, shard.file_name, str(part.relative_to(day_dir)), rows_in,
                       written, pipeline_rows, model.runtime, outcomes, list(ignored),
                       peak_rss_mib(),
                       sketch=str(sketch_file.relative_to(day_dir)) if has_sketch else "",
                       sketch_basis=sketch.digest if has_sketch and sketch is not None else "",
                       scores=(str(scores_file.relative_to(day_dir))
                               if scored is not None and scores_file.is_file() else ""),
                       seconds={k: round(v, 3) for k, v in seconds.items()})


def score_sketch(outputs: dict[str, Any], classes: list[str]) -> ScoreSketch:
    """The score sketch of one batch's answers (`outputs`: prediction, proba_<class>):
    rows whose probabilities are not numbers in [0, 1] or whose answer is not a class
    are left out (the batch's output checks fail on them, so the part is not kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    proba = np.column_stack([np.asarray(outputs[f"proba_{c}"], dtype=np.float64)
                             for c in classes])
    prediction = outputs["prediction"]
    if isinstance(prediction, pa.Array | pa.ChunkedArray):  # the Arrow path: hashed in C++
        answered = pc.index_in(prediction.cast(pa.string()), value_set=pa.array(
            classes, type=pa.string())).fill_null(-1).to_numpy(zero_copy_only=False)
    else:
        answered = pd.Categorical(np.asarray(prediction).astype(str), categories=classes).codes
    if not (answered.min(initial=0) >= 0 and 0 <= proba.min(initial=0)
            and proba.max(initial=1) <= 1):  # NaN fails every comparison
        usable = (answered >= 0) & np.isfinite(proba).all(axis=1) & (
            (proba >= 0) & (proba <= 1)).all(axis=1)
        proba, answered = proba[usable], answered[usable]
    return ScoreSketch.from_rows(proba, answered, classes)


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
                   "peak_rss_mib": round(r.peak_rss_mib, 1), "seconds": r.seconds,
                   **({"sketch": r.sketch, "sketch_basis": r.sketch_basis}
                      if r.sketch else {}),
                   **({"scores": r.scores} if r.scores else {})} for r in ordered],
    }
    write_json_atomically(manifest, day_dir / MANIFEST)
    remove_other_plans(day_dir, plan)
    return outcomes, manifest
