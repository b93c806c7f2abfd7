"""Where one /predict row goes on the compiled (ONNX) runtime, before and after a change:
the stages (decode, validate, predict, log, respond) timed in process, and whole
requests through the app's ASGI stack (middleware, routing, the one prediction handler,
batcher, SQLite log in commit mode; no sockets) one at a time (c=1) and 32 at once
(c=32), wall clock and CPU time per request, and the CPU time of 1,000-row requests on
/predict/batch and /invocations (JSON records) one at a time, for each source tree,
rounds interleaved between the trees.

    python benchmarks/serving_stages.py [--baseline-tree DIR] [--rounds 5] [--json out.json]
                                        [--repeats 400] [--tmpdir /dev/shm]

One run trains and registers the platform's default model (RandomForest, 200 trees,
breast cancer), compiled to ONNX with its parity gate, in a fresh MLflow store in a
temporary directory. Each tree (this checkout, and `--baseline-tree`, e.g. `git archive
main` unpacked) gets a worker process importing that tree's `serving`; the parent asks
the workers for one round at a time, alternating, and prints the medians over rounds and
the after/before ratios of the same run. Over HTTP (uvicorn, wrk) the same comparison is
`benchmarks/bench_serving.py --servers onnx-1,sklearn-1 --loads c1,c8,c32
--baseline-tree DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("decode (key count, pydantic, row)", "validate (input flags)",
          "predict (graph, inline)", "log (1 row committed)", "respond (answer, orjson)")
WHOLE = ("whole request, c=1: wall", "whole request, c=1: CPU",
         "whole request, c=32: wall per request", "whole request, c=32: CPU per request")
# 1,000-row requests (the row repeated), one at a time: CPU per request.
BATCHES = {"/predict/batch 1,000 rows, c=1: CPU": ("/predict/batch", "records"),
           "/invocations 1,000 rows, c=1: CPU": ("/invocations", "dataframe_records")}
BATCH_ROWS = 1000
NAME = "stages_model"


# -- the parent ---------------------------------------------------------------------

def prepare(workdir: Path) -> bytes:
    """Register the compiled default model; the body of one /predict row."""
    sys.path.insert(0, str(REPO))
    import mlflow

    from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    trained = train_breast_cancer(n_estimators=200)
    register(trained, NAME, experiment_id("stages", (workdir / "artifacts").as_uri()),
             compile=True)
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    if tags.get("onnx.parity") != "passed":
        raise SystemExit(f"the model did not compile: {tags}")
    row = trained.X_test.iloc[0]
    return json.dumps({k: float(v) for k, v in row.items()}).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", type=Path, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=400, help="requests per round")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tmpdir", type=Path, help="where the MLflow store and the logs "
                        "go (e.g. /dev/shm: the log's fsync then costs little and varies "
                        "less with other processes' disk traffic)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker[0]), Path(args.worker[1]), args.repeats)
    workdir = Path(tempfile.mkdtemp(prefix="serving_stages_", dir=args.tmpdir))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        body = workdir / "record.json"
        body.write_bytes(prepare(workdir))
        trees = {"after": REPO}
        if args.baseline_tree:
            trees["before"] = args.baseline_tree.resolve()
        workers = {}
        for label, tree in trees.items():
            workers[label] = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(body),
                 str(workdir / label), "--repeats", str(args.repeats)],
                env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        rounds: dict[str, list[dict]] = {label: [] for label in trees}
        try:
            for label, proc in workers.items():  # loaded, warmed up
                assert proc.stdout is not None
                print(f"{label}: {proc.stdout.readline().strip()}", flush=True)
            for i in range(args.rounds):
                for label, proc in workers.items():
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write("round\n")
                    proc.stdin.flush()
                    rounds[label].append(json.loads(proc.stdout.readline()))
                print(f"round {i + 1}/{args.rounds} done", flush=True)
        finally:
            for proc in workers.values():
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=60)
        medians = {label: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                   for label, runs in rounds.items()}
        print_table(medians)
        if args.json:
            args.json.write_text(json.dumps({"medians_ms": medians, "rounds": rounds},
                                            indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_table(medians: dict[str, dict[str, float]]) -> None:
    labels = list(medians)
    head = " | ".join(f"{label} (ms)" for label in labels)
    ratio = "before / after" if "before" in medians else ""
    print(f"\n| stage | {head} |" + (f" {ratio} |" if ratio else ""))
    print("|---|" + "---:|" * (len(labels) + (1 if ratio else 0)))
    for key in medians["after"]:
        cells = " | ".join(f"{medians[label][key]:.4f}" for label in labels)
        extra = (f" {medians['before'][key] / medians['after'][key]:.2f}x |"
                 if ratio and medians["after"][key] > 0 else "")
        print(f"| {key} | {cells} |{extra}")


# -- a worker: one tree's `serving` ---------------------------------------------------

def worker(body_path: Path, workdir: Path, repeats: int) -> int:
    """Load the model with this tree's code; answer each "round" line with one round."""
    workdir.mkdir(parents=True, exist_ok=True)
    body = body_path.read_bytes()
    app, served, log = _setup(workdir)
    with _lifespan(app):
        _round(app, served, log, body, 20)  # warm-up
        print("ready", flush=True)
        for _line in sys.stdin:
            print(json.dumps(_round(app, served, log, body, repeats)), flush=True)
    log.close(30)
    return 0


def _setup(workdir: Path):
    from ml_assets.core.prediction_log import open_prediction_log
    from serving.app import create_app
    from serving.http.metrics import ServiceMetrics
    from serving.model.store import ModelStore
    from serving.settings import ServingSettings

    settings = ServingSettings(model_name=NAME, tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
                               runtime="onnx", poll_seconds=0,
                               prediction_log_path=workdir / "app.db")
    served = ModelStore(settings, ServiceMetrics()).load("1")
    assert served.compiled is not None, "the compiled runtime must serve"
    log = open_prediction_log(workdir / "stages.db", max_queue_rows=10_000)
    return create_app(settings), served, log


class _lifespan:
    """The app's lifespan (model load, batcher, log) around the rounds, on one loop."""

    def __init__(self, app):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.context = app.router.lifespan_context(app)

    def __enter__(self):
        self.loop.run_until_complete(self.context.__aenter__())
        _loop[:] = [self.loop]
        return self

    def __exit__(self, *exc):
        self.loop.run_until_complete(self.context.__aexit__(None, None, None))
        self.loop.close()


_loop: list[asyncio.AbstractEventLoop] = []


def _round(app, served, log, body: bytes, repeats: int) -> dict[str, float]:
    stages = _stages(served, log, body, repeats)
    loop = _loop[0]
    one = loop.run_until_complete(_requests(app, body, repeats, 1))
    many = loop.run_until_complete(_requests(app, body, repeats, 32))
    record = json.loads(body)
    batches = {}
    for label, (path, key) in BATCHES.items():
        batch = json.dumps({key: [record] * BATCH_ROWS}).encode()
        batches[label] = loop.run_until_complete(
            _requests(app, batch, max(repeats // 40, 2), 1, path))[1]
    return {**stages, **dict(zip(WHOLE, (*one, *many), strict=True)), **batches}


def _stages(model, log, body: bytes, repeats: int) -> dict[str, float]:
    """Median ms of each stage of one /predict row, as the handler runs them."""
    from sklearn_row_stages import decode_row, log_and_respond

    columns = len(model.feature_names) + len(model.excluded_columns)
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows, t1, t2 = decode_row(model, body, columns)
        proba, _ = model.compiled_answer(rows)
        t3 = time.perf_counter()
        t4, t5 = log_and_respond(log, model, rows[0], proba[0])
        for stage, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)),
                                 strict=True):
            times[stage].append((b - a) * 1000)
    return {stage: statistics.median(values) for stage, values in times.items()}


async def _requests(app, body: bytes, repeats: int, concurrency: int,
                    path: str = "/predict") -> tuple[float, float]:
    """(wall-clock ms, CPU ms of the process: every thread) per request of `repeats`
    /predict requests through the ASGI app, `concurrency` at a time (each client sends
    its next request when answered). On a loaded machine the wall clock also measures
    the waits for the log's writer thread to be scheduled; the CPU time does not."""
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"host", b"bench")]
    failures = 0

    async def one() -> None:
        nonlocal failures
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path, "raw_path":
                 path.encode(), "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "app": app}
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal failures
            if message["type"] == "http.response.start" and message["status"] != 200:
                failures += 1

        await app(scope, receive, send)

    per_client = repeats // concurrency or 1

    async def client() -> None:
        for _ in range(per_client):
            await one()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if failures:
        raise SystemExit(f"{failures} requests were not answered 200")
    n = per_client * concurrency
    return elapsed * 1000 / n, cpu * 1000 / n


if __name__ == "__main__":
    sys.exit(main())
