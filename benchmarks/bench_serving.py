"""Benchmark: this service's compiled (ONNX Runtime) and scikit-learn runtimes, 1 and 2
workers, against `mlflow models serve`; same model, same load, one run. Then a table
per model family: compiled vs scikit-learn runtime on each (`serving_families`).

    python benchmarks/bench_serving.py [--seconds 8] [--repeats 3] [--json out.json]
                                       [--profile profile.html] [--model forest|user-step]
                                       [--servers sklearn-1,...] [--loads c1,...]
                                       [--baseline-tree DIR]
                                       [--tables all|runtimes|families]

One run trains and registers the platform's default model (RandomForest, 200 trees,
breast cancer) in a fresh MLflow store in a temporary directory; registration
compiles it to ONNX and checks parity, as the pipeline does. Then, one server at a
time on 127.0.0.1:

* this service (`python -m serving`, prediction log on, SQLite, commit mode) with
  ML_API_RUNTIME=onnx and 1 worker, ML_API_RUNTIME=onnx and 2 workers
  (ML_API_WORKERS=2), and ML_API_RUNTIME=sklearn and 1 worker: single rows on /predict
  at c=1, 8, 32 and 1,000-row batches on /predict/batch at c=4;
* MLflow's scoring server (`mlflow models serve -m models:/<name>@champion
  --env-manager local -w 1`): the same loads on /invocations;

driven from a separate process by wrk when it is installed (`apt-get install wrk`),
else by a bounded asyncio httpx client in a subprocess. Every cell is the median of
`--repeats` runs of `--seconds` each, after a warm-up. In-process, it also times the
limits (the bare onnxruntime call on ready tensors, the compiled model from row
lists, scikit-learn's predict_proba) and a per-stage profile of one 1,000-row
/predict/batch request: parse and validate, rows, predict, respond, log (a real
SQLite prediction log, commit mode). `--profile` writes a pyinstrument profile of
in-process 1,000-row requests through the whole app.

The per-family table (`--tables families` for it alone): RandomForest, HistGradient-
Boosting, LightGBM, XGBoost and a Pipeline with a user's own step (its converter
registered), each served by a compiled and a scikit-learn service at once, one row at
c=1 and 1,000 rows at c=4, rounds interleaved, answers checked against the Pipeline
first (see benchmarks/serving_families.py).

The scikit-learn runtime (issue 21): the stages of one /predict row (decode, frame
build, transform, predict, log, respond) in process, the path before (a DataFrame
through the Pipeline) and after (rows through the numpy replay of the preprocessing)
interleaved (benchmarks/sklearn_row_stages.py). `--model user-step` serves the case
compilation refuses: the platform's preprocessing then a Pipeline of the user's own
step (ClipScaler, no converter) and a LogisticRegression. `--servers` and `--loads`
pick cells; `--baseline-tree DIR` also serves each chosen server from another checkout
(e.g. `git archive main`), all servers up at once and every run interleaved with its
baseline's, so before/after share the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' support package: one way to build models

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its per-family table
from serving_families import print_families, run_families  # noqa: E402

from ml_assets_tests.support.services import free_port, wait_http  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SINGLE_CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 1000
BATCH_CONCURRENCY = (1, 4)

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""


# -- load generators --------------------------------------------------------------------

def _wrk_ms(text: str) -> float:
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


def run_wrk(url: str, body: Path, concurrency: int, seconds: float, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
         "-s", str(script), url],
        env={**os.environ, "BENCH_BODY": str(body)}, capture_output=True, text=True,
        timeout=seconds + 60, check=True).stdout
    result = {"errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif parts[:1] == ["50.000%"] or parts[:1] == ["50%"]:
            result["p50_ms"] = _wrk_ms(parts[1])
        elif parts[:1] == ["99.000%"] or parts[:1] == ["99%"]:
            result["p99_ms"] = _wrk_ms(parts[1])
        elif line.strip().startswith("Non-2xx"):
            result["errors"] += int(parts[-1])
        elif line.strip().startswith("Socket errors"):
            result["errors"] += sum(int(p.rstrip(",")) for p in parts[3::2])
    return result


async def _httpx_load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) < 5_000_000:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers={
                        "Content-Type": "application/json"})
                    if response.status_code != 200:
                        errors += 1
                except Exception:  # noqa: BLE001 - counted, not fatal
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"rps": len(latencies) / elapsed, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "errors": errors}


def run_httpx(url: str, body: Path, concurrency: int, seconds: float, workdir: Path) -> dict:
    """The httpx client, in its own process like wrk."""
    out = subprocess.run(
        [sys.executable, __file__, "--client", url, str(body), str(concurrency), str(seconds)],
        capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- servers ----------------------------------------------------------------------------

class Server:
    """A server subprocess, stopped (by its own pid) on exit."""

    def __init__(self, name: str, command: list[str], env: dict, ready_path: str,
                 log: Path, cwd: Path = REPO):
        self.name, self.command, self.env, self.ready_path, self.log, self.cwd = (
            name, command, env, ready_path, log, cwd)

    def __enter__(self):
        self.port = free_port()
        command = [c.replace("{port}", str(self.port)) for c in self.command]
        env = {k: v.replace("{port}", str(self.port)) for k, v in self.env.items()}
        self.out = open(self.log, "wb")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(command, env=env, cwd=self.cwd, stdout=self.out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + self.ready_path, self.process, timeout=180)
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            # mlflow models serve runs uvicorn as a child: stop the session it leads.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.out.close()


# -- the benchmark ----------------------------------------------------------------------

def _train(model: str):
    """The benchmark's model: the default forest, or the case compilation refuses (the
    platform's preprocessing, then the user's own step and a logistic regression)."""
    from ml_assets_tests.support.models import train_breast_cancer, train_estimator

    if model == "forest":
        return train_breast_cancer(n_estimators=200)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
    from ml_assets.core.data.schemas import breast_cancer_schema
    from ml_assets_tests.support.user_factory import TRUSTED, ClipScaler

    os.environ["ML_SKOPS_TRUSTED_TYPES"] = TRUSTED  # servers inherit it
    frame = load_breast_cancer_frame()
    schema = breast_cancer_schema([c for c in frame.columns if c != BREAST_CANCER_TARGET])
    return train_estimator(frame, schema, BREAST_CANCER_TARGET, Pipeline([
        ("clip", ClipScaler()), ("logit", LogisticRegression(max_iter=1000))]))


def prepare(workdir: Path, model: str = "forest") -> dict:
    """Train and register the model (compiled at registration when it converts); write
    request bodies; time the in-process limits and the stages of a 1,000-row request
    (compiled models), and of one row on the scikit-learn runtime."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import numpy as np
    from sklearn_row_stages import single_row_stages

    from ml_assets_tests.support.models import experiment_id, register

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    trained = _train(model)
    name = "bench_model"
    register(trained, name, experiment_id("bench", (workdir / "artifacts").as_uri()),
             infer_requirements=True, compile=True)
    tags = mlflow.MlflowClient().get_model_version(name, "1").tags
    print(f"registered {name} version 1: onnx.parity={tags.get('onnx.parity')} "
          f"max |dp|={tags.get('onnx.parity.max_probability_diff')} "
          f"{tags.get('onnx.parity.reason', '')}", flush=True)
    X = trained.X_test
    row = X.iloc[[0]]
    rng = np.random.default_rng(0)
    batch = X.iloc[rng.integers(0, len(X), BATCH_ROWS)]
    bodies = {
        "record": {k: float(v) for k, v in row.iloc[0].items()},
        "split_1": {"dataframe_split": json.loads(row.to_json(orient="split", index=False))},
        "records_1000": {"records": json.loads(batch.to_json(orient="records"))},
        "split_1000": {"dataframe_split": json.loads(batch.to_json(orient="split",
                                                                   index=False))},
    }
    paths = {}
    for key, body in bodies.items():
        paths[key] = workdir / f"{key}.json"
        paths[key].write_text(json.dumps(body))
    compiled = tags.get("onnx.parity") == "passed"
    limits = in_process_limits(name, row, batch) if compiled else {}
    stages = stage_profile(name, paths["records_1000"].read_bytes(), workdir) if compiled else {}
    row_stages = single_row_stages(_served(name, "sklearn"), paths["record"].read_bytes(),
                                   workdir)
    return {"name": name, "paths": paths, "limits": limits, "stages": stages,
            "row_stages": row_stages, "compiled": compiled,
            "parity": {k: v for k, v in tags.items() if k.startswith("onnx.")}}


def _rate(call, rows: int, seconds: float = 3.0) -> float:
    """Rows per second of `call` repeated for `seconds` (after one warm-up call)."""
    call()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return rows * calls / (time.perf_counter() - started)


def _served(name: str, runtime: str):
    """The champion as the service loads it (ModelStore.load: compiled graph, checks)."""
    from serving.http.metrics import ServiceMetrics
    from serving.model.store import ModelStore
    from serving.settings import ServingSettings

    settings = ServingSettings(model_name=name, tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
                               runtime=runtime, max_batch=BATCH_ROWS, poll_seconds=0)
    return ModelStore(settings, ServiceMetrics()).load("1")


def in_process_limits(name: str, row, batch) -> dict:
    """One thread, no HTTP: what the model calls alone cost (rows/s)."""
    onnx_served, sk_model = _served(name, "onnx"), _served(name, "sklearn")
    compiled = onnx_served.compiled
    assert compiled is not None, "the benchmark model must have passed parity"
    rows_1, rows_1000 = row.values.tolist(), batch.values.tolist()
    tensors_1, tensors_1000 = compiled.inputs(rows_1), compiled.inputs(rows_1000)
    session = compiled.session
    pipeline = sk_model.pipeline
    return {
        "onnxruntime run on ready tensors, 1 row": _rate(lambda: session.run(None, tensors_1), 1),
        "onnxruntime run on ready tensors, 1,000 rows":
            _rate(lambda: session.run(None, tensors_1000), BATCH_ROWS),
        "compiled model from row lists, 1 row": _rate(lambda: compiled.predict_proba(rows_1), 1),
        "compiled model from row lists, 1,000 rows":
            _rate(lambda: compiled.predict_proba(rows_1000), BATCH_ROWS),
        "sklearn predict_proba (DataFrame), 1 row": _rate(lambda: pipeline.predict_proba(row), 1),
        "sklearn predict_proba (DataFrame), 1,000 rows":
            _rate(lambda: pipeline.predict_proba(batch), BATCH_ROWS),
    }


def stage_profile(name: str, body: bytes, workdir: Path, repeats: int = 60) -> dict:
    """Median milliseconds of each stage of one 1,000-row /predict/batch request, run
    in-process the way the route runs them (compiled runtime, SQLite log, commit)."""
    from datetime import datetime, timezone

    import orjson

    from ml_assets.core.prediction_log import PredictionRecord, open_prediction_log

    model = _served(name, "onnx")
    log = open_prediction_log(workdir / "stages.db", max_queue_rows=50_000)
    times: dict[str, list[float]] = {k: [] for k in ("parse + validate", "rows",
                                                     "input flags", "predict", "respond",
                                                     "log (commit)", "total")}
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            batch = model.requests.batch.model_validate_json(body)
            t1 = time.perf_counter()
            rows = [model.requests.row_of(r) for r in model.requests.records_of(batch)]
            t2 = time.perf_counter()
            model.requests.input_flags(rows)
            t3 = time.perf_counter()
            proba = model.predict_proba(rows)
            labels = model.labels
            predicted = [labels[i] for i in proba.argmax(axis=1).tolist()]
            probabilities = [dict(zip(labels, p, strict=True)) for p in proba.tolist()]
            t4 = time.perf_counter()
            orjson.dumps({"request_id": "x", "model_name": name, "model_version": "1",
                          "predictions": [{"prediction": label, "confidence": p[label],
                                           "probabilities": p}
                                          for label, p in zip(predicted, probabilities,
                                                              strict=True)]})
            t5 = time.perf_counter()
            now = datetime.now(timezone.utc)
            records = [PredictionRecord(now, "x", i, name, "1", model.feature_names, r,
                                        predicted[i], probabilities[i], "")
                       for i, r in enumerate(rows)]
            log.append(records).result(timeout=30)
            t6 = time.perf_counter()
            for key, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4),
                                           (t4, t5), (t5, t6), (t0, t6)), strict=True):
                times[key].append((b - a) * 1000)
    finally:
        log.close(30)
    return {k: statistics.median(v) for k, v in times.items()}


def pyinstrument_profile(name: str, body: bytes, workdir: Path, out: Path) -> None:
    """A pyinstrument profile of 100 in-process 1,000-row requests through the whole
    app (ASGI, middleware, validation, predict, log)."""
    import httpx
    from pyinstrument import Profiler

    from serving.app import create_app
    from serving.settings import ServingSettings

    settings = ServingSettings(model_name=name, tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
                               runtime="onnx", max_batch=BATCH_ROWS, poll_seconds=0,
                               prediction_log_path=workdir / "profile.db")
    app = create_app(settings)

    async def drive() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                headers = {"Content-Type": "application/json"}
                for _ in range(5):
                    await client.post("/predict/batch", content=body, headers=headers)
                profiler = Profiler(interval=0.0005, async_mode="enabled")
                profiler.start()
                for _ in range(100):
                    await client.post("/predict/batch", content=body, headers=headers)
                profiler.stop()
        out.write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])

    asyncio.run(drive())


def measure(load, url: str, body: Path, concurrency: int, seconds: float, repeats: int,
            workdir: Path) -> dict:
    return _median([load(url, body, concurrency, seconds, workdir) for _ in range(repeats)])


def _median(runs: list[dict]) -> dict:
    median = {key: statistics.median(run[key] for run in runs)
              for key in ("rps", "p50_ms", "p99_ms")}
    median["errors"] = sum(run["errors"] for run in runs)
    median["runs"] = runs
    return median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--load", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile (HTML) of "
                        "in-process 1,000-row requests here")
    parser.add_argument("--tables", choices=["all", "runtimes", "families"], default="all",
                        help="runtimes: the servers' table; families: compiled vs "
                        "scikit-learn runtime per model family; all: both")
    parser.add_argument("--model", choices=["forest", "user-step"], default="forest",
                        help="the default forest, or a Pipeline with the user's own step")
    parser.add_argument("--servers", default=",".join(SERVER_KEYS),
                        help=f"servers to run, of {','.join(SERVER_KEYS)}")
    parser.add_argument("--loads", default=",".join(LOAD_KEYS),
                        help=f"loads to run, of {','.join(LOAD_KEYS)}")
    parser.add_argument("--baseline-tree", type=Path, help="also serve each chosen server "
                        "from this checkout, runs interleaved with ours")
    args = parser.parse_args(argv)
    if args.client:  # the httpx load generator's own process
        url, body, concurrency, seconds = args.client
        result = asyncio.run(_httpx_load(url, Path(body).read_bytes(), int(concurrency),
                                         float(seconds)))
        print(json.dumps(result))
        return 0

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    load = run_wrk if use_wrk else run_httpx
    workdir = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    print(f"work directory {workdir}; load generator: {'wrk' if use_wrk else 'httpx'}",
          flush=True)
    try:
        return run(args, load, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


SERVERS = (  # (label, ML_API_RUNTIME, ML_API_WORKERS); MLflow's server comes last
    ("service onnx, 1 worker", "onnx", 1),
    ("service onnx, 2 workers", "onnx", 2),
    ("service sklearn, 1 worker", "sklearn", 1),
)
MLFLOW = "mlflow models serve"
SERVER_KEYS = ("onnx-1", "onnx-2", "sklearn-1", "mlflow")
LOAD_KEYS = tuple(f"c{c}" for c in SINGLE_CONCURRENCY) + tuple(
    f"batch-c{c}" for c in BATCH_CONCURRENCY)
BASELINE = " (baseline)"


def run(args, load, workdir: Path) -> int:
    figures: dict = {}
    if args.tables in ("all", "runtimes"):
        figures.update(run_runtimes(args, load, workdir))
    if args.tables in ("all", "families"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        families = run_families(args, load, Server, env, workdir)
        print_families(families, args)
        figures["families"] = {" | ".join(key): value
                               for key, value in families["results"].items()}
        figures["family_checks"] = {" | ".join(key): value
                                    for key, value in families["checks"].items()}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def run_runtimes(args, load, workdir: Path) -> dict:
    """The servers' table: this service's runtimes and workers against MLflow's."""
    setup = prepare(workdir, args.model)
    paths, name = setup["paths"], setup["name"]
    if args.profile and setup["compiled"]:
        pyinstrument_profile(name, paths["records_1000"].read_bytes(), workdir, args.profile)
    chosen = set(args.servers.split(","))
    loads = args.loads.split(",")
    bin_dir = Path(sys.executable).parent
    # As in an activated virtualenv: `mlflow models serve` execs `uvicorn` from PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    trees = [("", REPO)] + ([(BASELINE, args.baseline_tree.resolve())]
                            if args.baseline_tree else [])
    servers = []
    for (label, runtime, workers), key in zip(SERVERS, SERVER_KEYS, strict=False):
        if key not in chosen:
            continue
        for suffix, tree in trees:
            tag = f"{runtime}-{workers}{'-baseline' if suffix else ''}"
            servers.append(Server(label + suffix, [sys.executable, "-m", "serving", "--port",
                                                   "{port}", "--log-level", "warning"],
                                  {**env, "PYTHONPATH": str(tree),
                                   "ML_REGISTERED_MODEL_NAME": name,
                                   "ML_API_HOST": "127.0.0.1", "ML_API_POLL_SECONDS": "0",
                                   "ML_PLATFORM_HOME": str(workdir / f"home-{tag}"),
                                   "ML_API_MAX_BATCH": str(BATCH_ROWS),
                                   "ML_API_RUNTIME": runtime, "ML_API_WORKERS": str(workers)},
                                  "/ready", workdir / f"service-{tag}.log", cwd=tree))
    if "mlflow" in chosen:
        mlflow_cli = str(bin_dir / "mlflow") if (bin_dir / "mlflow").exists() else "mlflow"
        servers.append(Server(MLFLOW, [mlflow_cli, "models", "serve", "-m",
                                       f"models:/{name}@champion", "--env-manager", "local",
                                       "-w", "1", "-h", "127.0.0.1", "-p", "{port}"],
                              env, "/ping", workdir / "mlflow.log"))
    cases = [(f"1 row, c={c}", c, False) for c in SINGLE_CONCURRENCY if f"c{c}" in loads]
    cases += [(f"{BATCH_ROWS:,} rows, c={c}", c, True) for c in BATCH_CONCURRENCY
              if f"batch-c{c}" in loads]

    def targets(server):
        ours = server.name != MLFLOW
        single = (server.url + ("/predict" if ours else "/invocations"),
                  paths["record" if ours else "split_1"])
        many = (server.url + ("/predict/batch" if ours else "/invocations"),
                paths["records_1000" if ours else "split_1000"])
        return single, many

    def report(label, server, result):
        results[(label, server.name)] = result
        print(f"  {label:<20} {server.name:<37} {result['rps']:9.1f} req/s  "
              f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
              f"errors {result['errors']}", flush=True)

    results: dict[tuple[str, str], dict] = {}
    if args.baseline_tree:  # every server up; each run interleaved with the others'
        with contextlib.ExitStack() as stack:
            for server in servers:
                stack.enter_context(server)
                print(f"{server.name} ready at {server.url}", flush=True)
            for server in servers:
                single, many = targets(server)
                load(*single, 8, 2.0, workdir)  # warm-up
            for label, c, is_batch in cases:
                runs: dict[str, list[dict]] = {server.name: [] for server in servers}
                for _ in range(args.repeats):
                    for server in servers:
                        url, body = targets(server)[1 if is_batch else 0]
                        runs[server.name].append(load(url, body, c, args.seconds, workdir))
                for server in servers:
                    report(label, server, _median(runs[server.name]))
    else:
        for server in servers:
            with server:
                print(f"{server.name} ready at {server.url}", flush=True)
                single, many = targets(server)
                load(*single, 8, 2.0, workdir)  # warm-up
                load(*many, 2, 2.0, workdir)
                for label, c, is_batch in cases:
                    url, body = many if is_batch else single
                    report(label, server, measure(load, url, body, c, args.seconds,
                                                  args.repeats, workdir))

    print_table(results, setup, args)
    return {"results": {f"{k[0]} | {k[1]}": v for k, v in results.items()},
            "limits": setup["limits"], "stages_ms": setup["stages"],
            "single_row_sklearn_stages_ms": setup["row_stages"],
            "parity": setup["parity"]}


def print_table(results: dict, setup: dict, args) -> None:
    from sklearn_row_stages import print_stages

    sklearn = SERVERS[2][0]
    print(f"\n## Results (median of {args.repeats} x {args.seconds:g} s; 127.0.0.1)\n")
    print("| load | server | req/s | rows/s | p50 ms | p99 ms | vs sklearn runtime "
          "| vs MLflow |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label in dict.fromkeys(k[0] for k in results):
        rows = BATCH_ROWS if label.startswith(f"{BATCH_ROWS:,}") else 1
        bases = [results.get((label, base), {}).get("rps") for base in (sklearn, MLFLOW)]
        for (case, target), r in results.items():
            if case != label:
                continue
            errors = f" ({r['errors']} errors)" if r["errors"] else ""
            ratios = [f"{r['rps'] / base:.2f}x" if base else "" for base in bases]
            print(f"| {label} | {target}{errors} | {r['rps']:,.1f} | {r['rps'] * rows:,.0f} | "
                  f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratios[0]} | {ratios[1]} |")
    if setup["limits"]:
        print("\n| in-process limit (one thread) | rows/s |\n|---|---:|")
        for label, value in setup["limits"].items():
            print(f"| {label} | {value:,.0f} |")
    if setup["stages"]:
        print("\n| stage of one 1,000-row /predict/batch (in-process, onnx) | median ms |")
        print("|---|---:|")
        for label, value in setup["stages"].items():
            print(f"| {label} | {value:.2f} |")
    print_stages(setup["row_stages"], f"scikit-learn runtime, model {args.model}")


if __name__ == "__main__":
    sys.exit(main())
