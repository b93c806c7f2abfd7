"""Batch scoring: one UTC day of input files scored by the champion shard by shard, in
bounded memory, written as Parquet parts named by a manifest.

Input: <ML_BATCH_INPUT_DIR>/<YYYY-MM-DD>/*.csv|*.parquet. Output:
<ML_BATCH_OUTPUT_DIR>/<YYYY-MM-DD>/manifest.json and the parts it names
(parts/<plan>/part-<n>.parquet), read back by `ProductionDataResource.batch_predictions(day)`
so batch traffic is monitored for drift like the API's logged rows. The asset is a graph:
`plan_batch_shards` cuts the day (Parquet row groups, CSV files) into shards,
`score_batch_shard` runs once per shard (one step each: parallel on the multiprocess,
Celery or Kubernetes executor, retried alone), `publish_batch_day` declares the day
complete (checks) and writes the manifest.
"""

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    Backoff,
    Config,
    DynamicOut,
    DynamicOutput,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    graph_asset,
    op,
)
from pydantic import Field

from ml_assets.core.artifacts.loading import UntrustedModelError

# The pure part (planning, reading, validating, scoring, checking) lives in
# ml_assets.core.batch; the names marked F401 are imported only so `batch.<name>` keeps
# working for the tests of those helpers.
from ml_assets.core.batch.scoring import (
    COMPLETE_CHECK,
    FINITE_CHECK,
    PROBABILITY_CHECK,
    ROW_COUNT_CHECK,
    BatchInputError,
    CheckOutcome,
    file_keys,  # noqa: F401
    input_files,
    output_checks,  # noqa: F401
    validate_input,  # noqa: F401
)
from ml_assets.core.batch.shard_scoring import (
    RUNTIMES,
    SHARDS_CHECK,
    ShardResult,
    open_model,
    publish,
    score_shard,
)
from ml_assets.core.batch.shard_scoring import answer as score
from ml_assets.core.batch.shards import DEFAULT_SHARD_ROWS, Shard, ShardPlan, plan_shards
from ml_assets.core.data.datasets import CsvOptions
from ml_assets.core.data.schemas import feature_columns
from ml_assets.core.drift.sketch_store import SketchBasis, run_profile
from ml_assets.core.registry import champion as registry
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import (
    BATCH_META_COLUMNS,
    ProductionDataResource,
    day_folder,
)
from ml_assets.shared import daily_partitions

PREVIEW_ROWS = 5


def _blocked(error: BatchInputError, day: str) -> Failure:
    metadata: dict = {"partition": day, "file": error.file, "problem": error.problem,
                      "columns": MetadataValue.json(error.columns),
                      "reason": MetadataValue.text(error.message)}
    if error.sample is not None and len(error.sample):
        metadata["failure_sample"] = MetadataValue.md(error.sample.to_markdown(index=False))
    return Failure(description=f"batch input of {day} blocked: {error.message}",
                   metadata=metadata, allow_retries=False)


def _champion_version(mlflow_tracking: MlflowTracking, day: str) -> tuple[str, str]:
    name = mlflow_tracking.registered_model_name
    champion = registry.alias_version(mlflow_tracking.client, name, registry.CHAMPION)
    if champion is None:
        raise Failure(description=f"batch input of {day} cannot be scored: {name} has no "
                      f"{registry.CHAMPION!r} version yet (run train_model first)",
                      metadata={"partition": day, "problem": "no champion"},
                      allow_retries=False)
    return name, str(champion.version)


_CHECK_DESCRIPTIONS = {
    ROW_COUNT_CHECK: "One output row per input row of the day's files.",
    COMPLETE_CHECK: "No output row lacks its prediction or model_version.",
    PROBABILITY_CHECK: "A classifier's proba_<class> values lie in [0, 1] and sum to 1 "
    "per row (a regressor: there are none).",
    FINITE_CHECK: "Every predicted number (a regressor's value, a classifier's "
    "probabilities) is finite.",
    SHARDS_CHECK: "The day is complete: every planned shard wrote its part, holding "
    "exactly the rows it read.",
}


class BatchScoringConfig(Config):
    shard_rows: int = Field(
        default=DEFAULT_SHARD_ROWS, ge=1,
        description="Most rows in a shard (Parquet row groups are gathered up to it; a "
        "larger row group, or a CSV file, is a shard alone). A step holds one record "
        "batch of 65,536 rows at a time whatever this is.")
    runtime: str = Field(
        default="auto", description="auto: the champion's compiled ONNX graph when it "
        "passed parity, else the scikit-learn Pipeline; onnx: require the graph; "
        "sklearn: never use it.")


@dataclass(frozen=True)
class ShardTask:
    """One shard step's work: the day's plan, its shard, the runtime setting."""

    plan: ShardPlan
    shard: Shard
    runtime: str


@op(out={"plan": Out(ShardPlan), "shards": DynamicOut(ShardTask)})
def plan_batch_shards(context: OpExecutionContext, config: BatchScoringConfig,
                      production: ProductionDataResource,
                      mlflow_tracking: MlflowTracking) -> Iterator:
    """The day's shards: the champion version every shard will use, and one shard per
    range of Parquet row groups (at most `shard_rows` rows) or CSV file."""
    day = context.partition_key
    if not production.batch_input_dir or not production.batch_output_dir:
        raise Failure(description="no batch input or output directory is configured "
                      "(batch_input_dir / ML_BATCH_INPUT_DIR, batch_output_dir / "
                      "ML_BATCH_OUTPUT_DIR)", allow_retries=False)
    if config.runtime not in RUNTIMES:
        raise Failure(description=f"runtime {config.runtime!r} is not one of "
                      f"{', '.join(RUNTIMES)}", allow_retries=False)
    folder = day_folder(production.batch_input_dir, day)
    files = input_files(folder)
    if not files:
        raise _blocked(BatchInputError(
            str(folder), "no files", f"{folder} holds no .csv or .parquet files for "
            f"{day}: put the day's files there, or do not score this day"), day)
    name, version = _champion_version(mlflow_tracking, day)
    try:
        plan = plan_shards(files, day=day, model_name=name, model_version=version,
                           scored_at=datetime.now(timezone.utc).isoformat(),
                           shard_rows=config.shard_rows)
    except BatchInputError as error:
        context.log.error(error.message)
        raise _blocked(error, day) from None
    context.log.info(f"{day}: {len(plan.shards)} shard(s) of {len(files)} file(s), "
                     f"plan {plan.plan_id}, champion version {version} of {name}")
    yield Output(plan, "plan", metadata={"shards": len(plan.shards),
                                         "plan_id": plan.plan_id, "model_version": version})
    for shard in plan.shards:
        yield DynamicOutput(ShardTask(plan, shard, config.runtime), output_name="shards",
                            mapping_key=shard.name.replace("-", "_"))


@op(retry_policy=RetryPolicy(max_retries=2, delay=1, backoff=Backoff.EXPONENTIAL))
def score_batch_shard(context: OpExecutionContext, task: ShardTask,
                      production: ProductionDataResource, data_source: DataSourceResource,
                      mlflow_tracking: MlflowTracking) -> ShardResult:
    """One shard scored into its part: streamed, validated, answered (compiled graph or
    Pipeline), written to a temporary file renamed into place when its checks pass. A
    re-run replaces the part; bad input blocks the day naming file, column and rows."""
    plan, shard = task.plan, task.shard
    day = plan.day
    uri = f"models:/{plan.model_name}/{plan.model_version}"
    registered = mlflow_tracking.client.get_model_version(plan.model_name, plan.model_version)
    tags = dict(registered.tags or {})
    csv_options = CsvOptions(delimiter=data_source.csv_delimiter,
                             decimal=data_source.csv_decimal,
                             encoding=data_source.csv_encoding)
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="batch-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tmp, tracking_uri=mlflow_tracking.client.tracking_uri))
        try:
            model = open_model(local, tags, task.runtime, source=uri)
        except UntrustedModelError as exc:  # the safe loader never opened it
            raise Failure(description=f"batch input of {day} cannot be scored: champion "
                          f"version {plan.model_version} of {plan.model_name} was refused: "
                          f"{exc}", metadata={"partition": day, "problem": "untrusted model"},
                          allow_retries=False) from exc
        except ValueError as exc:  # runtime onnx without a graph
            raise Failure(description=f"batch input of {day}: {exc}",
                          allow_retries=False) from exc
    reserved = sorted(set(feature_columns(model.loaded.schema, model.loaded.target)) & {
        *BATCH_META_COLUMNS, "source"})
    if reserved:
        raise Failure(description=f"champion version {plan.model_version} has features "
                      f"named like batch output columns ({', '.join(reserved)}): they "
                      "cannot be written side by side", allow_retries=False)
    try:
        # `score` looked up here, at run time: a test may replace batch.score.
        result = score_shard(plan, shard, model, day_folder(production.batch_output_dir, day),
                             csv_options, scorer=score,
                             sketch=_sketch_basis(context, mlflow_tracking, registered.run_id,
                                                  plan.model_version))
    except BatchInputError as error:
        context.log.error(error.message)
        raise _blocked(error, day) from None
    context.log.info(f"{shard.name} of {day}: {result.input_rows} rows of "
                     f"{shard.file_name} ({result.runtime}, {result.pipeline_rows} by the "
                     f"Pipeline), checks {'passed' if result.passed else 'FAILED'}")
    return result


def _sketch_basis(context: OpExecutionContext, mlflow_tracking: MlflowTracking,
                  run_id: str | None, version: str) -> SketchBasis | None:
    """The champion's reference profile (from its run) to sketch the shard against, so
    that the day's drift merges the shards' sketches instead of reading their rows; a
    version without a stored profile: no sketch (drift reads the rows)."""
    try:
        profile = run_profile(mlflow_tracking.client.tracking_uri, str(run_id))
    except Exception as exc:  # noqa: BLE001 - a sketch is an optimisation: say why not
        context.log.info(f"no drift sketch: version {version} has no reference profile "
                         f"({type(exc).__name__})")
        return None
    return SketchBasis(profile, version)


def _preview(day_dir: Path, manifest: dict) -> str:
    """The first rows written: three features, then every output column."""
    import pyarrow.parquet as pq

    first = day_dir / manifest["parts"][0]["path"]
    preview = next(pq.ParquetFile(first).iter_batches(batch_size=PREVIEW_ROWS)).to_pandas()
    preview = preview.drop(columns=["scored_at"]).head(PREVIEW_ROWS)
    features = manifest["feature_columns"]
    shown = features[:3] + [c for c in preview.columns if c not in features]
    return preview[shown].to_markdown(index=False, floatfmt=".4g")


def _check_result(outcome: CheckOutcome, day: str) -> AssetCheckResult:
    return AssetCheckResult(check_name=outcome.name, passed=outcome.passed,
                            severity=AssetCheckSeverity.ERROR,
                            description=outcome.description,
                            metadata={"partition": day, **outcome.metadata})


@op(out={"result": Out(), **{name: Out(is_required=False) for name in _CHECK_DESCRIPTIONS}})
def publish_batch_day(context: OpExecutionContext, plan: ShardPlan,
                      results: list[ShardResult],
                      production: ProductionDataResource) -> Iterator:
    """The day complete or not: every shard's part present with its rows and checks
    passed; then the manifest is written (atomically) and older plans' parts removed."""
    day = plan.day
    day_dir = day_folder(production.batch_output_dir, day)
    results = sorted(results, key=lambda r: r.index)
    outcomes, manifest = publish(plan, results, day_dir, _features_of(results, day_dir))
    checks = [_check_result(o, day) for o in outcomes]
    if manifest is None:
        failed = [o for o in outcomes if not o.passed]
        yield from checks
        raise Failure(description=f"batch predictions of {day} not written: "
                      + "; ".join(f"{o.name}: {o.description}" for o in failed),
                      metadata={"partition": day, "failed_checks": MetadataValue.json(
                          [o.name for o in failed])}, allow_retries=False)
    ignored = sorted({c for r in results for c in r.ignored})
    yield Output(manifest, "result", metadata={
        "dagster/row_count": manifest["rows"],
        "rows": manifest["rows"],
        "files": MetadataValue.json(manifest["files"]),
        "shards": len(plan.shards),
        "plan_id": plan.plan_id,
        "model_name": plan.model_name,
        "model_version": plan.model_version,
        "runtime": MetadataValue.json(sorted({r.runtime for r in results})),
        "pipeline_rows": manifest["pipeline_rows"],
        "output_path": MetadataValue.path(str(production.batch_manifest_path(day))),
        "ignored_columns": MetadataValue.json(ignored),
        "scored_at": datetime.fromisoformat(plan.scored_at).isoformat(timespec="seconds"),
        "preview": MetadataValue.md(_preview(day_dir, manifest)),
        "drift_sketches": sum(1 for part in manifest["parts"] if part.get("sketch")),
        "drift_sketch_rows": sum(part["rows"] for part in manifest["parts"]
                                 if part.get("sketch")),
    })
    yield from checks


def _features_of(results: list[ShardResult], day_dir: Path) -> list[str]:
    """The model's feature columns, as the first written part holds them (before the
    output columns)."""
    import pyarrow.parquet as pq

    for result in results:
        path = day_dir / result.part
        if result.passed and path.is_file():
            names = pq.ParquetFile(path).schema_arrow.names
            return names[:names.index("request_id")] if "request_id" in names else []
    return []


@graph_asset(
    name="batch_predictions",
    group_name="batch",
    partitions_def=daily_partitions,
    kinds={"parquet", "onnx"},
    check_specs=[AssetCheckSpec(name, asset="batch_predictions", blocking=True,
                                description=text)
                 for name, text in _CHECK_DESCRIPTIONS.items()],
    description="""One UTC day of batch input (ML_BATCH_INPUT_DIR/<day>/*.csv|*.parquet)
scored by the current champion shard by shard, written as Parquet parts named by
ML_BATCH_OUTPUT_DIR/<day>/manifest.json.

Shards are ranges of a Parquet file's row groups (at most `shard_rows` rows) or whole
CSV files; each is one step (parallel on the configured executor, retried alone),
streaming record batches in bounded memory through the champion's compiled ONNX graph
when it passed parity (the scikit-learn Pipeline otherwise, and for near ties). Each
file is validated against the feature schema the champion was trained with, as the API
validates requests: a missing feature, a value of the wrong type, a value the schema's
checks forbid, an infinite number, an unreadable or empty file, or no file at all blocks
the day (the run fails naming the file, column and data rows). Columns that are no
feature of the champion are ignored: not validated, not written; join results back by
source_file and the data row that ends each request_id (batch-<day>-<file>-<row>,
counted from 1).

Output rows: the feature columns, request_id, model_name, model_version, scored_at,
prediction (the class, or a regressor's value), proba_<class> per class for a
classifier, source_file. A shard's part is replaced (temporary file, then rename) only
when its checks pass; the manifest is written last, when every shard is there
(`all_shards_written`), so readers see the last complete day, never part of one.
Drift monitoring reads it through ProductionDataResource.batch_predictions(day).""",
)
def batch_predictions():
    plan, shards = plan_batch_shards()
    published = publish_batch_day(plan, shards.map(score_batch_shard).collect())
    return {"result": published.result,
            **{f"batch_predictions_{name}": getattr(published, name)
               for name in _CHECK_DESCRIPTIONS}}
