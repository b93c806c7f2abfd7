"""Monitoring: the champion's reference profile, daily production data and live
performance once labels arrive (drift scores: ml_assets/drift.py)."""

import dataclasses
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from ml_assets.core.artifacts.loading import UntrustedModelError, load_pipeline
from ml_assets.core.batch.shards import (
    manifest_score_sketches,
    manifest_sketches,
)
from ml_assets.core.data.logged_rows import LogDay
from ml_assets.core.data.preprocessing import Split, feature_kinds
from ml_assets.core.data.production_rows import (
    Lineage,
    ScopedRows,
    SkippedFile,
    scope_rows,
    skipped_sentences,
)
from ml_assets.core.drift.profile import ReferenceProfile, build_reference_profile
from ml_assets.core.drift.scoring import model_outputs
from ml_assets.core.drift.sketch import DriftSketch, merge_sketches
from ml_assets.core.drift.sketch_store import (
    PROFILE_ARTIFACT,
    SketchBasis,
    read_sketch,
    run_profile,
    write_day_sketch,
)
from ml_assets.core.estimation.cbpe import EstimateCheck, compare_with_realised
from ml_assets.core.estimation.day_scores import DayScores
from ml_assets.core.estimation.day_scores import sketch_rows as sketch_frame_rows
from ml_assets.core.estimation.score_sketch import ScoreSketch, merge_score_sketches
from ml_assets.core.estimation.store import calibrate_model, log_estimation
from ml_assets.core.modeling.live_performance import (
    live_report,
    per_version_markdown,
)
from ml_assets.core.modeling.pipeline import TrainedModel
from ml_assets.core.registry import champion as registry
from ml_assets.in_place import (
    BATCH_IN_PARTS,
    LANDING_SOURCE,
    InLog,
    batch_scores_of,
    with_labelled_in_place,
)
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import (
    BATCH_SOURCE,
    ProductionDataResource,
)
from ml_assets.shared import (
    AFTER_PRODUCTION_DATA,
    EVIDENCE_CHECK,
    RECENT_DAYS,
    daily_partitions,
    latest_materialization,
    lineage_of,
    warm_drift_nulls,
)


def _profile_for(pipeline, split: Split) -> ReferenceProfile:
    """Features profiled on the training split; model outputs on the held-out split
    (predictions on training rows are over-confident, so they are a biased reference).
    A regressor's predicted values are profiled as a numeric 'prediction' column."""
    features = build_reference_profile(split.X_train, feature_kinds(split.X_train, ""))
    outputs, output_kinds = model_outputs(pipeline, split.X_test)
    predictions = build_reference_profile(outputs, {}, output_kinds)
    return dataclasses.replace(features, predictions=predictions.predictions)


@asset(group_name="monitoring", kinds={"numpy", "mlflow"})
def reference_profile(context: AssetExecutionContext, champion_model: dict,
                      trained_model: TrainedModel, data_split: Split,
                      mlflow_tracking: MlflowTracking) -> Output[ReferenceProfile]:
    """What the champion was trained on, per feature (quantile sketch and PSI bins,
    category frequencies, missing rates) and what it predicts on held-out data.

    Built once when a champion is promoted and stored as an artifact of its MLflow
    run, so drift scoring never re-reads the training data.
    """
    client = mlflow_tracking.client
    name = champion_model["name"]
    # The registry's champion now: after a rollout's promotion it is no longer the
    # version this run's champion_model recorded.
    version = (registry.alias_version(client, name, registry.CHAMPION)
               or client.get_model_version(name, champion_model["version"]))
    built_here = version.run_id == trained_model.mlflow_run_id
    if built_here:
        profile = _profile_for(trained_model.pipeline, data_split)
        _log_profile(client, trained_model.mlflow_run_id, profile)
        _log_calibrator(client, trained_model, data_split)
    else:
        if champion_model.get("challenger_version"):  # in rollout: ready for its promotion
            _log_profile(client, trained_model.mlflow_run_id,
                         _profile_for(trained_model.pipeline, data_split))
            _log_calibrator(client, trained_model, data_split)
        try:
            local = mlflow.artifacts.download_artifacts(run_id=version.run_id,
                                                        artifact_path=PROFILE_ARTIFACT,
                                                        tracking_uri=mlflow_tracking.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - name what is missing
            raise Failure(description=f"champion version {version.version} has no stored "
                          f"reference profile ({exc}); retrain to create one",
                          allow_retries=False) from None
        profile = ReferenceProfile.from_bytes(Path(local).read_bytes())
    size = len(profile.to_bytes())
    # Training time, not the scoring path: the resampled nulls every later day reads.
    warmed = warm_drift_nulls(context.instance, profile)
    return Output(profile, metadata={
        **warmed,
        "champion_version": str(version.version), "mlflow_run_id": version.run_id,
        "features": len(profile.features), "prediction_columns": len(profile.predictions),
        "reference_rows": profile.n_rows, "stored_bytes": size,
        "source": "built from this run's split" if built_here else "champion's artifact"})


def _log_calibrator(client, trained_model: TrainedModel, data_split: Split) -> None:
    """The probabilities' calibrator on the held-out rows (JSON beside the profile, in
    performance_estimation/): what estimated_performance estimates each day with."""
    log_estimation(client, trained_model.mlflow_run_id, calibrate_model(
        trained_model.pipeline, data_split.X_test, data_split.y_test, data_split.task))


def _log_profile(client, run_id: str, profile: ReferenceProfile) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.npz"
        path.write_bytes(profile.to_bytes())
        client.log_artifact(run_id, str(path), "reference_profile")


# A day's production data is rebuilt when that day's batch scoring lands (the API's
# log and the landing area are watched by production_data_sensor).
BATCH_SCORED = (RECENT_DAYS & AutomationCondition.any_deps_updated().since_last_handled()
                & ~AutomationCondition.in_progress()).with_label("batch scored")



@asset(group_name="monitoring", partitions_def=daily_partitions, kinds={"pandas"},
       deps=["batch_predictions"], automation_condition=BATCH_SCORED,
       check_specs=[AssetCheckSpec(
           EVIDENCE_CHECK, asset="production_data",
           description="Warns when a landing file of the day cannot be used (unreadable, "
           "no target column, other columns): it is left out and named, the rest is used.")])
def production_data(context: AssetExecutionContext, production: ProductionDataResource,
                    data_source: DataSourceResource,
                    mlflow_tracking: MlflowTracking) -> Iterator:
    """One UTC day of production rows answered by this registered model on this
    dataset (rows of another model, or of a version trained on another dataset, are left
    out and counted): what the API saw and answered (from its prediction log), the day's
    batch-scored rows, plus labelled drops from the landing directory, if any, which the
    current champion scores so their predictions are monitored too. A log or batch day
    too big to hold stays where it is, read a segment or record batch at a time into the
    day's drift and score sketches (`log_rows_in_log`, `batch_rows_in_parts`)."""
    day = context.partition_key
    lineage = lineage_of(mlflow_tracking, data_source)
    basis = _sketch_basis(context, mlflow_tracking)
    log = InLog.read(production, day, lineage, basis)  # None: a day small enough to hold
    # no shadows, no failed canaries, of this lineage (a big day: counted as it streamed)
    counted = log.day if log is not None else LogDay()
    logged = (counted.take(production.predictions(day), lineage) if log is None
              else pd.DataFrame())
    excluded, flagged, by_reason = (dict(counted.excluded), counted.flagged,
                                    dict(counted.flags_by_reason))
    target = data_source.target_column
    frames = [logged] if len(logged) else []
    manifest = production.batch_manifest(day)  # read once: the sketches follow this plan
    if manifest is not None and int(manifest["rows"]) > production.batch_rows_in_memory:
        # a big day stays in its parts, all answered by the manifest's model version
        batch, reference = _batch_by_reference(manifest, lineage)
    else:
        read = production.batch_predictions(day)
        if manifest is not None and (len(read) != int(manifest["rows"])
                                     or "model_version" not in read or set(read["model_version"])
                                     != {str(manifest["model_version"])}):
            manifest = None  # scored again while being read: the rows are sketched
        batch, reference = scope_rows(read, lineage), None
    for reason, count in batch.excluded.items():
        excluded[reason] = excluded.get(reason, 0) + count
    if len(batch.rows):
        frames.append(batch.rows.drop(columns="model_name"))
    landed, skipped = production.landing_files(day, target)
    if len(landed):
        labels = landed.pop(target).astype(str)
        landed = _score_with_champion(landed, mlflow_tracking, lineage)
        landed["label"] = labels.to_numpy()
        landed["source"] = LANDING_SOURCE
        frames.append(landed)
    for file in skipped:
        context.log.warning("landing file left out of %s: %s", day, file.sentence())
    if excluded:
        context.log.info("left out of %s: %s", day, "; ".join(
            f"{count} rows {reason}" for reason, count in excluded.items()))
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    versions = sorted(set(data.get("model_version", pd.Series(dtype=str)).dropna())
                      | ({str(reference["model_version"])} if reference is not None else set())
                      | (log.day.versions if log is not None else set()))
    kept_out = int(reference["rows"]) if reference is not None else 0
    in_log = log.day.kept if log is not None else 0
    yield Output(data, metadata={
        "dagster/row_count": len(data) + kept_out + in_log,
        "from_prediction_log": int(len(logged)) + in_log,
        **(log.metadata() if log is not None else {}),
        "flagged_rows": flagged,
        "flags_by_reason": MetadataValue.json(by_reason),
        "from_batch": int(len(batch.rows)) + kept_out,
        BATCH_IN_PARTS: kept_out,
        **({"batch_plan_id": str(reference["plan_id"])} if reference is not None else {}),
        "from_landing": int(len(landed)),
        "model_versions": MetadataValue.json(versions),
        "lineage": lineage.describe(),
        "excluded_rows": MetadataValue.json(excluded),
        "skipped_files": MetadataValue.json(skipped_sentences(skipped)),
        **_day_sketch(context, data, basis, production, manifest, reference, log),
        **_day_scores(context, data, production, manifest, reference, log),
    })
    yield evidence_check(EVIDENCE_CHECK, skipped, "landing")


def _day_sketch(context: AssetExecutionContext, data: pd.DataFrame,
                basis: SketchBasis | str, production: ProductionDataResource,
                manifest: dict | None, reference: dict | None, log: InLog | None) -> dict:
    """The day's drift sketch against the current reference profile, written beside the
    instance's storage and named in the metadata with its rows, so that drift_scores
    pools this day into later windows without loading it. The batch-scored rows enter
    it as the merge of their shards' sketches when every shard has one on this profile
    (`drift_sketch_from_shards`: their rows); a log day kept in the log, as the merge of
    its segments' sketches. No profile yet (or it cannot be read): no sketch, and
    drift_scores loads the day's rows instead."""
    if isinstance(basis, str):
        return {"drift_sketch": f"none ({basis})"}
    day = context.partition_key
    from_log = log.day.drift if log is not None else None

    def own(rows: pd.DataFrame) -> DriftSketch:  # the frame's rows, and the log's
        sketch = basis.sketch(rows)
        return sketch if from_log is None else merge_sketches([sketch, from_log])

    shards = _batch_sketch(production, day, basis, manifest)
    if reference is not None:  # the batch rows are not in `data`: their parts are read
        if shards is None or shards.n_rows != int(reference["rows"]):
            try:
                parts = merge_sketches(basis.sketch(rows) for rows
                                       in production.batch_batches(day, reference))
            except OSError as exc:  # the parts replaced while being read
                raise Failure(f"the batch parts of {day} changed while being read ({exc}): "
                              "materialize production_data again") from None
            return _sketch_metadata(context, merge_sketches([own(data), parts]),
                                    basis, 0, parts.n_rows)
        sketch = merge_sketches([own(data), shards])
        return _sketch_metadata(context, sketch, basis, shards.n_rows)
    batch = (data["source"] == BATCH_SOURCE if "source" in data
             else pd.Series(False, index=data.index))
    if shards is not None and int(batch.sum()) == shards.n_rows:
        sketch = merge_sketches([own(data[~batch]), shards])
    else:
        shards, sketch = None, own(data)
    return _sketch_metadata(context, sketch, basis, shards.n_rows if shards is not None else 0)


def _sketch_metadata(context: AssetExecutionContext, sketch: DriftSketch,
                     basis: SketchBasis, from_shards: int, from_parts: int = 0) -> dict:
    folder = Path(context.instance.storage_directory()) / "drift_sketches" / "production_data"
    path = write_day_sketch(folder / context.partition_key, context.run_id, sketch)
    return {"drift_sketch": MetadataValue.path(str(path)),
            "drift_sketch_rows": sketch.n_rows, "drift_sketch_basis": basis.digest,
            "drift_sketch_version": basis.version or "any",
            "drift_sketch_from_shards": from_shards,
            **({"drift_sketch_from_parts": from_parts} if from_parts else {})}


def _day_scores(context: AssetExecutionContext, data: pd.DataFrame,
                production: ProductionDataResource, manifest: dict | None,
                reference: dict | None, log: InLog | None) -> dict:
    """The day's score sketches per model version (what estimated_performance reads
    instead of the rows), written beside the instance's storage and named in the
    metadata. The batch-scored rows enter as the merge of their shards' sketches when
    every part has one and they hold exactly the day's batch rows; a log day kept in
    the log, as its segments' merged sketches."""

    def sketch_rows(rows: pd.DataFrame) -> DayScores:  # the frame's rows, and the log's
        scores = sketch_frame_rows(rows)
        return scores if log is None else scores.merged(log.day.scores)

    batch = (data["source"] == BATCH_SOURCE if "source" in data
             else pd.Series(False, index=data.index))
    shards = _batch_scores(production, context.partition_key, manifest)
    from_parts = 0
    if reference is not None:  # the batch rows are not in `data`: their parts are read
        if shards is None or shards.n_rows != int(reference["rows"]):
            parts = batch_scores_of(production, context.partition_key, reference)
            shards, from_parts = None, parts.n_rows + sum(parts.unsketched.values())
            scores = sketch_rows(data).merged(parts)
        else:
            scores = sketch_rows(data).merged(shards)
    elif shards is not None and shards.n_rows == int(batch.sum()):
        scores = sketch_rows(data[~batch]).merged(shards)
    else:
        shards, scores = None, sketch_rows(data)
    folder = Path(context.instance.storage_directory()) / "score_sketches" / "production_data"
    path = write_day_sketch(folder / context.partition_key, context.run_id, scores)
    return {"score_sketch": MetadataValue.path(str(path)),
            "score_sketch_rows": MetadataValue.json(
                {v: s.n_rows for v, s in sorted(scores.versions.items())}),
            "score_sketch_from_shards": shards.n_rows if shards is not None else 0,
            **({"score_sketch_from_parts": from_parts} if from_parts else {}),
            "score_sketch_left_out": MetadataValue.json(scores.left_out)}


def _batch_by_reference(manifest: dict, lineage: Lineage) -> tuple[ScopedRows, dict | None]:
    """A batch day kept in its parts: none of its rows in the frame, and the manifest
    when the lineage admits its model version (else all its rows left out, counted)."""
    probe = pd.DataFrame({"model_name": [str(manifest["model_name"])],
                          "model_version": [str(manifest["model_version"])]})
    scoped = scope_rows(probe, lineage)
    rows = int(manifest["rows"])
    return (ScopedRows(probe.iloc[0:0], {k: rows for k in scoped.excluded}),
            manifest if len(scoped.rows) else None)


def _batch_scores(production: ProductionDataResource, day: str,
                  manifest: dict | None) -> DayScores | None:
    """The day's batch-scored rows as the merge of their parts' score sketches, under
    `manifest`'s model version, when every part has one; else None."""
    if manifest is None:
        return None
    folder = production.batch_output_dir_of(day)
    try:
        paths = manifest_score_sketches(folder, manifest)
        merged = merge_score_sketches(ScoreSketch.from_bytes(p.read_bytes())
                                      for p in paths or [])
        if merged is None:
            return None
        return DayScores({str(manifest["model_version"]): merged})
    except (OSError, ValueError, KeyError):  # unreadable: the rows are sketched instead
        return None


def _batch_sketch(production: ProductionDataResource, day: str,
                  basis: SketchBasis, manifest: dict | None) -> DriftSketch | None:
    """The day's batch-scored rows as `manifest`'s shards' merged sketches, when every
    shard was sketched on `basis` by the model version it judges; else None."""
    if manifest is None:
        return None
    folder = production.batch_output_dir_of(day)
    try:
        if basis.version not in (None, str(manifest["model_version"])):
            return None
        paths = manifest_sketches(folder, manifest, basis.digest)
        return merge_sketches(read_sketch(p) for p in paths) if paths else None
    except (OSError, ValueError, KeyError):  # unreadable: the rows are sketched instead
        return None


def _sketch_basis(context: AssetExecutionContext,
                  mlflow_tracking: MlflowTracking) -> SketchBasis | str:
    """The profile reference_profile last materialized (from its MLflow run) and the
    champion version it holds, or why there is none."""
    event = context.instance.get_latest_materialization_event(AssetKey("reference_profile"))
    metadata = event.asset_materialization.metadata if (
        event is not None and event.asset_materialization is not None) else {}
    if "mlflow_run_id" not in metadata:
        return "no reference profile materialized yet"
    version = metadata.get("champion_version")
    try:
        profile = run_profile(mlflow_tracking.tracking_uri, str(metadata["mlflow_run_id"].value))
    except Exception as exc:  # noqa: BLE001 - a sketch is an optimisation: say why not
        return f"the reference profile cannot be read: {type(exc).__name__}"
    return SketchBasis(profile, str(version.value) if version is not None else None)


def evidence_check(name: str, skipped: list[SkippedFile], kind: str) -> AssetCheckResult:
    """Passes when every file was used; warns naming each file left out and why."""
    if not skipped:
        return AssetCheckResult(check_name=name, passed=True,
                                description=f"every {kind} file was read",
                                metadata={"skipped_files": MetadataValue.json([])})
    return AssetCheckResult(
        check_name=name, passed=False, severity=AssetCheckSeverity.WARN,
        description=(f"{len(skipped)} {kind} file(s) left out (the rest was used); fix or "
                     f"remove: " + "; ".join(skipped_sentences(skipped)))[:2000],
        metadata={"skipped_files": MetadataValue.json(skipped_sentences(skipped))})


def _score_with_champion(rows: pd.DataFrame, mlflow_tracking: MlflowTracking,
                         lineage: Lineage) -> pd.DataFrame:
    """Landed rows with the champion's outputs, when the champion is of this lineage (a
    champion trained on another dataset cannot score them: they stay unscored)."""
    name = mlflow_tracking.registered_model_name
    champion = registry.alias_version(mlflow_tracking.client, name, registry.CHAMPION)
    if champion is None or str(champion.version) not in lineage.versions:
        return rows
    try:
        model = load_pipeline(f"models:/{name}/{champion.version}")
    except UntrustedModelError as exc:  # the safe loader never opened it
        raise Failure(description=f"landed rows cannot be scored: champion version "
                      f"{champion.version} of {name} was refused: {exc}",
                      allow_retries=False) from exc
    outputs, _ = model_outputs(model.pipeline, rows)
    return pd.concat([rows, outputs], axis=1).assign(model_version=str(champion.version))


def _estimate_against_realised(context: AssetExecutionContext,
                               headline: dict) -> tuple[list[EstimateCheck], str]:
    """The day's estimated_performance (its headline version's bands, read from the
    instance) against the champion's realised metrics, when both are of one version and
    the estimate was made on the production data this run judges (estimated_performance
    is an upstream of live_performance, so in one run it is materialized first). An
    estimate older than the day's production data is not compared: the note says so."""
    if not headline.get("labelled_rows"):
        return [], ""
    record = latest_materialization(context.instance, context.partition_key,
                                    "estimated_performance")
    materialization = record.asset_materialization if record else None
    if record is None or materialization is None:
        return [], "no estimated_performance for this day"
    data = latest_materialization(context.instance, context.partition_key)
    if data is not None and data.storage_id > record.storage_id:
        return [], ("the day's estimate predates its production data (rebuilt since): "
                    "not compared until estimated_performance runs on it")
    bands, version = (materialization.metadata.get(k) for k in ("bands", "model_version"))
    if bands is None or version is None or not isinstance(bands.value, Mapping):
        return [], "the day was not estimated (estimated_performance has no bands)"
    if str(version.value) != str(headline.get("champion_version")):
        return [], (f"the estimate is of version {version.value}, the realised values of "
                    f"{headline.get('champion_version')}")
    return compare_with_realised(dict(bands.value), headline,
                                 int(headline["labelled_rows"])), ""


@asset(group_name="monitoring", partitions_def=daily_partitions, kinds={"scikit-learn"},
       # Ordering, not data: in one run (score_drift) the day's estimate is made before
       # it is compared with the realised values; never the previous run's estimate.
       deps=["estimated_performance"], automation_condition=AFTER_PRODUCTION_DATA,
       check_specs=[AssetCheckSpec(
           EVIDENCE_CHECK, asset="live_performance",
           description="Warns when a labels file cannot be used (not UTF-8 CSV, no "
           "request_id/label columns): it is left out and named, the others are used.")])
def live_performance(context: AssetExecutionContext, production_data: pd.DataFrame,
                     production: ProductionDataResource) -> Iterator:
    """Accuracy and friends (a classifier) or RMSE, MAE, R² and MAPE (a regressor) for
    one day, on the predictions whose true labels have arrived (labels files joined on
    request_id): one row per model version and variant (`per_version`: a canary day has
    the champion's and the canary's), and the champion's as the headline keys
    (`champion_version`: the version of the day's last champion answer). Numeric
    predictions are a regressor's (its labels, text in the files, are read as numbers;
    a label that is no number is left out and counted)."""
    files = production.label_files()
    for file in files.skipped:
        context.log.warning("labels file left out: %s", file.sentence())
    record = latest_materialization(context.instance, context.partition_key)
    rows, total, champion = with_labelled_in_place(
        production_data, record.asset_materialization.metadata if record is not None and (
            record.asset_materialization is not None) else {}, production,
        context.partition_key, files.labels)
    report = live_report(rows, files.labels, total, champion)
    headline = report.headline
    metadata: dict = {k: (MetadataValue.float(v) if isinstance(v, float) else v)
                      for k, v in headline.items()}
    metadata.update({
        "per_version": MetadataValue.md(per_version_markdown(report.per_version)),
        "per_version_json": MetadataValue.json(report.per_version),
        "labelled_share": round(headline["all_labelled_rows"] / max(report.rows, 1), 4)
        if "all_labelled_rows" in headline else 0.0,
        "skipped_files": MetadataValue.json(skipped_sentences(files.skipped))})
    if not report.per_version:
        metadata["note"] = "no labels yet for this day's predictions"
    value = report.as_value()
    compared, not_compared = _estimate_against_realised(context, headline)
    if not_compared:
        metadata["estimate_vs_realised"] = f"not compared: {not_compared}"
    if compared:
        value["estimate_vs_realised"] = [{**dataclasses.asdict(c), "error": c.error,
                                          "within_band": c.within_band} for c in compared]
        metadata["estimate_vs_realised"] = MetadataValue.md("\n".join(
            f"- {c.sentence()}" for c in compared))
        metadata["estimate_outside_band"] = MetadataValue.json(
            [c.metric for c in compared if not c.within_band])
        for check in compared:
            if not check.within_band:
                context.log.warning("estimated performance missed: %s", check.sentence())
    yield Output(value, metadata=metadata)
    yield evidence_check(EVIDENCE_CHECK, files.skipped, "labels")
