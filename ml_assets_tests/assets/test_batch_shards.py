"""Sharded batch scoring through Dagster: a day of a Parquet file (row groups of 50 rows)
and a CSV file scored in several shards, one step each, by the session's compiled
breast-cancer champion; no row lost or duplicated; one shard re-run alone replaces its
part; a shard that fails is retried alone, the day stays unpublished until a
re-execution from failure runs that shard only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import (
    Definitions,
    ReexecutionOptions,
    define_asset_job,
    execute_job,
    in_process_executor,
    reconstructable,
)

from ml_assets import batch
from ml_assets.core.batch.scoring import input_files
from ml_assets.core.batch.shards import plan_shards, read_day, read_manifest
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.estimation.day_scores import sketch_rows
from ml_assets.core.estimation.score_sketch import ScoreSketch, merge_score_sketches
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource

SHARD_ROWS = 100
RUN_CONFIG = {"ops": {"batch_predictions": {"ops": {"plan_batch_shards": {
    "config": {"shard_rows": SHARD_ROWS}}}}}}
# The resources of the reconstructable job below: set once by the module's `resources`
# fixture (the job runs in this process, with the in-process executor, and Dagster keeps
# the job it reconstructed: one set of directories for the module, a day per test).
RESOURCES: dict = {}


def batch_day_job():
    return Definitions(assets=[batch.batch_predictions], resources=RESOURCES,
                       jobs=[define_asset_job("batch_day", selection=["batch_predictions"])],
                       executor=in_process_executor).resolve_job_def("batch_day")


@pytest.fixture(scope="module")
def resources(tmp_path_factory, mlflow_store, cancer_champion):
    tmp_path = tmp_path_factory.mktemp("batch_shards")
    production = ProductionDataResource(
        prediction_log_path=str(tmp_path / "log.db"), landing_dir=str(tmp_path / "landing"),
        labels_dir=str(tmp_path / "labels"), batch_input_dir=str(tmp_path / "in"),
        batch_output_dir=str(tmp_path / "out"))
    RESOURCES.clear()
    RESOURCES.update(production=production, data_source=DataSourceResource(
        kind="breast_cancer"), mlflow_tracking=MlflowTracking(
        tracking_uri=mlflow_store["tracking_uri"], experiment_name=cancer_champion.name,
        registered_model_name=cancer_champion.name))
    yield RESOURCES
    RESOURCES.clear()


def _write_day(production: ProductionDataResource, day: str) -> pd.DataFrame:
    """300 rows in a Parquet file of six 50-row groups, 40 rows in a CSV file (with the
    target: ignored)."""
    table = load_breast_cancer_frame()
    folder = Path(production.batch_input_dir) / day
    folder.mkdir(parents=True)
    rows = table.drop(columns=BREAST_CANCER_TARGET).sample(300, random_state=4,
                                                           replace=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                   folder / "big.parquet", row_group_size=50)
    table.sample(40, random_state=5).to_csv(folder / "small.csv", index=False)
    return rows


def _run(instance, day: str, reexecution: ReexecutionOptions | None = None):
    return execute_job(reconstructable(batch_day_job), instance=instance,
                       run_config=RUN_CONFIG, tags={"dagster/partition": day},
                       reexecution_options=reexecution, raise_on_error=False)


def _steps(instance, result) -> set[str]:
    run = instance.get_run_by_id(result.run_id)
    events = instance.all_logs(run.run_id)
    return {e.step_key for e in events if e.is_dagster_event and e.dagster_event.is_step_start}


def _expected_ids(day: str) -> set[str]:
    return ({f"batch-{day}-big-{i}" for i in range(1, 301)}
            | {f"batch-{day}-small-{i}" for i in range(1, 41)})


def test_a_day_is_scored_in_shards_and_a_shard_re_runs_alone(resources, instance):
    day = "2026-11-20"
    production = resources["production"]
    rows = _write_day(production, day)
    result = _run(instance, day)
    assert result.success
    day_dir = Path(production.batch_output_dir) / day
    manifest = read_manifest(day_dir)
    # row groups of 50 gathered up to 100 rows: 3 Parquet shards, the CSV file whole
    shard_steps = {s for s in _steps(instance, result) if "score_batch_shard" in s}
    assert len(shard_steps) == 4 and len(manifest["parts"]) == 4
    assert [p["rows"] for p in manifest["parts"]] == [100, 100, 100, 40]
    assert manifest["files"] == {"big.parquet": 300, "small.csv": 40}
    written = read_day(day_dir)
    assert len(written) == 340 and set(written["request_id"]) == _expected_ids(day)
    big = written[written["source_file"] == "big.parquet"]
    pd.testing.assert_frame_equal(big[list(rows.columns)].reset_index(drop=True),
                                  rows.reset_index(drop=True), check_dtype=False)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == dict.fromkeys(batch._CHECK_DESCRIPTIONS, True)

    # One shard again, alone (its siblings' results come from the first run).
    part = day_dir / manifest["parts"][1]["path"]
    before = part.stat().st_ino
    again = _run(instance, day, ReexecutionOptions(
        parent_run_id=result.run_id,
        step_selection=["batch_predictions.score_batch_shard[part_00001]",
                        "batch_predictions.publish_batch_day"]))
    assert again.success
    assert _steps(instance, again) == {"batch_predictions.score_batch_shard[part_00001]",
                                       "batch_predictions.publish_batch_day"}
    assert part.stat().st_ino != before  # replaced by rename, not appended to
    rescored = read_day(day_dir)
    assert len(rescored) == 340 and rescored["request_id"].is_unique
    pd.testing.assert_frame_equal(rescored, written)  # same plan: the same rows
    (plan_dir,) = (day_dir / "parts").iterdir()
    assert sorted(p.name for p in plan_dir.iterdir()) == sorted(
        f"part-0000{i}.{kind}" for i in range(4) for kind in ("parquet", "scores.npz"))
    # each part's score sketch merged: the sketch of the day's rows, in one pass
    merged = merge_score_sketches(
        ScoreSketch.from_bytes((day_dir / p["scores"]).read_bytes())
        for p in read_manifest(day_dir)["parts"])
    (version, whole), = sketch_rows(rescored).versions.items()
    assert version == str(read_manifest(day_dir)["model_version"])
    assert merged.n_rows == whole.n_rows == 340
    np.testing.assert_array_equal(merged.keys, whole.reordered(merged.classes).keys)


def test_a_failing_shard_is_retried_alone_and_the_day_waits_for_it(resources, instance,
                                                                  cancer_champion):
    day = "2026-11-21"
    production = resources["production"]
    _write_day(production, day)
    plan = plan_shards(input_files(Path(production.batch_input_dir) / day), day=day,
                       model_name=cancer_champion.name,
                       model_version=str(cancer_champion.version), scored_at="",
                       shard_rows=SHARD_ROWS)
    day_dir = Path(production.batch_output_dir) / day
    blocked = plan.part_path(day_dir, plan.shards[2])
    (blocked / "in_the_way").mkdir(parents=True)  # the rename onto it fails, every attempt
    failed = _run(instance, day)
    assert not failed.success
    attempts = [e for e in failed.all_events if e.step_key and "part_00002" in e.step_key
                and e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(attempts) == 2  # RetryPolicy(max_retries=2): three attempts in all
    assert read_manifest(day_dir) is None and production.batch_predictions(day).empty

    (blocked / "in_the_way").rmdir()
    blocked.rmdir()
    recovered = _run(instance, day, ReexecutionOptions.from_failure(failed.run_id, instance))
    assert recovered.success
    assert _steps(instance, recovered) == {"batch_predictions.score_batch_shard[part_00002]",
                                           "batch_predictions.publish_batch_day"}
    written = production.batch_predictions(day)
    assert len(written) == 340 and set(written["request_id"]) == _expected_ids(day)


@pytest.fixture(scope="module")
def scoring_model(tmp_path_factory, mlflow_store, cancer_champion):
    """The session champion as a shard step opens it (downloaded, safe loader, graph)."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    from ml_assets.core.batch.shard_scoring import open_model

    uri = f"models:/{cancer_champion.name}/{cancer_champion.version}"
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp_path_factory.mktemp("champion")),
        tracking_uri=mlflow_store["tracking_uri"]))
    tags = MlflowClient(mlflow_store["tracking_uri"]).get_model_version(
        cancer_champion.name, cancer_champion.version).tags
    model = open_model(local, dict(tags or {}), "auto", source=uri)
    assert model.runtime == "onnx"
    return model


def test_a_step_opens_the_champion_to_predict_on_one_thread(scoring_model, cancer_champion):
    """A forest trained with n_jobs=-1 starts a joblib pool (and polls it with 10 ms
    sleeps) on every predict: a shard step's Pipeline, which answers near ties a few
    rows at a time, runs with every n_jobs at 1."""
    def jobs(pipeline) -> dict:
        return {k: v for k, v in pipeline.get_params(deep=True).items()
                if k == "n_jobs" or k.endswith("__n_jobs")}

    assert -1 in jobs(cancer_champion.trained.pipeline).values()  # as trained
    assert jobs(scoring_model.loaded.pipeline) and set(
        jobs(scoring_model.loaded.pipeline).values()) == {1}


def test_the_arrow_path_writes_what_the_frame_path_writes(tmp_path, scoring_model,
                                                          cancer_champion):
    """A Parquet shard scored from Arrow (no pandas frame) and through validate_input and
    a frame (any scorer other than `answer` takes that path) give the same part, byte
    for byte in its rows and schema."""
    from ml_assets.core.batch.shard_scoring import STAGES, answer, score_shard

    rows = load_breast_cancer_frame().drop(columns=BREAST_CANCER_TARGET)
    rows = rows.sample(400, random_state=7, replace=True)
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                   folder / "big.parquet", row_group_size=150)
    plan = plan_shards(input_files(folder), day="2026-11-22", model_name=cancer_champion.name,
                       model_version=str(cancer_champion.version),
                       scored_at="2026-11-22T00:00:00+00:00", shard_rows=1_000)
    (shard,) = plan.shards
    written = {}
    for path, scorer in (("arrow", answer), ("frame", lambda m, r: answer(m, r))):
        result = score_shard(plan, shard, scoring_model, tmp_path / path, scorer=scorer,
                             batch_rows=64)
        assert result.passed and result.input_rows == result.written_rows == 400
        assert set(result.seconds) == set(STAGES)
        written[path] = pq.read_table(plan.part_path(tmp_path / path, shard))
    assert written["arrow"].schema == written["frame"].schema
    assert written["arrow"].equals(written["frame"])
    assert written["arrow"].column("request_id")[-1].as_py() == "batch-2026-11-22-big-400"


def test_only_batches_that_certainly_pass_skip_pandas():
    """The Arrow fast path says yes only when validate_input would pass unchanged; every
    doubt goes to validate_input (which words the error)."""
    from ml_assets.core.batch.scoring import passes_without_pandas
    from ml_assets.core.data.schemas import breast_cancer_schema

    table = load_breast_cancer_frame()
    features = [c for c in table.columns if c != BREAST_CANCER_TARGET]
    schema = breast_cancer_schema(features)
    good = pa.RecordBatch.from_pandas(table[features].head(20), preserve_index=False)
    assert passes_without_pandas(good, schema, BREAST_CANCER_TARGET)
    name = features[0]
    column = good.schema.get_field_index(name)

    def with_first(values, type_=None):
        return good.set_column(column, name, pa.array(values, type=type_ or pa.float64()))

    first = good.column(name).to_pylist()
    refused = {
        "negative (Check.ge(0))": with_first([-1.0, *first[1:]]),
        "infinite": with_first([float("inf"), *first[1:]]),
        "NaN where not nullable": with_first([float("nan"), *first[1:]]),
        "null where not nullable": with_first([None, *first[1:]]),
        "float32 (coerced)": with_first(first, pa.float32()),
        "missing column": good.drop_columns([name]),
    }
    for why, record_batch in refused.items():
        assert not passes_without_pandas(record_batch, schema, BREAST_CANCER_TARGET), why
