"""`python -m serving --workers 2` for real: two uvicorn worker processes on one port
behind uvicorn's supervisor. Requests are answered by both, /metrics sums them, the
prediction log (one SQLite file, two writers) holds every answered row, a reload that
lands on one worker reaches the other, SIGTERM stops every process cleanly, and a
worker that dies with rows unaccounted for makes the exit status say so. Traffic goes
to 127.0.0.1 only; every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets_tests.support.api_process import start_api
from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer
from serving.workers.shared_dir import SharedDir
from serving.workers.supervisor import Outcome
from serving.workers.sync import WorkerSync

WORKERS = 2
REQUESTS = 400  # K concurrent one-row predictions
CONCURRENCY = 16
SETTLE_SECONDS = 20.0  # bound for both workers to be ready / to follow a reload
# A replacement worker is a fresh interpreter: it imports the service and loads the model
# (over 20 s on a loaded 2-core CI machine, where the first two took 5 s to load alone).
REPLACE_SECONDS = 120.0


class Workers:
    """`python -m serving --workers 2` in its own session; stopped by its pid (its
    process group only if a test failed and left it running)."""

    def __init__(self, tmp_path: Path, tracking_uri: str, model_name: str):
        self.root = tmp_path
        self.log_path = tmp_path / "prediction_log.db"
        self.env = {"MLFLOW_TRACKING_URI": tracking_uri, "ML_REGISTERED_MODEL_NAME": model_name,
                    # Polling off: only the reload's generation file can move a worker.
                    "ML_API_POLL_SECONDS": "0",
                    "ML_PREDICTION_LOG_PATH": str(self.log_path),
                    "PROMETHEUS_MULTIPROC_DIR": None}

    def __enter__(self) -> Workers:
        self.api = start_api(self.env, self.root, workers=WORKERS, log_level="info")
        self.url, self.process = self.api.url, self.api.process
        # Every request on a new connection ("Connection: close"), so that either
        # worker may accept it; one client (its SSL context is costly to build).
        self.client = httpx.Client(base_url=self.url, timeout=30,
                                   headers={"Connection": "close"},
                                   limits=httpx.Limits(max_connections=CONCURRENCY))
        try:
            self.api.wait_ready()
            self.pids = self.wait_for_workers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.api.running:  # a test failed: leave nothing behind
            shared = [_shared_dir(pid) for pid in getattr(self, "pids", ()) if _alive(pid)]
            self.api.stop(signal.SIGKILL, group=True)
            for path in shared[:1]:
                shutil.rmtree(path, ignore_errors=True)
        self.client.close()

    def log(self) -> str:
        return self.api.log()

    def get(self, path: str) -> httpx.Response:
        """On a new connection, so that either worker may answer it."""
        return self.client.get(path)

    def wait_for_workers(self, exclude: frozenset[int] = frozenset(),
                         seconds: float = SETTLE_SECONDS) -> set[int]:
        """The pids of WORKERS workers answering /ready 200 (none of `exclude`)."""
        seen: set[int] = set()
        deadline = time.monotonic() + seconds
        while len(seen) < WORKERS and time.monotonic() < deadline:
            response = self.get("/ready")
            pid = int(response.headers["x-worker-pid"])
            if response.status_code == 200 and pid not in exclude:
                seen.add(pid)
            time.sleep(0.02)
        assert len(seen) == WORKERS, f"ready workers: {seen}\n{self.log()}"
        return seen

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = self.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(value for (sample, found), value in metrics.items()
               if sample == name and set(labels.items()) <= set(found))


def _predict_concurrently(server: Workers, row: dict, count: int
                          ) -> list[tuple[int, int, str]]:
    """`count` one-row /predict requests from CONCURRENCY threads, each on a new
    connection: (status, answering pid, model version)."""
    def one(_):
        response = server.client.post("/predict", json=row)
        return (response.status_code, int(response.headers["x-worker-pid"]),
                response.json().get("model_version"))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, range(count), timeout=120))


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _shared_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value.decode())


def _log_frame(path: Path) -> pd.DataFrame:
    log = SQLitePredictionLog(path, read_only=True)
    return pd.concat([log.read_day(day) for day in log.days()], ignore_index=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_two_workers_share_metrics_log_reloads_and_stop_cleanly(mlflow_store, unique_name,
                                                                 tmp_path):
    old = train_breast_cancer(n_estimators=5, max_depth=1, seed=1)
    new = train_breast_cancer(n_estimators=10, seed=2)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(old, unique_name, experiment)
    row = old.X_test.iloc[0].to_dict()
    with Workers(tmp_path, mlflow_store["tracking_uri"], unique_name) as server:
        pids = server.pids
        assert all(_ppid(pid) == server.process.pid for pid in pids), "not its workers"
        shared = _shared_dir(next(iter(pids)))
        assert shared.is_dir()

        # K concurrent requests: every one answered, by both workers.
        started = time.monotonic()
        answers = _predict_concurrently(server, row, REQUESTS)
        elapsed = time.monotonic() - started
        assert [status for status, _, _ in answers] == [200] * REQUESTS, server.log()
        assert {pid for _, pid, _ in answers} == pids
        assert {version for *_, version in answers} == {"1"}
        print(f"{REQUESTS} requests at concurrency {CONCURRENCY} in {elapsed:.2f}s")

        # /metrics, whichever worker renders it, sums both workers' counters. The
        # backlog gauge is sampled at each commit and twice a second: 0 at once or soon.
        deadline = time.monotonic() + 2
        while (_sum(server.metrics(), "ml_api_prediction_log_backlog")
               and time.monotonic() < deadline):
            time.sleep(0.1)
        for _ in range(4):
            metrics = server.metrics()
            assert _sum(metrics, "ml_api_requests_total", endpoint="/predict",
                        status="200") == REQUESTS
            assert _sum(metrics, "ml_api_predictions_total") == REQUESTS
            assert _sum(metrics, "ml_api_request_duration_seconds_count",
                        endpoint="/predict") == REQUESTS
            assert _sum(metrics, "ml_api_model_version") == 1.0  # livemax: one series
            assert _sum(metrics, "ml_api_prediction_log_backlog") == 0.0
            assert _sum(metrics, "ml_api_prediction_log_write_failures_total") == 0.0
            assert not any("pid" in dict(labels) for _, labels in metrics)

        # A new champion; the reload lands on one worker, the other follows.
        register(new, unique_name, experiment)
        reload = server.client.post("/admin/reload", json={}, timeout=60)
        assert reload.status_code == 200, reload.text
        assert reload.json()["serving_version"] == "2"
        reloaded_by = int(reload.headers["x-worker-pid"])
        latest: dict[int, str] = {}
        deadline = time.monotonic() + SETTLE_SECONDS
        polls = 0
        while time.monotonic() < deadline and not (
                set(latest) == pids and set(latest.values()) == {"2"}):
            response = server.get("/model")
            latest[int(response.headers["x-worker-pid"])] = response.json()["version"]
            polls += 1
        followed_in = SETTLE_SECONDS - (deadline - time.monotonic())
        assert latest == dict.fromkeys(pids, "2"), f"{latest} after {polls} polls\n" + \
            server.log()
        print(f"worker {reloaded_by} reloaded; the other followed within "
              f"{followed_in:.2f}s ({polls} polls)")
        for _ in range(10):  # settled: every worker answers the same
            response = server.get("/ready")
            assert response.status_code == 200
            assert response.json()["model_version"] == "2"
        after = _predict_concurrently(server, row, 40)
        assert {(status, version) for status, _, version in after} == {(200, "2")}
        metrics = server.metrics()
        assert _sum(metrics, "ml_api_model_version") == 2.0
        assert _sum(metrics, "ml_api_model_version_min") == 2.0  # nobody left behind
        # Each worker's start-up load, then each worker's swap to version 2.
        assert _sum(metrics, "ml_api_model_swaps_total") == 2 * WORKERS
        assert _sum(metrics, "ml_api_requests_total", endpoint="/predict",
                    status="200") == REQUESTS + 40

        # SIGTERM to the supervisor: every worker shuts down gracefully, nothing left.
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids), "orphaned workers"
        assert not shared.exists(), "the shared directory outlived the supervisor"
        output = server.log()
    assert "error:" not in output and "ERROR" not in output, output  # nothing lost
    assert "database is locked" not in output, output
    assert output.count("prediction log flushed and closed") == WORKERS, output

    frame = _log_frame(server.log_path)
    assert len(frame) == REQUESTS + 40  # exactly the answered rows, from both writers
    assert frame["request_id"].is_unique
    assert frame["model_version"].value_counts().to_dict() == {"1": REQUESTS, "2": 40}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_worker_is_replaced_and_the_exit_status_says_rows_may_be_lost(
        mlflow_store, cancer_champion, tmp_path):
    row = cancer_champion.trained.X_test.iloc[0].to_dict()  # the session's champion
    with Workers(tmp_path, mlflow_store["tracking_uri"], cancer_champion.name) as server:
        answers = _predict_concurrently(server, row, 40)
        assert {status for status, _, _ in answers} == {200}
        victim = min(server.pids)
        os.kill(victim, signal.SIGKILL)  # no lifespan shutdown: its log never closes
        survivors = server.pids - {victim}
        replaced = server.wait_for_workers(exclude=frozenset({victim}),
                                           seconds=REPLACE_SECONDS)
        assert survivors < replaced and victim not in replaced
        metrics = server.metrics()
        # The dead worker's counts stay in the sums; its live gauges are gone.
        assert _sum(metrics, "ml_api_requests_total", endpoint="/predict") == 40
        assert _sum(metrics, "ml_api_model_version") == 1.0
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 1
        output = server.log()
    assert f"worker {victim} exited with signal SIGKILL" in output, output
    assert f"error: worker(s) {victim} exited without closing the prediction log" in output
    assert len(_log_frame(server.log_path)) == 40  # every answered row was committed


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_of_a_killed_supervisor_shut_down_and_flush(mlflow_store, cancer_champion,
                                                            tmp_path):
    row = cancer_champion.trained.X_test.iloc[0].to_dict()  # the session's champion
    with Workers(tmp_path, mlflow_store["tracking_uri"], cancer_champion.name) as server:
        shared = _shared_dir(next(iter(server.pids)))
        answers = _predict_concurrently(server, row, 40)
        assert {status for status, _, _ in answers} == {200}
        server.process.kill()  # SIGKILL: no supervisor left to stop the workers
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in server.pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in server.pids), "orphaned workers"
        output = server.log()
        shutil.rmtree(shared)  # what a killed supervisor leaves behind
    assert output.count("the supervisor (pid") == WORKERS, output
    assert output.count("prediction log flushed and closed") == WORKERS, output
    assert len(_log_frame(server.log_path)) == 40


# -- the pieces, in-process --------------------------------------------------------------

def test_outcome_exit_codes():
    assert Outcome().exit_code() == 0
    assert Outcome(spilled_rows=3).exit_code() == 0  # stored elsewhere, named in the log
    assert Outcome(lost_rows=2).exit_code() == 1
    assert Outcome(unclosed=[42]).exit_code() == 1
    assert Outcome(startup_failed=[7], lost_rows=2).exit_code() == 3


class _Store:
    """ModelStore's refresh, faked: `results` are answered in turn (then "swapped" to
    `alias`); a swap changes `current`."""

    def __init__(self, version: str | None, alias: str = "2", results=()):
        self.current = None if version is None else _Model(version)
        self.alias, self.results = alias, list(results)
        self.calls: list[tuple] = []

    def refresh(self, force=False, retry_rejected=False):
        self.calls.append((force, retry_rejected))
        served = self.current.version if self.current else None
        if self.results:
            return {"status": self.results.pop(0), "detail": "download failed: timeout",
                    "serving_version": served, "candidate_version": self.alias}
        self.current = _Model(self.alias)
        return {"status": "swapped", "serving_version": self.alias,
                "previous_version": served}


class _Model:
    def __init__(self, version: str):
        self.version = version


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_follows_the_others_generations_only(tmp_path, monkeypatch):
    def follow(store):
        return asyncio.run(sync.follow(store))

    shared = SharedDir(tmp_path)
    shared.bump("1")  # written before this worker started: not its business
    sync = WorkerSync(shared)
    store = _Store("1", alias="2")
    assert follow(store) is None
    shared.bump("1")  # its own write
    assert follow(store) is None and store.calls == []
    monkeypatch.setattr(os, "getpid", lambda: sync.pid + 1)  # another worker writes
    shared.bump("1")
    assert follow(store) is None  # already serves it
    shared.bump("2")
    assert follow(store)["status"] == "swapped"
    shared.bump("2", force=True)
    assert follow(store)["status"] == "swapped"
    assert store.calls == [(False, True), (True, True)]
    assert follow(store) is None  # nothing new


def test_a_failed_follow_is_retried_with_backoff_until_it_serves_the_version(
        tmp_path, monkeypatch, caplog):
    def follow():
        return asyncio.run(sync.follow(store))

    clock = _Clock()
    shared = SharedDir(tmp_path)
    sync = WorkerSync(shared, clock=clock)
    store = _Store("2", alias="3", results=["rejected", "registry_error"])
    monkeypatch.setattr(os, "getpid", lambda: sync.pid + 1)  # another worker swapped
    shared.bump("3")
    with caplog.at_level(logging.WARNING, logger="serving.workers"):
        assert follow()["status"] == "rejected"  # the token is used up, the retry is not
    assert store.current.version == "2"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "version 3" in warning.getMessage()
    assert "download failed: timeout" in warning.getMessage()
    assert "trying again in 1 s" in warning.getMessage()
    clock.now += 0.9
    assert follow() is None and len(store.calls) == 1  # backoff honoured
    clock.now += 0.1
    assert follow()["status"] == "registry_error"  # second failure: 2 s next
    clock.now += 1.9
    assert follow() is None and len(store.calls) == 2
    clock.now += 0.1
    assert follow()["status"] == "swapped"
    assert store.current.version == "3"
    assert store.calls == [(False, True)] * 3  # retry_rejected every time
    clock.now += 60
    assert follow() is None and len(store.calls) == 3  # done: nothing more to retry

    # A newer generation replaces the one being retried, at once, backoff reset.
    store.alias, store.results = "5", ["rejected"]
    shared.bump("4")
    assert follow()["status"] == "rejected"
    shared.bump("5")
    assert follow()["status"] == "swapped" and store.current.version == "5"
    clock.now += 60
    assert follow() is None and len(store.calls) == 5


def test_a_force_flag_survives_a_following_bump(tmp_path, monkeypatch):
    shared = SharedDir(tmp_path)
    sync = WorkerSync(shared)
    store = _Store("3", alias="3")
    monkeypatch.setattr(os, "getpid", lambda: sync.pid + 1)
    shared.bump("3", force=True)  # POST /admin/reload?force=true on another worker
    shared.bump("3")  # then a poll's bump, within SYNC_SECONDS, overwrites the generation
    assert shared.generation()["force"] is False
    result = asyncio.run(sync.follow(store))
    assert result is not None and result["status"] == "swapped"
    assert store.calls == [(True, True)]  # forced, though it already served version 3
    assert asyncio.run(sync.follow(store)) is None
    assert store.calls == [(True, True)]
