"""Scale-out on the production profile: the whole training graph on 1,000,000 synthetic
rows with 1 vs 2 Celery workers, and drift scoring of 7 daily partitions launched in
parallel vs one after another.

    python benchmarks/bench_celery.py                      # 1,000,000 rows, 3 repeats
    python benchmarks/bench_celery.py --rows 100000 --repeats 1 --day-rows 5000   # quick

The stack is the integration tests' (ml_assets_tests/support/production_stack.py): PostgreSQL
instance storage from docker/dagster.yaml, runs queued and started by the daemon through
the code server, steps on Celery workers (Redis broker and results), an `mlflow server`
with a PostgreSQL backend store, the prediction log on PostgreSQL. Needs PostgreSQL and
Redis on 127.0.0.1. Each worker runs one step at a time (`--concurrency=1`); a step
uses every core itself (HistGradientBoosting threads, numpy).

Graph: 1 and 2 workers alternate (the second worker is started and stopped around each
2-worker run); the figure is the run's own duration (start to end in the run storage),
medians over the repeats. Drift: 7 partitions of `score_drift` (production_data,
drift_scores, live_performance) over a prediction log of --day-rows rows per day,
sequential (each launched when the previous finished) vs parallel (all 7 launched at
once; DAGSTER_MAX_CONCURRENT_RUNS=7), wall time from the first launch to the last end,
the two orders alternating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_assets_tests.support.production_stack import (  # noqa: E402
    REDIS_URL,
    ProductionStack,
    pg_url,
)
from ml_assets_tests.support.services import reachable  # noqa: E402

MODEL = "bench_celery_model"
AUTOMATION = [("sensor", "production_data_sensor"), ("sensor", "monitoring_automation"),
              ("sensor", "retrain_on_drift"), ("schedule", "daily_drift_scoring"),
              ("schedule", "weekly_retrain")]


def graph_config(rows: int, features: int, max_iter: int) -> dict:
    return {
        "resources": {"data_source": {"config": {
            "kind": "synthetic", "n_rows": rows, "n_numeric": features, "seed": 0}}},
        "ops": {"trained_model": {"config": {"model_type": "hist_gradient_boosting",
                                             "max_iter": max_iter, "cv_folds": 3}},
                # every repeat retrains the same model: a tie must still promote, so each
                # run executes the whole graph, champion_model included
                "champion_comparison": {"config": {"margin": 0.0}}},
    }


def run_seconds(instance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.end_time - record.start_time


def timed_graph(stack: ProductionStack, instance, config: dict) -> float:
    run_id = stack.launch("train_model", run_config=config, tags={"bench": "graph"})
    status = stack.wait_run(instance, run_id, timeout=3600)
    if status != "SUCCESS":
        raise SystemExit(f"graph run {run_id} ended {status}; see {stack.root}")
    return run_seconds(instance, run_id)


def write_prediction_log(stack: ProductionStack, days: list[str], rows: int,
                         features: int) -> None:
    """`rows` predictions per day from the champion (same distribution as training, so
    every run passes its checks and all of them execute every step)."""
    import mlflow

    from ml_assets.core.artifacts.loading import load_pipeline
    from ml_assets.core.data.datasets import SyntheticSpec, make_synthetic
    from ml_assets.core.prediction_log import PredictionRecord, open_prediction_log

    mlflow.set_tracking_uri(stack.mlflow_uri)
    model = load_pipeline(f"models:/{MODEL}@champion")
    log = open_prediction_log(pg_url(stack.predictions_db, "postgresql"))
    try:
        for i, day in enumerate(days):
            frame = make_synthetic(SyntheticSpec(n_rows=rows, n_numeric=features, seed=100 + i))
            X = frame.drop(columns="label")
            proba = model.pipeline.predict_proba(X)
            classes = [str(c) for c in model.pipeline.classes_]
            start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
            names = list(X.columns)
            values = X.to_numpy().tolist()
            records = [PredictionRecord(
                timestamp=start + timedelta(seconds=j * 86_000 / rows),
                request_id=uuid.uuid4().hex, row_index=0, model_name=MODEL,
                model_version="1", feature_names=names, feature_values=values[j],
                prediction=classes[int(p.argmax())],
                probabilities={c: float(v) for c, v in zip(classes, p, strict=True)})
                for j, p in enumerate(proba)]
            log.append_many(records)
        assert log.flush(timeout=600), "prediction log did not flush"
    finally:
        log.close()


def drift_sequential(stack: ProductionStack, instance, days: list[str]) -> float:
    start = time.perf_counter()
    for day in days:
        run_id = stack.launch("score_drift", tags={"dagster/partition": day, "bench": "seq"})
        status = stack.wait_run(instance, run_id, timeout=1800)
        if status != "SUCCESS":
            raise SystemExit(f"drift run {run_id} ({day}) ended {status}")
    return time.perf_counter() - start


def drift_parallel(stack: ProductionStack, instance, days: list[str]) -> float:
    start = time.perf_counter()
    run_ids = [stack.launch("score_drift", tags={"dagster/partition": d, "bench": "par"})
               for d in days]
    for run_id in run_ids:
        status = stack.wait_run(instance, run_id, timeout=1800)
        if status != "SUCCESS":
            raise SystemExit(f"drift run {run_id} ended {status}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--day-rows", type=int, default=20_000)
    parser.add_argument("--drift-repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory")
    args = parser.parse_args()
    for name in ("rows", "features", "max_iter", "repeats", "days", "day_rows",
                 "drift_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for host, port, name in (("127.0.0.1", 5432, "PostgreSQL"), ("127.0.0.1", 6379, "Redis")):
        if not reachable(host, port):
            raise SystemExit(f"{name} is not reachable on {host}:{port}")

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    root = Path(tempfile.mkdtemp(prefix="bench_celery_"))
    stack = ProductionStack(root, broker=f"{REDIS_URL}/10", redis_db=11, extra_env={
        "ML_REGISTERED_MODEL_NAME": MODEL, "ML_EXPERIMENT_NAME": "bench_celery",
        "ML_DATA_SOURCE": "synthetic", "DAGSTER_MAX_CONCURRENT_RUNS": str(args.days)})
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; stack in {root}")
    instance = None
    try:
        stack.create_databases()
        stack.start_mlflow()
        stack.start_code_server()
        stack.start_worker("w1")
        stack.wait_http("mlflow", f"{stack.mlflow_uri}/health")
        stack.wait_code_server()
        stack.start_daemon()
        stack.wait_workers(["w1"])
        for kind, name in AUTOMATION:  # the benchmark launches every run itself
            stack.toggle(kind, "stop", name)
        instance = stack.instance()

        config = graph_config(args.rows, args.features, args.max_iter)
        one, two = [], []
        for repeat in range(args.repeats):
            for workers in ((1, 2) if repeat % 2 == 0 else (2, 1)):
                if workers == 2:
                    stack.start_worker("w2")
                    stack.wait_workers(["w1", "w2"])
                seconds = timed_graph(stack, instance, config)
                if workers == 2:
                    stack.stop("w2")
                (one if workers == 1 else two).append(seconds)
                print(f"graph, {workers} worker(s), repeat {repeat + 1}: {seconds:.1f} s",
                      flush=True)

        stack.start_worker("w2")
        stack.wait_workers(["w1", "w2"])
        today = date.today()
        days = [(today - timedelta(days=args.days - i)).isoformat() for i in range(args.days)]
        write_prediction_log(stack, days, args.day_rows, args.features)
        seq, par = [], []
        for repeat in range(args.drift_repeats):
            order = ("seq", "par") if repeat % 2 == 0 else ("par", "seq")
            for mode in order:
                if mode == "seq":
                    seq.append(drift_sequential(stack, instance, days))
                else:
                    par.append(drift_parallel(stack, instance, days))
                print(f"drift, {args.days} partitions, {mode}, repeat {repeat + 1}: "
                      f"{(seq if mode == 'seq' else par)[-1]:.1f} s", flush=True)
    finally:
        if instance is not None:
            instance.dispose()
        stack.close()
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)

    g1, g2 = statistics.median(one), statistics.median(two)
    s, p = statistics.median(seq), statistics.median(par)
    print("\n| scenario | baseline | scaled out | speed-up | runs |")
    print("|---|---:|---:|---:|---:|")
    print(f"| training graph, {args.rows:,} x {args.features} synthetic rows | "
          f"1 worker {g1:.1f} s | 2 workers {g2:.1f} s | {g1 / g2:.2f}x | {args.repeats} |")
    print(f"| drift scoring, {args.days} daily partitions x {args.day_rows:,} rows | "
          f"sequential {s:.1f} s | parallel {p:.1f} s | {s / p:.2f}x | {args.drift_repeats} |")


if __name__ == "__main__":
    main()
