"""Past one machine's memory: a day of generated rows (30 numeric features, Parquet)
scored by the sharded `batch_predictions` asset with 1 and 2 worker processes (Dagster's
multiprocess executor: one process per shard step), against a plain ONNX Runtime script
over the same files; then drift over the same rows from merged per-part sketches, against
single-pass `score_drift`.

    python benchmarks/bench_scale.py                       # 2,000,000 rows, 3 repeats
    python benchmarks/bench_scale.py --rows 20000000       # the issue's 20M rows
    python benchmarks/bench_scale.py --rows 20000000 --file-rows 5000000 \
        --shard-rows 5000000 --repeats 2 --start-methods forkserver,spawn   # as recorded
    python benchmarks/bench_scale.py --rows 200000 --repeats 1   # quick
    python benchmarks/bench_scale.py --start-methods spawn,forkserver   # also warm steps

The executor is the product's (`build_executor("multiprocess")`, ml_assets/execution.py,
with ML_MAX_CONCURRENT = the workers and ML_START_METHOD per `--start-methods`):
`forkserver` (the product's default: steps forked from one server that imported
`PRELOAD_MODULES` once) and/or `spawn` (Dagster's default: a fresh interpreter importing
Dagster, MLflow, scikit-learn and skops per step). Each shard step records its seconds per
stage (read, validate, score, write, sketch, check) in the day's manifest; the summary gives their
medians, the steps' own durations, and what the run spent outside its shard steps
(process start-up, the plan and publish steps, hand-offs).

Setup (not timed): a 50-tree forest on the synthetic generator's 30 features, registered
and compiled (ONNX, parity-checked) in a temporary MLflow store, with its reference
profile stored with its run as `reference_profile` stores it, so that each shard step
sketches drift as the product's do (`--no-step-sketch`: no stored profile, the steps
sketch performance only; the configuration of the runs before 8 December); the day as
Parquet files of --file-rows rows (row groups of 100,000), the second
half of the files shifted by 0.2 std on 15 features (so the drift verdicts have
something to find). Every measured thing runs in its own child process; peak RSS is
VmHWM: of each child itself, and of each shard step process (the step records its own
in the day's manifest). Runs alternate (plain, 1 worker, 2 workers) per repeat;
medians. rows/s per core = rows / wall time / worker processes. CPU seconds: user +
system of everything a variant ran while its wall clock ran (the run process, its
children, the forkserver with the steps it forked; the plain script's own process).

Performance estimation runs then too: the parts' score sketches merged and estimated
(CBPE on the setup's calibrator), against one sketch of all the day's rows read at once;
the verdicts (gate 0.8 on the gated metrics) and the largest difference of the bands.

Drift runs once, after the first repeat (every repeat scores the same day): `drift_sketch`
merges the steps' sketches when they made them (`sketched_by`), else sketches the parts in
its own pass; with
--json-out, the runs so far are written after each repeat, so a run cut short leaves them.
Drift's single-pass reference: the whole day in one frame (`score_drift`) up to
`--single-pass-max` rows; above it, still in one exact pass but one column of all rows at
a time (`score_drift_by_column`), so that its memory is bounded too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_assets.execution import PRELOAD_MODULES  # noqa: E402 - after the path

MODEL = "bench_scale_model"
DAY = "2026-11-20"
FEATURES = 30


def _cpu_seconds() -> float:
    """User + system CPU of this process, its reaped children and the forkserver it
    started, if any (the forkserver reaps the steps it forked: their CPU is its
    children's)."""
    from multiprocessing import forkserver

    total = sum(getattr(resource.getrusage(who), field)
                for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for field in ("ru_utime", "ru_stime"))
    pid = forkserver._forkserver._forkserver_pid  # private: the server this process started
    if pid:  # fields 14-17 of /proc/<pid>/stat: utime stime cutime cstime, in ticks
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def _peak_mib() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- setup ----------------------------------------------------------------------------------

def setup(root: Path, rows: int, file_rows: int, store_profile: bool = True) -> dict:
    """The champion (registered, compiled) and its reference profile, and the day's files.
    `store_profile`: the profile stored with the champion's run, as reference_profile
    stores it, so that each shard step sketches drift (the product after training);
    without it the steps score and sketch performance only."""
    import mlflow
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml_assets.core.data.datasets import SyntheticSpec, make_synthetic
    from ml_assets.core.drift.profile import build_reference_profile
    from ml_assets.core.drift.scoring import model_outputs
    from ml_assets.core.estimation.store import calibrate_model
    from ml_assets_tests.support.models import experiment_id, register, train_synthetic

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    spec = SyntheticSpec(n_rows=20_000, n_numeric=FEATURES, seed=0)
    trained = train_synthetic(spec, n_estimators=50)
    version, info = register(trained, MODEL, experiment_id(MODEL, (root / "art").as_uri()),
                             compile=True)
    # as the reference_profile asset builds it: features on the training split, model
    # outputs on the held-out split
    features = build_reference_profile(trained.X_train,
                                       dict.fromkeys(trained.X_train.columns, "numeric"))
    outputs, output_kinds = model_outputs(trained.pipeline, trained.X_test)
    predictions = build_reference_profile(outputs, {}, output_kinds)
    profile = dataclasses.replace(features, predictions=predictions.predictions)
    (root / "profile.npz").write_bytes(profile.to_bytes())
    if store_profile:
        from mlflow import MlflowClient

        from ml_assets.core.drift.sketch_store import PROFILE_ARTIFACT

        stored = root / "stored" / Path(PROFILE_ARTIFACT).name
        stored.parent.mkdir()
        stored.write_bytes(profile.to_bytes())
        MlflowClient().log_artifact(info.run_id, str(stored), str(Path(PROFILE_ARTIFACT).parent))
    # as reference_profile stores it: the calibrator of the held-out rows
    labels = make_synthetic(spec)[spec.target].loc[trained.X_test.index]
    calibrator = calibrate_model(trained.pipeline, trained.X_test, labels, "binary")
    (root / "calibrator.json").write_text(calibrator.to_json())
    day = root / "in" / DAY
    day.mkdir(parents=True)
    files = -(-rows // file_rows)
    written = 0
    for i in range(files):
        n = min(file_rows, rows - written)
        path = day / f"drop_{i:03d}.parquet"
        with pq.ParquetWriter(path, pa.schema([(c, pa.float64())
                                               for c in spec.numeric_columns])) as writer:
            for start in range(0, n, 250_000):
                chunk = make_synthetic(SyntheticSpec(
                    n_rows=min(250_000, n - start), n_numeric=FEATURES,
                    seed=1000 + i * 1000 + start // 250_000,
                    shift=0.2 if i >= files / 2 else 0.0))
                table = pa.Table.from_pandas(chunk[spec.numeric_columns].astype(np.float64),
                                             preserve_index=False)
                writer.write_table(table.replace_schema_metadata(None),
                                   row_group_size=100_000)
        written += n
    return {"tracking_uri": mlflow.get_tracking_uri(), "version": version,
            "input_dir": str(root / "in"), "profile": str(root / "profile.npz"),
            "calibrator": str(root / "calibrator.json")}


# -- the sharded asset ------------------------------------------------------------------------

def bench_job():
    """The batch_predictions asset on the product's multiprocess executor (ML_START_METHOD,
    ML_MAX_CONCURRENT; directories from BENCH_*)."""
    from dagster import Definitions, define_asset_job

    from ml_assets import batch
    from ml_assets.execution import build_executor
    from ml_assets.resources import DataSourceResource, MlflowTracking
    from ml_assets.resources.production import ProductionDataResource

    out = os.environ["BENCH_OUTPUT_DIR"]
    return Definitions(
        assets=[batch.batch_predictions],
        resources={"production": ProductionDataResource(
            prediction_log_path=os.path.join(out, "log.db"),
            landing_dir=os.path.join(out, "landing"), labels_dir=os.path.join(out, "labels"),
            batch_input_dir=os.environ["BENCH_INPUT_DIR"], batch_output_dir=out),
            "data_source": DataSourceResource(kind="synthetic"),
            "mlflow_tracking": MlflowTracking(
                tracking_uri=os.environ["MLFLOW_TRACKING_URI"], experiment_name=MODEL,
                registered_model_name=MODEL)},
        jobs=[define_asset_job("bench_scale", selection=["batch_predictions"])],
        executor=build_executor("multiprocess"),
    ).resolve_job_def("bench_scale")


def _sharded(env: dict, shard_rows: int, queue) -> None:
    os.environ.update(env)
    from dagster import DagsterInstance, execute_job, reconstructable

    # the instance inside the benchmark's own directory (nothing else cleans it up)
    with tempfile.TemporaryDirectory(prefix="dagster-",
                                     dir=Path(env["BENCH_OUTPUT_DIR"]).parent) as home:
        with DagsterInstance.local_temp(home) as instance:
            started, cpu_before = time.perf_counter(), _cpu_seconds()
            result = execute_job(
                reconstructable(bench_job), instance=instance, tags={"dagster/partition": DAY},
                run_config={"ops": {"batch_predictions": {"ops": {"plan_batch_shards": {
                    "config": {"shard_rows": shard_rows}}}}}})
            wall = time.perf_counter() - started
            cpu = _cpu_seconds() - cpu_before
            steps = [(e.step_key, e.dagster_event.event_type_value, e.timestamp)
                     for e in instance.all_logs(result.run_id)
                     if e.dagster_event is not None and e.step_key
                     and "score_batch_shard" in e.step_key
                     and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")]
    starts = {key: at for key, kind, at in steps if kind == "STEP_START"}
    durations = [at - starts[key] for key, kind, at in steps if kind == "STEP_SUCCESS"]
    manifest = json.loads((Path(env["BENCH_OUTPUT_DIR"]) / DAY / "manifest.json").read_text())
    queue.put({"success": result.success, "wall": wall, "cpu": cpu,
               "load": os.getloadavg()[0], "step_seconds": sum(durations),
               "step_durations": durations, "stages": [p["seconds"] for p in manifest["parts"]],
               "shards": len(starts), "orchestrator_mib": _peak_mib(),
               # each shard step's own VmHWM, recorded in the manifest by the step
               "step_peak_mib": max(p["peak_rss_mib"] for p in manifest["parts"])})


# -- the plain ONNX Runtime script ---------------------------------------------------------------

def score_plain(graph: bytes, files: list[Path], out: Path, carry: bool = False) -> int:
    """Read each file's record batches, feed the graph, write prediction + probabilities:
    what a person would write with onnxruntime and pyarrow alone. The rows scored.
    `carry`: the features written beside the answers too, as batch_predictions' parts
    hold them (so the day's monitoring reads one file), for a like-for-like output."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml_assets.core.artifacts.onnx.contract import PROBABILITIES_OUTPUT

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    answers = [("prediction", pa.int64()), ("proba_0", pa.float64()),
               ("proba_1", pa.float64())]
    for file in files:
        source = pq.ParquetFile(file)
        schema = pa.schema([*(source.schema_arrow if carry else []), *answers])
        # dictionary encoding only where values repeat, as batch_predictions writes: by
        # default Parquet tries it on every column (distinct floats) before falling back
        with pq.ParquetWriter(out / file.name, schema, use_dictionary=["prediction"]) as writer:
            for batch in source.iter_batches(batch_size=65_536):
                feed = {name: batch.column(name).to_numpy().reshape(-1, 1) for name in names}
                proba = session.run([PROBABILITIES_OUTPUT], feed)[0]
                table = pa.table({"prediction": proba.argmax(axis=1),
                                  "proba_0": proba[:, 0].astype(np.float64),
                                  "proba_1": proba[:, 1].astype(np.float64)})
                if carry:
                    table = pa.Table.from_batches([batch]).append_column(
                        "prediction", table["prediction"]).append_column(
                        "proba_0", table["proba_0"]).append_column("proba_1", table["proba_1"])
                writer.write_table(table.replace_schema_metadata(None))
                rows += batch.num_rows
    return rows


def _plain(env: dict, queue) -> None:
    """The plain script over the day's files, timed (its own child process)."""
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    rows = score_plain(Path(env["BENCH_GRAPH"]).read_bytes(),
                       sorted((Path(env["BENCH_INPUT_DIR"]) / DAY).glob("*.parquet")),
                       Path(env["BENCH_OUTPUT_DIR"]), carry=env.get("BENCH_CARRY") == "1")
    queue.put({"wall": time.perf_counter() - started, "rows": rows,
               "cpu": _cpu_seconds() - cpu_before,
               "load": os.getloadavg()[0], "peak_mib": _peak_mib()})


# -- drift ------------------------------------------------------------------------------------

def _drift(env: dict, mode: str, queue) -> None:
    """Drift of the scored day: from per-record-batch sketches merged (`sketch`), the
    whole day read into one frame and scored in one pass (`single`), or scored in one
    exact pass a column of all rows at a time (`columns`)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml_assets.core.batch.shards import manifest_parts, read_manifest
    from ml_assets.core.drift.profile import ReferenceProfile
    from ml_assets.core.drift.scoring import score_drift, score_drift_by_column
    from ml_assets.core.drift.sketch import merge_sketches, sketch_frame
    from ml_assets.core.drift.sketch_scoring import score_sketch

    profile = ReferenceProfile.from_bytes(Path(env["BENCH_PROFILE"]).read_bytes())
    day_dir = Path(env["BENCH_OUTPUT_DIR"]) / DAY
    manifest = read_manifest(day_dir)
    assert manifest is not None, f"{day_dir} was not completely scored"
    parts = manifest_parts(day_dir, manifest)
    columns = [*profile.features, *profile.predictions]
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    from ml_assets.core.batch.shards import manifest_sketches
    from ml_assets.core.drift.sketch_store import SketchBasis, read_sketch

    from_steps = manifest_sketches(day_dir, manifest, SketchBasis(profile, None).digest)
    if mode == "sketch" and from_steps:
        # what production_data does: the shard steps' sketches, merged
        report = score_sketch(profile, merge_sketches(read_sketch(p) for p in from_steps))
    elif mode == "sketch":
        # one row group at a time, no pre-buffering (as a shard step reads): pyarrow's
        # reader over a whole file reads ahead, and its memory grows with the file
        files = [pq.ParquetFile(part, pre_buffer=False) for part in parts]
        merged = merge_sketches(
            sketch_frame(profile, batch.to_pandas())
            for file in files for group in range(file.num_row_groups)
            for batch in file.iter_batches(batch_size=65_536, columns=columns,
                                           row_groups=[group], use_threads=False))
        report = score_sketch(profile, merged)
    elif mode == "columns":
        names = set(pq.ParquetFile(parts[0]).schema_arrow.names)

        def column_of(name: str) -> pd.DataFrame:
            if name not in names:
                return pd.DataFrame(index=pd.RangeIndex(manifest["rows"]))
            # the Arrow buffers released as they convert (a NumPy concatenation of the
            # parts' columns measured 2.0 GiB at 20M rows, this 1.1 GiB)
            return pa.concat_tables(pq.read_table(part, columns=[name]) for part in parts
                                    ).to_pandas(self_destruct=True, split_blocks=True)

        report = score_drift_by_column(profile, column_of, manifest["rows"])
    else:
        frame = pd.concat([pd.read_parquet(part, columns=columns) for part in parts],
                          ignore_index=True)
        report = score_drift(profile, frame)
    queue.put({"wall": time.perf_counter() - started, "cpu": _cpu_seconds() - cpu_before,
               "peak_mib": _peak_mib(), "rows": report.n_rows,
               "sketched_by": ("the shard steps" if from_steps else "this pass over the parts")
               if mode == "sketch" else "", "dataset_drifted": report.dataset_drifted,
               "prediction_drifted": report.prediction_drifted,
               "drifted": sorted(report.drifted_features),
               "prediction_columns_drifted": sorted(report.prediction_drifted_columns),
               "max_effect_error": float(report.features["effect_error"].max())
               if "effect_error" in report.features else 0.0})


def _estimate(env: dict, mode: str, queue) -> None:
    """Performance of the scored day estimated before labels: from the parts' score
    sketches (written by the shard steps) merged (`sketch`), or from one sketch of all
    the day's rows read at once (`single`: the rows' probabilities in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml_assets.core.batch.shards import (
        manifest_parts,
        manifest_score_sketches,
        read_manifest,
    )
    from ml_assets.core.estimation.calibration import Calibrator
    from ml_assets.core.estimation.cbpe import GATED, estimate_from_sketch, verdict
    from ml_assets.core.estimation.score_sketch import ScoreSketch, merge_score_sketches

    calibrator = Calibrator.from_json(Path(env["BENCH_CALIBRATOR"]).read_text())
    classes = list(calibrator.classes)
    day_dir = Path(env["BENCH_OUTPUT_DIR"]) / DAY
    manifest = read_manifest(day_dir)
    assert manifest is not None, f"{day_dir} was not completely scored"
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    if mode == "sketch":
        paths = manifest_score_sketches(day_dir, manifest)
        assert paths, "the parts have no score sketches"
        sketch = merge_score_sketches(ScoreSketch.from_bytes(p.read_bytes()) for p in paths)
    else:
        columns = [f"proba_{c}" for c in classes]
        table = pa.concat_tables(pq.read_table(part, columns=[*columns, "prediction"])
                                 for part in manifest_parts(day_dir, manifest))
        proba = np.column_stack([table[c].to_numpy() for c in columns])
        answers = table["prediction"].combine_chunks().dictionary_encode()
        index = np.asarray([classes.index(str(v)) for v in answers.dictionary.to_pylist()])
        del table
        sketch = ScoreSketch.from_rows(proba, index[answers.indices.to_numpy()], classes)
    estimate = estimate_from_sketch(sketch, calibrator)
    gate = {name: 0.8 for name in GATED}
    queue.put({"wall": time.perf_counter() - started, "cpu": _cpu_seconds() - cpu_before,
               "peak_mib": _peak_mib(), "rows": estimate.rows, "cells": sketch.cells,
               "verdict": verdict(estimate, gate)[0], "binning_error": estimate.binning,
               "metrics": estimate.to_dict()["metrics"]})


def _estimate_runs(env: dict) -> dict:
    """Performance estimated from merged score sketches, and from one pass over the rows."""
    runs = {"estimate_sketch": _child(_estimate, env, "sketch"),
            "estimate_single_pass": _child(_estimate, env, "single")}
    one, two = runs["estimate_sketch"], runs["estimate_single_pass"]
    runs["estimate_verdicts_equal"] = one["verdict"] == two["verdict"]
    runs["estimate_max_difference"] = max(
        abs(one["metrics"][m][k] - two["metrics"][m][k])
        for m in one["metrics"] for k in ("estimate", "low", "high"))
    walls = {k: v.get("wall") if isinstance(v, dict) else v for k, v in runs.items()}
    print(f"estimate: {json.dumps(walls)}", flush=True)
    return runs


def _child(target, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:  # a child that died without answering fails the benchmark, not hangs it
        try:
            answer = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"{target.__name__} exited {process.exitcode} "
                                   "without a result") from None
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__} exited {process.exitcode}")
    return answer


def _drift_runs(args, env: dict) -> dict:
    """Drift of the scored day from merged sketches, and its single-pass reference."""
    drift = {"drift_sketch": _child(_drift, env, "sketch")}
    if not args.no_single_pass:
        mode = "single" if args.rows <= args.single_pass_max else "columns"
        drift["drift_single_pass"] = {"mode": mode, **_child(_drift, env, mode)}
        keys = ("dataset_drifted", "prediction_drifted", "drifted",
                "prediction_columns_drifted")
        drift["verdicts_equal"] = all(drift["drift_sketch"][k]
                                      == drift["drift_single_pass"][k] for k in keys)
    walls = {k: v.get("wall") if isinstance(v, dict) else v for k, v in drift.items()}
    print(f"drift: {json.dumps(walls)}", flush=True)
    return drift


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet steps
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--file-rows", type=int, default=1_000_000,
                        help="rows per input Parquet file (a shard never spans two files)")
    parser.add_argument("--shard-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path, help="also write the summary here")
    parser.add_argument("--start-methods", default="spawn",
                        help="comma-separated: spawn, forkserver (how step processes start)")
    parser.add_argument("--single-pass-max", type=int, default=5_000_000,
                        help="largest day scored single-pass in one frame for the drift "
                        "check; a larger day is scored single-pass one column at a time")
    parser.add_argument("--no-step-sketch", action="store_true",
                        help="the champion's run holds no reference profile: shard steps do "
                        "not sketch drift (drift then sketches the parts in its own pass)")
    parser.add_argument("--plain-carrying", action="store_true",
                        help="also a plain script that writes the features beside its "
                        "answers, as batch_predictions' parts hold them (like-for-like)")
    parser.add_argument("--no-single-pass", action="store_true",
                        help="drift from merged sketches only")
    parser.add_argument("--drift-only", type=Path, metavar="DIR",
                        help="only the drift runs, over a day this benchmark scored and "
                        "kept: DIR/out1/<day>/ (manifest and parts) and DIR/profile.npz")
    args = parser.parse_args()
    if args.drift_only:  # the day's own size picks the single-pass mode
        args.rows = json.loads((args.drift_only / "out1" / DAY / "manifest.json")
                               .read_text())["rows"]
        drift = _drift_runs(args, {"BENCH_OUTPUT_DIR": str(args.drift_only / "out1"),
                                   "BENCH_PROFILE": str(args.drift_only / "profile.npz")})
        print(json.dumps(drift, indent=1))
        if args.json_out:
            args.json_out.write_text(json.dumps(drift, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        ready = setup(root, args.rows, args.file_rows, store_profile=not args.no_step_sketch)
        print(f"setup: {args.rows:,} rows in {-(-args.rows // args.file_rows)} files, "
              f"model version {ready['version']} ({time.perf_counter() - started:.0f} s)",
              flush=True)
        graph = next((root / "art").rglob("model.onnx"))
        env = {"MLFLOW_TRACKING_URI": ready["tracking_uri"],
               "BENCH_INPUT_DIR": ready["input_dir"], "BENCH_GRAPH": str(graph),
               "BENCH_PROFILE": ready["profile"], "BENCH_CALIBRATOR": ready["calibrator"]}
        methods = [m.strip() for m in args.start_methods.split(",") if m.strip()]
        unknown = sorted(set(methods) - {"spawn", "forkserver"})
        if unknown or not methods:
            parser.error(f"--start-methods: {', '.join(unknown) or 'none given'}")
        variants = {f"{method} {workers}": (method, workers)
                    for method in methods for workers in ("1", "2")}
        plains = ["plain", *(["plain carrying"] if args.plain_carrying else [])]
        results: dict[str, list[dict]] = {**{p: [] for p in plains},
                                          **{v: [] for v in variants}}
        drift: dict = {}
        for repeat in range(args.repeats):
            for plain in plains:
                out = root / f"{plain}{repeat}".replace(" ", "-")
                results[plain].append(_child(_plain, {
                    **env, "BENCH_OUTPUT_DIR": str(out),
                    "BENCH_CARRY": "1" if plain == "plain carrying" else "0"}))
                shutil.rmtree(out, ignore_errors=True)  # a copy of the day per repeat
            for variant, (method, workers) in variants.items():
                run = _child(_sharded, {**env, "ML_MAX_CONCURRENT": workers,
                                        "ML_START_METHOD": method,
                                        "BENCH_OUTPUT_DIR": str(root / f"out{workers}")},
                             args.shard_rows)
                assert run["success"], run
                results[variant].append(run)
            print(f"repeat {repeat + 1}: " + ", ".join(
                f"{k} {v[-1]['wall']:.1f} s" for k, v in results.items()), flush=True)
            if repeat == 0:  # the scored day is the same in every repeat
                drift = _drift_runs(args, {**env, "BENCH_OUTPUT_DIR": str(root / "out1")})
                drift.update(_estimate_runs({**env, "BENCH_OUTPUT_DIR": str(root / "out1")}))
            if args.json_out:  # what a run cut short leaves
                args.json_out.write_text(json.dumps({"partial": True, "runs": results,
                                                     **drift}, indent=1))
        median = {k: statistics.median(r["wall"] for r in v) for k, v in results.items()}
        workers_of = {**dict.fromkeys(plains, 1), **{v: int(w) for v, (_, w) in variants.items()}}
        per_core = {k: args.rows / median[k] / workers_of[k] for k in results}
        sharded = list(variants)
        summary = {
            "rows": args.rows, "repeats": args.repeats,
            "steps_sketch_drift": not args.no_step_sketch,
            "preload_modules": list(PRELOAD_MODULES),
            "load_average_1min": {k: [round(r["load"], 1) for r in v]
                                  for k, v in results.items()},
            "wall_seconds": median, "rows_per_s_per_core": per_core,
            "cpu_seconds": {k: statistics.median(r["cpu"] for r in v)
                            for k, v in results.items()},
            "cpu_ratio_sharded_to_plain": {
                k: statistics.median(r["cpu"] for r in results[k])
                / statistics.median(r["cpu"] for r in results["plain"]) for k in sharded},
            "ratio_plain_to_sharded_per_core": {k: per_core["plain"] / per_core[k]
                                                for k in sharded},
            **({"ratio_plain_carrying_to_sharded_per_core": {
                k: per_core["plain carrying"] / per_core[k] for k in sharded},
                "cpu_ratio_sharded_to_plain_carrying": {
                k: statistics.median(r["cpu"] for r in results[k])
                / statistics.median(r["cpu"] for r in results["plain carrying"])
                for k in sharded}} if args.plain_carrying else {}),
            # the steps' own durations (STEP_START to STEP_SUCCESS), summed, and the rest
            # of the run with 1 worker (start-ups, plan and publish, hand-offs)
            "step_seconds_1_worker": {k: statistics.median(r["step_seconds"]
                                                           for r in results[k])
                                      for k in sharded if k.endswith(" 1")},
            "outside_shard_steps_1_worker": {
                k: statistics.median(r["wall"] - r["step_seconds"] for r in results[k])
                for k in sharded if k.endswith(" 1")},
            "shard_step_seconds": {k: statistics.median(d for r in results[k]
                                                        for d in r["step_durations"])
                                   for k in sharded},
            # median seconds per stage of one shard step (score_shard's own clock)
            "shard_stages": {stage: statistics.median(s[stage] for k in sharded
                                                      for r in results[k]
                                                      for s in r["stages"])
                             for stage in results[sharded[0]][0]["stages"][0]},
            "peak_rss_mib": {**{p: max(r["peak_mib"] for r in results[p]) for p in plains},
                             "step_process": max(r["step_peak_mib"]
                                                 for k in sharded for r in results[k]),
                             "orchestrator": max(r["orchestrator_mib"]
                                                 for k in sharded for r in results[k])},
            "shards": results[sharded[0]][0]["shards"],
        }
        summary.update(drift)
        print(json.dumps(summary, indent=1))
        if args.json_out:
            args.json_out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
