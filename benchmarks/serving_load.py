"""The load generators and server processes of benchmarks/bench_serving.py: wrk (Debian's
`wrk` package) or a bounded asyncio httpx client in its own process, and a server
subprocess stopped by its own process group.

`python benchmarks/serving_load.py URL BODY CONCURRENCY SECONDS` runs the httpx client
once and prints its figures as JSON (how `run_httpx` drives it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the tests' support package: free ports, readiness

from ml_assets_tests.support.services import free_port, wait_http  # noqa: E402

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""


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
        [sys.executable, __file__, url, str(body), str(concurrency), str(seconds)],
        capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over runs; errors summed; the runs kept."""
    median = {key: statistics.median(run[key] for run in runs)
              for key in ("rps", "p50_ms", "p99_ms")}
    median["errors"] = sum(run["errors"] for run in runs)
    median["runs"] = runs
    return median


class Server:
    """A server subprocess, stopped (by its own process group) on exit. `{port}` in the
    command or the environment becomes a free port."""

    def __init__(self, name: str, command: list[str], env: dict, ready_path: str,
                 log: Path, cwd: Path = ROOT, timeout: float = 180):
        self.name, self.command, self.env, self.ready_path, self.log, self.cwd = (
            name, command, env, ready_path, log, cwd)
        self.timeout = timeout

    def __enter__(self):
        self.port = free_port()
        command = [c.replace("{port}", str(self.port)) for c in self.command]
        env = {k: v.replace("{port}", str(self.port)) for k, v in self.env.items()}
        self.out = open(self.log, "wb")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(command, env=env, cwd=self.cwd, stdout=self.out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_http(self.url + self.ready_path, self.process, timeout=self.timeout)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            # mlflow models serve and MLServer run children: stop the group each leads.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.out.close()


if __name__ == "__main__":
    url, body, concurrency, seconds = sys.argv[1:5]
    print(json.dumps(asyncio.run(_httpx_load(url, Path(body).read_bytes(), int(concurrency),
                                             float(seconds)))))
