"""Benchmark: what durable acknowledgement costs (a 200 waits for the prediction log's
group commit) against the opt-out (ML_PREDICTION_LOG_ACK=async, fire-and-forget).

    python benchmarks/bench_durability.py [--seconds 5] [--repeats 3] [--json out.json]

One run trains and registers the platform's default model (RandomForest, 200 trees,
breast cancer) in a fresh MLflow store in a temporary directory and starts three
`python -m serving` processes on 127.0.0.1 (one uvicorn worker each, SQLite log, WAL):

* commit         ML_PREDICTION_LOG_ACK=commit, synchronous=FULL (the defaults: every
                 commit fsynced before its answer)
* commit-normal  ML_PREDICTION_LOG_ACK=commit, ML_PREDICTION_LOG_SQLITE_SYNCHRONOUS=NORMAL
                 (WAL fsynced every second by a background thread)
* async          ML_PREDICTION_LOG_ACK=async (the opt-out), synchronous=FULL

Loads: single rows on /predict at c=1, 8, 32 and 1,000-row batches on /predict/batch
at c=4, driven by the same load generator as benchmarks/bench_serving.py (wrk when
installed, else its asyncio httpx client in a separate process). The modes are
interleaved (repeat → load → mode) so drift of the machine hits all of them alike;
each cell is the median over `--repeats` runs of `--seconds` after a warm-up. Rows
per commit and commit time come from each server's /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ml_assets_tests.support
import bench_serving as bs  # noqa: E402 - the shared load generators and server runner

REPO = Path(__file__).resolve().parent.parent
MODES = {
    "commit": {"ML_PREDICTION_LOG_ACK": "commit"},
    "commit-normal": {"ML_PREDICTION_LOG_ACK": "commit",
                      "ML_PREDICTION_LOG_SQLITE_SYNCHRONOUS": "NORMAL"},
    "async": {"ML_PREDICTION_LOG_ACK": "async"},
}
CASES = [("1 row, c=1", "/predict", "record", 1), ("1 row, c=8", "/predict", "record", 8),
         ("1 row, c=32", "/predict", "record", 32),
         ("1,000 rows, c=4", "/predict/batch", "records_1000", 4)]


def prepare(workdir: Path) -> tuple[str, dict[str, Path]]:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import numpy as np

    from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    trained = train_breast_cancer(n_estimators=200)
    name = "bench_model"
    register(trained, name, experiment_id("bench", (workdir / "artifacts").as_uri()),
             compile=True)  # served as in production: the compiled graph
    X = trained.X_test
    batch = X.iloc[np.random.default_rng(0).integers(0, len(X), bs.BATCH_ROWS)]
    bodies = {"record": {k: float(v) for k, v in X.iloc[0].items()},
              "records_1000": {"records": json.loads(batch.to_json(orient="records"))}}
    paths = {}
    for key, body in bodies.items():
        paths[key] = workdir / f"{key}.json"
        paths[key].write_text(json.dumps(body))
    return name, paths


def commit_stats(url: str) -> dict[str, float]:
    """Commits, mean rows per commit and mean commit ms so far, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            values[sample.name] = sample.value
    commits = values.get("ml_api_prediction_log_commit_rows_count", 0.0)
    return {"commits": commits,
            "rows_per_commit": values.get("ml_api_prediction_log_commit_rows_sum", 0.0)
            / max(commits, 1),
            "commit_ms": 1000 * values.get("ml_api_prediction_log_commit_seconds_sum", 0.0)
            / max(commits, 1),
            "dropped_rows": values.get("ml_api_prediction_log_dropped_rows_total", 0.0),
            "write_failures": values.get("ml_api_prediction_log_write_failures_total", 0.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--load", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", choices=["c1", "c8", "c32", "batch"], nargs="+",
                        help="run only these loads (default: all); the goals are judged "
                        "only when c8 and batch both run")
    args = parser.parse_args(argv)
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    load = bs.run_wrk if use_wrk else bs.run_httpx
    workdir = Path(tempfile.mkdtemp(prefix="bench_durability_"))
    print(f"{platform.platform()}; {os.cpu_count()} CPUs; Python {platform.python_version()}"
          f"; load generator: {'wrk' if use_wrk else 'httpx (asyncio, own process)'}; "
          f"{args.repeats} x {args.seconds:g} s per cell", flush=True)
    try:
        return run(args, load, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


CASE_KEYS = {"c1": "1 row, c=1", "c8": "1 row, c=8", "c32": "1 row, c=32",
             "batch": "1,000 rows, c=4"}


def run(args, load, workdir: Path) -> int:
    cases = [case for case in CASES
             if not args.only or case[0] in {CASE_KEYS[k] for k in args.only}]
    name, paths = prepare(workdir)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
           "ML_REGISTERED_MODEL_NAME": name, "ML_API_HOST": "127.0.0.1",
           "ML_API_POLL_SECONDS": "0", "ML_API_MAX_BATCH": str(bs.BATCH_ROWS)}
    env.pop("ML_PREDICTION_LOG_URL", None)
    servers = {mode: bs.Server(mode, [sys.executable, "-m", "serving", "--port", "{port}",
                                      "--log-level", "warning"],
                               {**env, **extra, "ML_PLATFORM_HOME": str(workdir / mode)},
                               "/ready", workdir / f"{mode}.log")
               for mode, extra in MODES.items()}
    runs: dict[tuple[str, str], list[dict]] = {}
    for server in servers.values():
        server.__enter__()
    try:
        for mode, server in servers.items():  # warm-up
            load(server.url + "/predict", paths["record"], 8, 2.0, workdir)
            load(server.url + "/predict/batch", paths["records_1000"], 2, 2.0, workdir)
            print(f"{mode} ready at {server.url}", flush=True)
        for repeat in range(args.repeats):
            for label, path, body, c in cases:
                for mode, server in servers.items():
                    result = load(server.url + path, paths[body], c, args.seconds, workdir)
                    runs.setdefault((label, mode), []).append(result)
                    rows = bs.BATCH_ROWS if body == "records_1000" else 1
                    print(f"  run {repeat + 1} {label:<16} {mode:<14} "
                          f"{result['rps'] * rows:9.1f} rows/s  p50 {result['p50_ms']:7.2f}"
                          f" ms  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}",
                          flush=True)
        stats = {mode: commit_stats(server.url) for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)

    medians = {key: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms",
                                                                      "p99_ms")}
               | {"errors": sum(r["errors"] for r in rs)} for key, rs in runs.items()}
    print("\nmedians (rows/s = requests/s x rows per request)")
    print("| load | mode | rows/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for label, _, body, _ in cases:
        rows = bs.BATCH_ROWS if body == "records_1000" else 1
        for mode in MODES:
            m = medians[(label, mode)]
            print(f"| {label} | {mode} | {m['rps'] * rows:,.0f} | {m['p50_ms']:.1f} | "
                  f"{m['p99_ms']:.1f} | {m['errors']} |")
    print("\ndurable (commit) vs opt-out (async)")
    print("| load | rows/s ratio | p50 ratio | p99 ratio | p99 delta ms |")
    print("|---|---:|---:|---:|---:|")
    for label, *_ in cases:
        for durable in ("commit", "commit-normal"):
            d, a = medians[(label, durable)], medians[(label, "async")]
            print(f"| {label} ({durable}) | {d['rps'] / a['rps']:.3f} | "
                  f"{d['p50_ms'] / a['p50_ms']:.3f} | {d['p99_ms'] / a['p99_ms']:.3f} | "
                  f"{d['p99_ms'] - a['p99_ms']:+.2f} |")
    print("\nprediction log per server over the whole run")
    for mode, s in stats.items():
        print(f"  {mode:<14} commits {s['commits']:.0f}  rows/commit {s['rows_per_commit']:.1f}"
              f"  commit {s['commit_ms']:.2f} ms  dropped {s['dropped_rows']:.0f}  "
              f"write failures {s['write_failures']:.0f}")
    if ("1 row, c=8", "commit") not in medians or ("1,000 rows, c=4", "commit") not in medians:
        return 0
    c8 = medians[("1 row, c=8", "commit")]["p99_ms"] - medians[("1 row, c=8", "async")]["p99_ms"]
    batch = (medians[("1,000 rows, c=4", "commit")]["rps"]
             / medians[("1,000 rows, c=4", "async")]["rps"])
    print(f"\ngoal p99 at c=8 within +2 ms: {'met' if c8 <= 2 else 'MISSED'} ({c8:+.2f} ms); "
          f"goal batch throughput within 10%: {'met' if batch >= 0.9 else 'MISSED'} "
          f"({batch:.3f})")
    if args.json:
        args.json.write_text(json.dumps({
            "medians": {f"{k[0]} | {k[1]}": v for k, v in medians.items()},
            "runs": {f"{k[0]} | {k[1]}": v for k, v in runs.items()}, "log": stats},
            indent=2))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"took {time.time() - started:.0f} s")
    sys.exit(code)
