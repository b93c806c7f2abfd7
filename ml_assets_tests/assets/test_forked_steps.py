"""The multiprocess executor as `ML_EXECUTOR=multiprocess` ships it (ml_assets/execution.py):
steps forked from a forkserver that preloaded PRELOAD_MODULES. A tiny day of batch input
scored by the `batch_predictions` graph (plan, three shard steps, publish: each a forked
process that opens the champion with MLflow, skops and ONNX Runtime) in a run process of
its own, as Dagster's run launcher starts one, so the forkserver it starts is this run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ml_assets.core.batch.shards import read_day, read_manifest
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.execution import PRELOAD_MODULES

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-11-21"


def forked_batch_job():
    """batch_predictions on the product's multiprocess executor; the run process and the
    steps forked for it read their directories from FORKED_* (set by the test)."""
    from dagster import Definitions, define_asset_job

    from ml_assets import batch
    from ml_assets.execution import build_executor
    from ml_assets.resources import DataSourceResource, MlflowTracking
    from ml_assets.resources.production import ProductionDataResource

    out = os.environ["FORKED_OUTPUT_DIR"]
    production = ProductionDataResource(
        prediction_log_path=os.path.join(out, "log.db"),
        landing_dir=os.path.join(out, "landing"), labels_dir=os.path.join(out, "labels"),
        batch_input_dir=os.environ["FORKED_INPUT_DIR"], batch_output_dir=out)
    model = os.environ["FORKED_MODEL"]
    return Definitions(
        assets=[batch.batch_predictions],
        resources={"production": production,
                   "data_source": DataSourceResource(kind="breast_cancer"),
                   "mlflow_tracking": MlflowTracking(
                       tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
                       experiment_name=model, registered_model_name=model)},
        jobs=[define_asset_job("forked_day", selection=["batch_predictions"])],
        executor=build_executor(),
    ).resolve_job_def("forked_day")


# The run process: executes the job, then says which forkserver (if any) it started.
RUN = """
import json, multiprocessing.forkserver as forkserver, sys
from dagster import DagsterInstance, execute_job, reconstructable
from ml_assets_tests.assets.test_forked_steps import forked_batch_job
with DagsterInstance.get() as instance:
    result = execute_job(reconstructable(forked_batch_job), instance=instance,
                         run_config={"ops": {"batch_predictions": {"ops": {
                             "plan_batch_shards": {"config": {"shard_rows": 100}}}}}},
                         tags={"dagster/partition": sys.argv[1]}, raise_on_error=False)
    logs = instance.all_logs(result.run_id)
    steps = sorted({e.step_key for e in logs
                    if e.is_dagster_event and e.dagster_event.is_step_success})
    runtimes = [e.asset_materialization.metadata["runtime"].value for e in logs
                if e.asset_materialization is not None]
server = forkserver._forkserver
print(json.dumps({"success": result.success, "steps": steps, "runtimes": runtimes,
                  "forkserver_pid": server._forkserver_pid,
                  "preloaded": server._preload_modules}))
"""


def test_multiprocess_steps_are_forked_from_a_preloaded_forkserver(tmp_path, mlflow_store,
                                                                    cancer_champion):
    folder = tmp_path / "in" / DAY
    folder.mkdir(parents=True)
    rows = load_breast_cancer_frame().drop(columns=BREAST_CANCER_TARGET).sample(
        300, random_state=7, replace=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                   folder / "day.parquet", row_group_size=50)
    (tmp_path / "home").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "DAGSTER_HOME": str(tmp_path / "home"),
        "ML_EXECUTOR": "multiprocess", "ML_MAX_CONCURRENT": "2",
        "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
        "FORKED_MODEL": cancer_champion.name, "FORKED_INPUT_DIR": str(tmp_path / "in"),
        "FORKED_OUTPUT_DIR": str(tmp_path / "out")}
    env.pop("ML_START_METHOD", None)  # the default
    done = subprocess.run([sys.executable, "-c", RUN, DAY], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["success"], done.stderr[-3000:]
    assert run["forkserver_pid"] is not None, "no forkserver was started"
    assert set(PRELOAD_MODULES) <= set(run["preloaded"])
    shard_steps = [s for s in run["steps"] if s.startswith("batch_predictions.score_batch_shard")]
    assert len(shard_steps) == 3, run["steps"]
    day_dir = tmp_path / "out" / DAY
    assert [p["rows"] for p in read_manifest(day_dir)["parts"]] == [100, 100, 100]
    written = read_day(day_dir)
    assert set(written["request_id"]) == {f"batch-{DAY}-day-{i}" for i in range(1, 301)}
    assert run["runtimes"] == [["onnx"]], "the forked steps answered with ONNX Runtime"
