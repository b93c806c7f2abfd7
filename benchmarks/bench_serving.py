"""Benchmark: this prediction service against `mlflow models serve`, same model, same load.

    python benchmarks/bench_serving.py [--seconds 8] [--repeats 3] [--json out.json]

One run trains and registers the platform's default model (RandomForest, 200 trees,
breast cancer) in a fresh MLflow store in a temporary directory, then, one server at
a time on 127.0.0.1 (each uvicorn, one worker):

* this service (`python -m serving`), single rows on /predict and /invocations, and
  1,000-row batches on /predict/batch and /invocations;
* MLflow's scoring server (`mlflow models serve -m models:/<name>@champion
  --env-manager local -w 1`), single rows and 1,000-row batches on /invocations;

driven from a separate process by wrk when it is installed (`apt-get install wrk`),
else by a bounded asyncio httpx client in a subprocess. Every cell is the median of
`--repeats` runs of `--seconds` each, after a warm-up. It also times the in-process
limit: the loaded Pipeline's predict_proba called directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class Server:
    """A server subprocess, stopped (by its own pid) on exit."""

    def __init__(self, name: str, command: list[str], env: dict, ready_path: str,
                 log: Path):
        self.name, self.command, self.env, self.ready_path, self.log = (
            name, command, env, ready_path, log)

    def __enter__(self):
        self.port = free_port()
        command = [c.replace("{port}", str(self.port)) for c in self.command]
        env = {k: v.replace("{port}", str(self.port)) for k, v in self.env.items()}
        self.out = open(self.log, "wb")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self.out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url + self.ready_path, self.process)
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

def prepare(workdir: Path) -> dict:
    """Train and register the default model; write request bodies; time predict_proba."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import numpy as np

    from ml_assets.core.model_loading import load_pipeline
    from serving.model_store import ServedModel, serving_n_jobs
    from serving.request_models import build_request_models, feature_specs
    from serving.testing import experiment_id, register, train_breast_cancer

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    trained = train_breast_cancer(n_estimators=200)
    name = "bench_model"
    register(trained, name, experiment_id("bench", (workdir / "artifacts").as_uri()),
             infer_requirements=True)
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

    loaded = load_pipeline(f"models:/{name}/1")
    pipeline = serving_n_jobs(loaded.pipeline)
    specs = feature_specs(loaded.schema, loaded.target)
    served = ServedModel(name=name, version="1", alias="champion", run_id=None,
                         pipeline=pipeline, target=loaded.target, labels=[], class_values=[],
                         requests=build_request_models(specs, BATCH_ROWS), metrics={},
                         loaded_at=None, metadata={})
    rows_1 = row.values.tolist()
    rows_1000 = batch.values.tolist()

    def rate(call, rows: int, seconds: float = 3.0) -> float:
        call()
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            call()
            calls += 1
        return rows * calls / (time.perf_counter() - started)

    limits = {
        "predict_proba, 1 row": rate(lambda: pipeline.predict_proba(row), 1),
        "predict_proba, 1,000 rows": rate(lambda: pipeline.predict_proba(batch), BATCH_ROWS),
        "service predict path, 1 row": rate(lambda: served.predict_proba(rows_1), 1),
        "service predict path, 1,000 rows": rate(lambda: served.predict_proba(rows_1000),
                                                 BATCH_ROWS),
    }
    return {"name": name, "paths": paths, "limits": limits}


def measure(load, url: str, body: Path, concurrency: int, seconds: float, repeats: int,
            workdir: Path) -> dict:
    runs = [load(url, body, concurrency, seconds, workdir) for _ in range(repeats)]
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


def run(args, load, workdir: Path) -> int:
    setup = prepare(workdir)
    paths, name = setup["paths"], setup["name"]
    bin_dir = Path(sys.executable).parent
    # As in an activated virtualenv: `mlflow models serve` execs `uvicorn` from PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    ours = Server("service", [sys.executable, "-m", "serving", "--port", "{port}",
                              "--log-level", "warning"],
                  {**env, "ML_REGISTERED_MODEL_NAME": name, "ML_API_HOST": "127.0.0.1",
                   "ML_API_POLL_SECONDS": "0", "ML_PLATFORM_HOME": str(workdir / "home"),
                   "ML_API_MAX_BATCH": str(BATCH_ROWS)},
                  "/ready", workdir / "service.log")
    mlflow_cli = str(bin_dir / "mlflow") if (bin_dir / "mlflow").exists() else "mlflow"
    theirs = Server("mlflow", [mlflow_cli, "models", "serve", "-m", f"models:/{name}@champion",
                               "--env-manager", "local", "-w", "1", "-h", "127.0.0.1", "-p",
                               "{port}"], env, "/ping", workdir / "mlflow.log")

    cases = []  # (label, server, path, body, concurrency)
    for c in SINGLE_CONCURRENCY:
        cases += [(f"1 row, c={c}", "service /predict", ours, "/predict", "record", c),
                  (f"1 row, c={c}", "service /invocations", ours, "/invocations", "split_1", c),
                  (f"1 row, c={c}", "mlflow /invocations", theirs, "/invocations", "split_1",
                   c)]
    for c in BATCH_CONCURRENCY:
        label = f"{BATCH_ROWS:,} rows, c={c}"
        cases += [(label, "service /predict/batch", ours, "/predict/batch", "records_1000", c),
                  (label, "service /invocations", ours, "/invocations", "split_1000", c),
                  (label, "mlflow /invocations", theirs, "/invocations", "split_1000", c)]

    results: dict[tuple[str, str], dict] = {}
    for server in (ours, theirs):
        with server:
            print(f"{server.name} ready at {server.url}", flush=True)
            load(server.url + ("/predict" if server is ours else "/invocations"),
                 paths["record" if server is ours else "split_1"], 8, 2.0, workdir)  # warm-up
            for label, target, srv, path, body, c in cases:
                if srv is not server:
                    continue
                result = measure(load, server.url + path, paths[body], c, args.seconds,
                                 args.repeats, workdir)
                results[(label, target)] = result
                print(f"  {label:<20} {target:<24} {result['rps']:9.1f} req/s  "
                      f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                      f"errors {result['errors']}", flush=True)

    print_table(results, setup["limits"], args)
    if args.json:
        args.json.write_text(json.dumps({
            "results": {f"{k[0]} | {k[1]}": v for k, v in results.items()},
            "limits": setup["limits"]}, indent=2))
    return 0


def print_table(results: dict, limits: dict, args) -> None:
    print(f"\n## Results (median of {args.repeats} x {args.seconds:g} s; "
          f"ratio = service / MLflow)\n")
    print("| load | server | rows/s | p50 ms | p99 ms | throughput vs MLflow |")
    print("|---|---|---:|---:|---:|---:|")
    for label in dict.fromkeys(k[0] for k in results):
        rows = BATCH_ROWS if label.startswith(f"{BATCH_ROWS:,}") else 1
        baseline = results[(label, "mlflow /invocations")]["rps"]
        for (case, target), r in results.items():
            if case != label:
                continue
            ratio = r["rps"] / baseline if baseline else float("nan")
            errors = f" ({r['errors']} errors)" if r["errors"] else ""
            print(f"| {label} | {target}{errors} | {r['rps'] * rows:,.0f} | "
                  f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {ratio:.1f}x |")
    print("\n| in-process limit (one thread) | rows/s |\n|---|---:|")
    for label, value in limits.items():
        print(f"| {label} | {value:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
