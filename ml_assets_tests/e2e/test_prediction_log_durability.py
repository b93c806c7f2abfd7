"""A 200 means the rows are committed in the prediction log: a SIGKILL under load loses
no acknowledged row (SQLite and PostgreSQL); a log held locked by another process
makes predictions answer 503 with Retry-After while /health keeps answering; rows
that can be stored nowhere at shutdown make the process exit non-zero; a log that
cannot be opened is named, with its setting, before the service starts.

Real `python -m serving` processes on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from ml_assets.core.prediction_log import PredictionLog, open_prediction_log
from ml_assets_tests.support.api_process import api_process, start_api

LOAD_SECONDS = 5.0
MAX_REQUESTS_PER_CLIENT = 3000
BATCH_ROWS = 1000


@pytest.fixture(scope="module")
def champion(cancer_champion) -> str:
    """The session's breast-cancer champion."""
    return cancer_champion.name


@pytest.fixture(scope="module")
def bodies(cancer_champion) -> dict[str, dict]:
    rows = cancer_champion.trained.X_test.to_dict(orient="records")
    return {"one": rows[0], "batch": {"records": [rows[i % len(rows)]
                                                  for i in range(BATCH_ROWS)]}}


def _server(tmp_path: Path, mlflow_store: dict, model: str, **env: str):
    """The service on `model`, its SQLite prediction log at tmp_path/prediction_log.db."""
    return api_process({"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
                        "ML_REGISTERED_MODEL_NAME": model,
                        "ML_PREDICTION_LOG_PATH": str(tmp_path / "prediction_log.db"), **env},
                       tmp_path)


class Load:
    """Client threads posting /predict (one row) and /predict/batch (1,000 rows) until
    stopped or bounded out; records the request id and row count of every 200."""

    def __init__(self, url: str, bodies: dict, singles: int = 3, batches: int = 2):
        self.url, self.bodies = url, bodies
        self.acked: list[tuple[str, int]] = []
        self.statuses: Counter[int] = Counter()
        self.failures = 0  # transport errors (the server was killed)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.deadline = time.monotonic() + 60
        self.threads = [threading.Thread(target=self._run, args=(kind, n), daemon=True)
                        for kind, count in (("one", singles), ("batch", batches))
                        for n in range(count)]

    def _run(self, kind: str, n: int) -> None:
        path, rows = ("/predict", 1) if kind == "one" else ("/predict/batch", BATCH_ROWS)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for i in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                request_id = f"{kind}-{n}-{i}-{uuid.uuid4().hex[:6]}"
                try:
                    response = client.post(path, json=self.bodies[kind],
                                           headers={"X-Request-ID": request_id})
                except httpx.TransportError:
                    with self.lock:
                        self.failures += 1
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        assert response.json()["request_id"] == request_id
                        self.acked.append((request_id, rows))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _logged(log: PredictionLog) -> Counter[str]:
    """Rows per request id in the whole log."""
    days = log.days()
    if not days:
        return Counter()
    frame = pd.concat([log.read_day(day) for day in days], ignore_index=True)
    return Counter(frame["request_id"].tolist())


def _missing(acked: list[tuple[str, int]], logged: Counter[str]) -> list[tuple[str, int, int]]:
    return [(rid, rows, logged.get(rid, 0)) for rid, rows in acked
            if logged.get(rid, 0) != rows]


@pytest.fixture(params=["sqlite", "postgres"])
def log_location(request, tmp_path) -> Iterator[tuple[dict, str]]:
    """(server env, where to read the log back)."""
    if request.param == "sqlite":
        yield {}, str(tmp_path / "prediction_log.db")
    else:
        url = request.getfixturevalue("pg_url")
        yield {"ML_PREDICTION_LOG_URL": url}, url


def test_sigkill_under_load_loses_no_acknowledged_row(mlflow_store, champion, bodies,
                                                      tmp_path, log_location):
    env, location = log_location
    with _server(tmp_path, mlflow_store, champion, **env) as server, \
            Load(server.url, bodies) as load:
        started = time.monotonic()
        while time.monotonic() - started < LOAD_SECONDS:
            time.sleep(0.1)
        server.process.send_signal(signal.SIGKILL)  # requests in flight, rows queued
        assert server.process.wait(timeout=30) == -signal.SIGKILL
    assert set(load.statuses) <= {200}, (load.statuses, server.log(4000))
    batches = sum(1 for _, rows in load.acked if rows == BATCH_ROWS)
    singles = len(load.acked) - batches
    assert batches >= 3 and singles >= 30, load.statuses  # it was under load
    log = open_prediction_log(location, read_only=True)
    try:
        logged = _logged(log)
    finally:
        log.close()
    assert _missing(load.acked, logged) == []  # every acknowledged row is there


def test_a_locked_sqlite_log_gets_503_while_health_keeps_answering(mlflow_store, champion,
                                                                   bodies, tmp_path):
    hold_seconds = 3.0
    with _server(tmp_path, mlflow_store, champion,
                 ML_PREDICTION_LOG_BUSY_TIMEOUT_SECONDS="1") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/predict", json=bodies["one"]).status_code == 200
        health: list[float] = []
        answers: list[tuple[float, float, int, str | None, str]] = []
        stop = threading.Event()

        def poll_health() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for _ in range(2000):
                    if stop.is_set():
                        return
                    began = time.perf_counter()
                    assert client.get("/health").status_code == 200
                    health.append(time.perf_counter() - began)
                    time.sleep(0.02)

        def predict(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for i in range(2000):
                    if stop.is_set():
                        return
                    request_id = f"lock-{n}-{i}"
                    began = time.monotonic()
                    response = client.post("/predict", json=bodies["one"],
                                           headers={"X-Request-ID": request_id})
                    answers.append((began, time.monotonic(), response.status_code,
                                    response.headers.get("retry-after"), request_id))
                    if response.status_code == 503:
                        assert "prediction log" in response.json()["detail"]
                    time.sleep(0.02)

        threads = [threading.Thread(target=poll_health, daemon=True),
                   *(threading.Thread(target=predict, args=(n,), daemon=True)
                     for n in range(2))]
        holder = sqlite3.connect(server.prediction_log, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the log
        locked_at = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(hold_seconds)
        holder.execute("ROLLBACK")
        holder.close()
        released_at = time.monotonic()
        deadline = released_at + 15
        while time.monotonic() < deadline and sum(
                1 for began, _, status, *_ in answers
                if status == 200 and began > released_at) < 10:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log(4000)

    assert len(health) > 50 and max(health) < 0.1, sorted(health)[-5:]
    during = [a for a in answers if a[0] < released_at - 1.2 and a[0] > locked_at]
    assert during and {status for _, _, status, *_ in during} == {503}
    assert all(retry and int(retry) >= 1 for *_, status, retry, _ in answers
               if status == 503)
    assert max(end - began for began, end, *_ in answers) < 2.5  # never hangs
    assert {status for _, _, status, *_ in answers} <= {200, 503}
    after = [a for a in answers if a[0] > released_at and a[2] == 200]
    assert len(after) >= 10, answers[-5:]
    log = open_prediction_log(server.prediction_log, read_only=True)
    logged = _logged(log)
    assert _missing([(rid, 1) for *_, status, _, rid in answers if status == 200],
                    logged) == []


def test_the_service_names_an_unopenable_log_and_its_setting(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    api = start_api({"ML_PREDICTION_LOG_PATH": str(blocker / "log.db")}, tmp_path)
    api.process.wait(timeout=120)  # it refuses to start
    code, output = api.stop()
    assert code == 2, output
    assert output.startswith("error: ")
    assert f"{blocker}/log.db" in output and "ML_PREDICTION_LOG_PATH" in output


# --- the app: 503 mapping, opt-out drops, lost rows at shutdown -------------------------

class BrokenLog:
    """A SQLite log whose storage always fails (and, with `spill_to_nowhere`, whose spill
    targets fail too)."""

    @staticmethod
    def make(tmp_path: Path, **kwargs):
        from ml_assets.core.prediction_log import SQLitePredictionLog

        class Broken(SQLitePredictionLog):
            def _write(self, records):
                raise OSError("disk full")

        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        log = Broken(tmp_path / "log.db", retry_seconds=0.05,
                     spill_path=blocker / "log.db", **kwargs)
        log._spill_targets = lambda: [blocker / "a.jsonl", blocker / "b.jsonl"]
        return log


@pytest.fixture(autouse=True)
def quick_close(monkeypatch):
    """A log that cannot store anything would retry for LOG_CLOSE_SECONDS at shutdown."""
    monkeypatch.setattr("serving.app.LOG_CLOSE_SECONDS", 0.5)


def _client(app):
    with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app)


def _settings(mlflow_store, champion, tmp_path, **overrides):
    from serving.settings import ServingSettings

    return ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=champion,
                           prediction_log_path=tmp_path / "prediction_log.db",
                           poll_seconds=0, **overrides)


def test_a_failing_log_answers_503_with_retry_after(mlflow_store, champion, bodies, tmp_path):
    from serving.app import create_app

    app = create_app(_settings(mlflow_store, champion, tmp_path),
                     prediction_log=BrokenLog.make(tmp_path))
    with _client(app) as client:
        first = client.post("/predict", json=bodies["one"])
        second = client.post("/predict/batch", json={"records": [bodies["one"]]})
        mlflow = client.post("/invocations", json={"dataframe_records": [bodies["one"]]})
        metrics = client.get("/metrics").text
    for response in (first, second, mlflow):
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert "disk full" in first.json()["detail"] and first.json()["request_id"]
    assert mlflow.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "disk full" in mlflow.json()["message"]
    assert "ml_api_prediction_log_write_failures_total 1.0" in metrics
    assert app.state.prediction_log_lost_rows == 1  # the one row that was never answered


def test_opt_out_mode_keeps_serving_and_counts_dropped_rows(mlflow_store, champion, bodies,
                                                            tmp_path):
    from serving.app import create_app

    log = BrokenLog.make(tmp_path, max_queue_rows=3)
    app = create_app(_settings(mlflow_store, champion, tmp_path, log_ack="async"),
                     prediction_log=log)
    with _client(app) as client:
        statuses = [client.post("/predict", json=bodies["one"]).status_code
                    for _ in range(6)]
        metrics = client.get("/metrics").text
    assert statuses == [200] * 6  # answered without waiting for the log
    assert "ml_api_prediction_log_dropped_rows_total 3.0" in metrics
    assert log.dropped_rows == 3
    assert app.state.prediction_log_lost_rows == 3  # queued, unstorable, unspillable


def test_main_exits_1_when_rows_are_lost_at_shutdown(mlflow_store, champion, bodies,
                                                     tmp_path, monkeypatch):
    import serving.__main__ as entry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store["tracking_uri"])
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", champion)
    monkeypatch.setenv("ML_API_POLL_SECONDS", "0")
    monkeypatch.setenv("ML_PREDICTION_LOG_ACK", "async")
    monkeypatch.setenv("ML_PREDICTION_LOG_PATH", str(tmp_path / "prediction_log.db"))
    monkeypatch.delenv("ML_PREDICTION_LOG_URL", raising=False)
    # main() turns MLflow's own model loaders off in its process: undone after the test.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    monkeypatch.setattr(entry, "open_log", lambda settings: BrokenLog.make(tmp_path))

    def run(app, settings, log_level):  # stands in for uvicorn: start, serve, shut down
        with _client(app) as client:
            assert client.post("/predict", json=bodies["one"]).status_code == 200

    monkeypatch.setattr(entry, "serve", run)
    monkeypatch.setattr(entry.signal, "signal", lambda *args: None)
    assert entry.main([]) == 1
