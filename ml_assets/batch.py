"""Batch scoring: one UTC day of input files scored by the champion, written as Parquet.

Input: <ML_BATCH_INPUT_DIR>/<YYYY-MM-DD>/*.csv|*.parquet. Output:
<ML_BATCH_OUTPUT_DIR>/<YYYY-MM-DD>/predictions.parquet, read back by
`ProductionDataResource.batch_predictions(day)` so batch traffic is monitored for drift
like the API's logged rows.
"""

from collections.abc import Iterator
from datetime import datetime, timezone

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.core.artifacts.loading import LoadedModel, UntrustedModelError, load_pipeline

# The pure part (reading, validating, scoring, checking) lives in ml_assets.core.batch;
# the names marked F401 are imported only so `batch.<name>` keeps working for the
# tests of those helpers.
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
    score,
    score_day,
    validate_input,  # noqa: F401
    write_checked,
)
from ml_assets.core.data.datasets import CsvOptions
from ml_assets.core.data.schemas import feature_columns
from ml_assets.core.modeling.tasks import is_regression_model
from ml_assets.core.registry import champion as registry
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import (
    BATCH_META_COLUMNS,
    ProductionDataResource,
    day_folder,
)
from ml_assets.shared import daily_partitions

PREVIEW_ROWS = 5


# --- the asset --------------------------------------------------------------------------------

def _blocked(error: BatchInputError, day: str) -> Failure:
    metadata: dict = {"partition": day, "file": error.file, "problem": error.problem,
                      "columns": MetadataValue.json(error.columns),
                      "reason": MetadataValue.text(error.message)}
    if error.sample is not None and len(error.sample):
        metadata["failure_sample"] = MetadataValue.md(error.sample.to_markdown(index=False))
    return Failure(description=f"batch input of {day} blocked: {error.message}",
                   metadata=metadata, allow_retries=False)


def _champion(mlflow_tracking: MlflowTracking, day: str) -> tuple[str, str, LoadedModel]:
    name = mlflow_tracking.registered_model_name
    champion = registry.alias_version(mlflow_tracking.client, name, registry.CHAMPION)
    if champion is None:
        raise Failure(description=f"batch input of {day} cannot be scored: {name} has no "
                      f"{registry.CHAMPION!r} version yet (run train_model first)",
                      metadata={"partition": day, "problem": "no champion"},
                      allow_retries=False)
    version = str(champion.version)
    try:
        return name, version, load_pipeline(f"models:/{name}/{version}")
    except UntrustedModelError as exc:  # the safe loader never opened it
        raise Failure(description=f"batch input of {day} cannot be scored: champion "
                      f"version {version} of {name} was refused: {exc}",
                      metadata={"partition": day, "problem": "untrusted model"},
                      allow_retries=False) from exc


def _check_results(outcomes: list[CheckOutcome], day: str
                   ) -> tuple[list[AssetCheckResult], Failure | None]:
    """The checks of what was written as check results, and the run's Failure when any
    failed (nothing was written then)."""
    results = [AssetCheckResult(check_name=o.name, passed=o.passed,
                                severity=AssetCheckSeverity.ERROR, description=o.description,
                                metadata={"partition": day, **o.metadata})
               for o in outcomes]
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return results, None
    return results, Failure(description=f"batch predictions of {day} not written: "
                            + "; ".join(f"{o.name}: {o.description}" for o in failed),
                            metadata={"partition": day, "failed_checks": MetadataValue.json(
                                [o.name for o in failed])},
                            allow_retries=False)


def _preview(written: pd.DataFrame, features: list[str]) -> str:
    """The first rows written: three features, then every output column."""
    preview = written.drop(columns=["scored_at"]).head(PREVIEW_ROWS)
    shown = features[:3] + [c for c in preview.columns if c not in features]
    return preview[shown].to_markdown(index=False, floatfmt=".4g")


_CHECK_DESCRIPTIONS = {
    ROW_COUNT_CHECK: "One output row per input row of the day's files.",
    COMPLETE_CHECK: "No output row lacks its prediction or model_version.",
    PROBABILITY_CHECK: "A classifier's proba_<class> values lie in [0, 1] and sum to 1 "
    "per row (a regressor: there are none).",
    FINITE_CHECK: "Every predicted number (a regressor's value, a classifier's "
    "probabilities) is finite.",
}


@asset(
    group_name="batch",
    partitions_def=daily_partitions,
    kinds={"pandas", "parquet"},
    check_specs=[AssetCheckSpec(name, asset="batch_predictions", blocking=True,
                                description=text)
                 for name, text in _CHECK_DESCRIPTIONS.items()],
)
def batch_predictions(context: AssetExecutionContext, production: ProductionDataResource,
                      data_source: DataSourceResource,
                      mlflow_tracking: MlflowTracking) -> Iterator:
    """One UTC day of batch input (ML_BATCH_INPUT_DIR/<day>/*.csv|*.parquet) scored by
    the current champion, written to ML_BATCH_OUTPUT_DIR/<day>/predictions.parquet.

    Each file is validated against the feature schema the champion was trained with,
    as the API validates requests: a missing feature, a value of the wrong type, a value
    the schema's checks forbid, an infinite number, an unreadable or empty file, or no
    file at all blocks the day (the run fails naming the file, column and problem) and
    nothing is written. Columns that are no feature of the champion (the target,
    identifiers, anything else) are ignored: not validated, not written; join results
    back by source_file and the data row that ends each request_id
    (batch-<day>-<file>-<row>, counted from 1).

    Output rows: the feature columns, request_id, model_name, model_version, scored_at,
    prediction (the class, or a regressor's value), proba_<class> per class for a
    classifier, source_file. The file is replaced whole (temporary file, then rename)
    only when the blocking checks pass; a re-run replaces the day, a failed run leaves
    the last good output in place. Drift monitoring reads it through
    ProductionDataResource.batch_predictions(day).
    """
    day = context.partition_key
    if not production.batch_input_dir:
        raise Failure(description="no batch input directory is configured "
                      "(batch_input_dir, ML_BATCH_INPUT_DIR)", allow_retries=False)
    folder = day_folder(production.batch_input_dir, day)
    files = input_files(folder)
    if not files:
        raise _blocked(BatchInputError(
            str(folder), "no files", f"{folder} holds no .csv or .parquet files for "
            f"{day}: put the day's files there, or do not score this day"), day)
    name, version, model = _champion(mlflow_tracking, day)
    reserved = sorted(set(feature_columns(model.schema, model.target)) & {
        *BATCH_META_COLUMNS, "source"})
    if reserved:
        raise Failure(description=f"champion version {version} has features named like "
                      f"batch output columns ({', '.join(reserved)}): they cannot be "
                      "written side by side", allow_retries=False)
    csv_options = CsvOptions(delimiter=data_source.csv_delimiter,
                             decimal=data_source.csv_decimal,
                             encoding=data_source.csv_encoding)
    scored_at = datetime.now(timezone.utc)
    try:
        # `score` looked up here, at run time: a test may replace batch.score.
        day_scored = score_day(files, model, csv_options, day=day, model_name=name,
                               model_version=version, scored_at=scored_at, scorer=score)
    except BatchInputError as error:
        context.log.error(error.message)
        raise _blocked(error, day) from None
    scored = day_scored.frame
    path = production.batch_output_path(day)
    written, outcomes = write_checked(scored, path, day_scored.input_rows,
                                      is_regression_model(model.pipeline))
    results, failure = _check_results(outcomes, day)
    if failure is not None:
        yield from results
        raise failure
    yield MaterializeResult(
        metadata={
            "dagster/row_count": len(written),
            "rows": len(written),
            "files": MetadataValue.json(day_scored.per_file),
            "model_name": name,
            "model_version": version,
            "output_path": MetadataValue.path(str(path)),
            "ignored_columns": MetadataValue.json(sorted(map(str, day_scored.ignored))),
            "scored_at": scored_at.isoformat(timespec="seconds"),
            "preview": MetadataValue.md(_preview(written, scored.attrs["feature_columns"])),
        },
        check_results=results)
