"""Benchmark: this service's compiled (ONNX Runtime) and scikit-learn runtimes, 1 and 2
workers, against its peers (MLServer 1.7.1 with adaptive batching, `mlflow models
serve`) and the HTTP floors; same model, same load, one run, rounds interleaved. Then a
table per model family: compiled vs scikit-learn runtime on each (`serving_families`).

    python benchmarks/bench_serving.py [--seconds 8] [--repeats 3] [--json out.json]
                                       [--profile profile.html] [--model forest|user-step]
                                       [--servers onnx-1,...] [--loads c1,...]
                                       [--mlserver-batching 8:0.001,32:0.005]
                                       [--baseline-tree DIR]
                                       [--tables all|runtimes|families]

The load generator is wrk (Debian's package: `apt-get install -y wrk`; the issue's
figures are wrk's), else a bounded asyncio httpx client in a subprocess
(benchmarks/serving_load.py). One run trains and registers the platform's default
model (RandomForest, 200 trees, breast cancer) in a fresh MLflow store in a temporary
directory; registration compiles it to ONNX and checks parity, as the pipeline does.
Then every chosen server is started on 127.0.0.1, all at once:

* this service (`python -m serving`, prediction log on, SQLite, commit mode: the
  defaults) with ML_API_RUNTIME=onnx and 1 worker (`onnx-1`), onnx and 2 workers
  (`onnx-2`), sklearn and 1 worker (`sklearn-1`): single rows on /predict; 1,000-row
  batches on each wire format, /predict/batch, /invocations (dataframe_split) and /v2
  infer (one tensor per feature);
* MLflow's scoring server (`mlflow`: `mlflow models serve --env-manager local -w 1`),
  on /invocations;
* the HTTP floors (`floors`: a FastAPI route returning a constant and a raw ASGI app,
  both on uvicorn with 1 worker; benchmarks/serving_floors.py), single rows only;
* MLServer 1.7.1 (`mlserver`) with its scikit-learn runtime serving the same fitted
  Pipeline, one server per adaptive-batching setting of `--mlserver-batching`, on
  /v2 infer (it has no /invocations for scikit-learn); installed in a venv of its own
  on first use (benchmarks/serving_peers.py);
* BentoML 1.4.40 (`bentoml`, optional: skipped with the reason printed when it does not
  install), its adaptive batching on, on its own JSON API.

Every server's answers on every case it is timed on are checked against the
Pipeline's first (benchmarks/serving_wires.py). Loads (`--loads`): one row at c=1, 8,
32 (`c1,c8,c32`) on every server, 1,000 rows at c=4 (`batch-c4`; `batch-c1` too if
asked). Then `--repeats` rounds of `--seconds` per cell; each round visits every
server on every case, the servers' order turning from round to round; every figure is
the median over the rounds. The tables: the figures with ratios against the
scikit-learn runtime, MLflow, MLServer's best setting and the FastAPI floor; then
issue 23's goals, PASS or MISS with the figures (benchmarks/serving_goals.py).
`--baseline-tree DIR` also serves each of our servers from another checkout (e.g.
`git archive main` extracted), interleaved in the same rounds, so before/after share
the machine's load, with the goals for both.

In-process, it also times the limits (the bare onnxruntime call on ready tensors, the
compiled model from row lists, scikit-learn's predict_proba) and a per-stage profile of
one 1,000-row /predict/batch request: parse and validate, rows, predict, respond, log
(a real SQLite prediction log, commit mode). `--profile` writes a pyinstrument profile
of in-process 1,000-row requests through the whole app.

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
step (ClipScaler, no converter) and a LogisticRegression (MLServer and BentoML are then skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' support package: one way to build models

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules
from serving_families import print_families, run_families  # noqa: E402
from serving_floors import floor_servers  # noqa: E402
from serving_goals import print_goals  # noqa: E402
from serving_load import Server, median_of, run_httpx, run_wrk  # noqa: E402
from serving_peers import DEFAULT_BATCHING, bentoml_servers, mlserver_servers  # noqa: E402
from serving_wires import check_answers, write_bodies  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SINGLE_CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 1000
BATCH_CONCURRENCY = (1, 4)

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
    paths = write_bodies(row, batch, workdir)
    compiled = tags.get("onnx.parity") == "passed"
    limits = in_process_limits(name, row, batch) if compiled else {}
    stages = stage_profile(name, paths["records_1000"].read_bytes(), workdir) if compiled else {}
    row_stages = single_row_stages(_served(name, "sklearn"), paths["record"].read_bytes(),
                                   workdir)
    return {"name": name, "paths": paths, "limits": limits, "stages": stages,
            "row_stages": row_stages, "compiled": compiled, "trained": trained,
            "frames": {"row": row, "batch": batch},
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds (each figure their median)")
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
    parser.add_argument("--loads", default=DEFAULT_LOADS,
                        help=f"loads to run, of {','.join(LOAD_KEYS)}")
    parser.add_argument("--baseline-tree", type=Path, help="also serve each chosen server "
                        "from this checkout, runs interleaved with ours")
    parser.add_argument("--mlserver-batching", default=DEFAULT_BATCHING,
                        help="MLServer's adaptive batching settings to try, each "
                        "max_batch_size:max_batch_time (seconds), one server each")
    args = parser.parse_args(argv)
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    load = run_wrk if use_wrk else run_httpx
    workdir = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    print(f"work directory {workdir}; load generator: {'wrk' if use_wrk else 'httpx'}",
          flush=True)
    try:
        return run(args, load, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


SERVERS = (  # (label, ML_API_RUNTIME, ML_API_WORKERS)
    ("service onnx, 1 worker", "onnx", 1),
    ("service onnx, 2 workers", "onnx", 2),
    ("service sklearn, 1 worker", "sklearn", 1),
)
MLFLOW = "mlflow models serve"
SERVER_KEYS = ("onnx-1", "onnx-2", "sklearn-1", "mlflow", "floors", "mlserver", "bentoml")
LOAD_KEYS = tuple(f"c{c}" for c in SINGLE_CONCURRENCY) + tuple(
    f"batch-c{c}" for c in BATCH_CONCURRENCY)
DEFAULT_LOADS = "c1,c8,c32,batch-c4"
BASELINE = " (baseline)"
# wire -> (path, body key, answer kind): the 1,000-row formats each kind of server takes
OURS_WIRES = {"/predict/batch": ("/predict/batch", "records_1000", "predict"),
              "/invocations": ("/invocations", "split_1000", "invocations"),
              "/v2": ("/v2/models/{name}/infer", "v2_1000", "v2")}


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


def build_servers(args, setup: dict, workdir: Path) -> list[Server]:
    """The chosen servers (ours from each tree, MLflow's, the floors, MLServer), each
    with `cases`: case label -> (path, body, answer kind)."""
    paths, name = setup["paths"], setup["name"]
    chosen = set(args.servers.split(","))
    loads = args.loads.split(",")
    singles = [f"1 row, c={c}" for c in SINGLE_CONCURRENCY if f"c{c}" in loads]
    batches = [f"{BATCH_ROWS:,} rows, c={c}" for c in BATCH_CONCURRENCY
               if f"batch-c{c}" in loads]

    def cases(single: tuple, wires: dict) -> dict:
        found = {case: single for case in singles}
        for case in batches:
            for wire, (path, key, kind) in wires.items():
                found[f"{case}, {wire}"] = (path.replace("{name}", name), paths[key], kind)
        return found

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
            server = Server(label + suffix, [sys.executable, "-m", "serving", "--port",
                                             "{port}", "--log-level", "warning"],
                            {**env, "PYTHONPATH": str(tree),
                             "ML_REGISTERED_MODEL_NAME": name,
                             "ML_API_HOST": "127.0.0.1", "ML_API_POLL_SECONDS": "0",
                             "ML_PLATFORM_HOME": str(workdir / f"home-{tag}"),
                             "ML_API_MAX_BATCH": str(BATCH_ROWS),
                             "ML_API_RUNTIME": runtime, "ML_API_WORKERS": str(workers)},
                            "/ready", workdir / f"service-{tag}.log", cwd=tree)
            server.cases = cases(("/predict", paths["record"], "predict"), OURS_WIRES)
            server.compiled = runtime == "onnx"
            servers.append(server)
    if "mlflow" in chosen:
        mlflow_cli = str(bin_dir / "mlflow") if (bin_dir / "mlflow").exists() else "mlflow"
        server = Server(MLFLOW, [mlflow_cli, "models", "serve", "-m",
                                 f"models:/{name}@champion", "--env-manager", "local",
                                 "-w", "1", "-h", "127.0.0.1", "-p", "{port}"],
                        env, "/ping", workdir / "mlflow.log")
        server.cases = cases(("/invocations", paths["split_1"], "invocations"),
                             {"/invocations": OURS_WIRES["/invocations"]})
        servers.append(server)
    if "floors" in chosen:
        for server in floor_servers(Server, env, workdir):
            server.cases = {case: ("/predict", paths["record"], "constant") for case in singles}
            servers.append(server)
    if "mlserver" in chosen:
        if args.model != "forest":
            print("MLServer and BentoML skipped: they serve the default forest only",
                  flush=True)
        else:
            v2 = ("/v2/models/{name}/infer", "mlserver_1000", "mlserver")
            for server in mlserver_servers(Server, setup["trained"].pipeline, name,
                                           args.mlserver_batching, workdir, REPO):
                server.cases = cases((v2[0].replace("{name}", name), paths["mlserver_1"],
                                      "mlserver"), {"/v2": v2})
                servers.append(server)
    if "bentoml" in chosen and args.model == "forest":
        bento = ("/predict_proba", "bentoml_1000", "bentoml")
        for server in bentoml_servers(Server, setup["trained"].pipeline,
                                      [str(c) for c in setup["frames"]["row"].columns],
                                      workdir, REPO):
            server.cases = cases((bento[0], paths["bentoml_1"], "bentoml"),
                                 {"/predict_proba": bento})
            servers.append(server)
    for server in servers:
        server.compiled = getattr(server, "compiled", False)
    return servers


def run_runtimes(args, load, workdir: Path) -> dict:
    """The servers' table: this service's runtimes and workers against MLflow's, MLServer
    and the HTTP floors; all servers up at once, every round visiting each of them."""
    setup = prepare(workdir, args.model)
    name = setup["name"]
    if args.profile and setup["compiled"]:
        pyinstrument_profile(name, setup["paths"]["records_1000"].read_bytes(), workdir,
                             args.profile)
    servers = build_servers(args, setup, workdir)
    pipeline = setup["trained"].pipeline
    checks: dict[str, str] = {}
    results: dict[tuple[str, str], dict] = {}
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
            print(f"{server.name} ready at {server.url}", flush=True)
        for server in servers:  # answers checked, then warmed up, before any timing
            checks[server.name] = check_answers(server, pipeline, setup["frames"],
                                                server.compiled)
            print(f"  {server.name}: " + ("answers 200 (a constant, no model)"
                                          if checks[server.name] == "constant" else
                                          f"answers match the Pipeline on "
                                          f"{len(server.cases)} cases (max |dp| "
                                          f"{checks[server.name]})"), flush=True)
            for case, (path, body, _kind) in server.cases.items():
                load(server.url + path, body, 2 if case.startswith("1,000") else 8, 1.0,
                     workdir)
        labels = list(dict.fromkeys(case for s in servers for case in s.cases))
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(args.repeats):
            # each round visits every server per case; the order turns from round to round
            order = servers[round_ % len(servers):] + servers[:round_ % len(servers)]
            for label in labels:
                c = int(label.split("c=")[1].split(",")[0])
                for server in order:
                    if label in server.cases:
                        path, body, _kind = server.cases[label]
                        runs.setdefault((label, server.name), []).append(
                            load(server.url + path, body, c, args.seconds, workdir))
            print(f"round {round_ + 1} of {args.repeats} done", flush=True)
    for label in labels:
        for server in servers:
            if (label, server.name) in runs:
                result = results[(label, server.name)] = median_of(runs[(label, server.name)])
                print(f"  {label:<32} {server.name:<40} {result['rps']:9.1f} req/s  "
                      f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                      f"errors {result['errors']}", flush=True)
    print_table(results, setup, args, checks)
    goals = print_goals(results, ("", BASELINE) if args.baseline_tree else ("",))
    return {"results": {f"{k[0]} | {k[1]}": v for k, v in results.items()},
            "goals": goals, "answer_checks": checks,
            "limits": setup["limits"], "stages_ms": setup["stages"],
            "single_row_sklearn_stages_ms": setup["row_stages"],
            "parity": setup["parity"]}

def print_table(results: dict, setup: dict, args, checks: dict) -> None:
    from sklearn_row_stages import print_stages

    sklearn = SERVERS[2][0]
    print(f"\n## Results (median of {args.repeats} interleaved rounds x {args.seconds:g} s; "
          "127.0.0.1)\n")
    print("| load | server | req/s | rows/s | p50 ms | p99 ms | vs sklearn runtime "
          "| vs MLflow | vs MLServer's best | vs FastAPI floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in dict.fromkeys(k[0] for k in results):
        rows = BATCH_ROWS if label.startswith(f"{BATCH_ROWS:,}") else 1
        load = label.rsplit(", /", 1)[0]  # MLServer's best and the floor: any wire
        peer = max((r["rps"] for (case, s), r in results.items()
                    if s.startswith("MLServer") and case.startswith(load)), default=None)
        bases = [results.get((label, base), {}).get("rps") for base in (sklearn, MLFLOW)]
        bases += [peer, results.get((load, "FastAPI route returning a constant"), {}).get("rps")]
        for (case, target), r in results.items():
            if case != label:
                continue
            errors = f" ({r['errors']} errors)" if r["errors"] else ""
            ratios = " | ".join(f"{r['rps'] / base:.2f}x" if base else "" for base in bases)
            print(f"| {label} | {target}{errors} | {r['rps']:,.1f} | {r['rps'] * rows:,.0f} | "
                  f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratios} |")
    print("\nAnswers checked against the Pipeline before timing (labels equal; max |dp|): "
          + "; ".join(f"{name} {dp}" for name, dp in checks.items()))
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
