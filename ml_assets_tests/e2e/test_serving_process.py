"""The real thing: `python -m serving` under uvicorn, a new champion promoted while
clients keep sending requests. Traffic goes to 127.0.0.1 only; loops are bounded."""

from __future__ import annotations

import threading
import time

import httpx
import pandas as pd
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets_tests.support.api_process import api_process
from ml_assets_tests.support.models import champion_and_challenger, experiment_id, register

CLIENTS = 4
MAX_REQUESTS = 4000
MAX_SECONDS = 60.0


class ClientLoop:
    """CLIENTS threads posting /predict until stopped or bounded out."""

    def __init__(self, url: str, row: dict):
        self.url, self.row = url, row
        self.results: list[tuple[float, float, int, str | None]] = []  # start, end, ...
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self):
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while (not self.stop.is_set() and len(self.results) < MAX_REQUESTS
                   and time.monotonic() - self.started < MAX_SECONDS):
                try:
                    started = time.monotonic()
                    response = client.post("/predict", json=self.row)
                    version = response.json().get("model_version")
                    with self.lock:
                        self.results.append((started, time.monotonic(), response.status_code,
                                             version))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    with self.lock:
                        self.errors.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def versions(self) -> list[str | None]:
        with self.lock:
            return [version for *_, version in self.results]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.05)
        return predicate()


def test_promotion_under_load_drops_no_request(mlflow_store, unique_name, tmp_path):
    old, new = champion_and_challenger()
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    register(old, unique_name, experiment)
    env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": unique_name, "ML_API_POLL_SECONDS": "0.5"}
    with api_process(env, tmp_path) as api:
        url, log_path = api.url, api.prediction_log
        row = new.X_test.iloc[0].to_dict()
        with ClientLoop(url, row) as loop:
            assert loop.wait_for(lambda: len(loop.results) >= 100, 30)
            register(new, unique_name, experiment)  # the pipeline promotes a new champion
            assert loop.wait_for(lambda: "2" in loop.versions(), 30), "v2 never served"
            seen = len(loop.results)
            assert loop.wait_for(lambda: len(loop.results) >= seen + 100, 30)
        assert loop.errors == []
        assert {status for _, _, status, _ in loop.results} == {200}
        # Atomic swap: once any client has an answer from v2, every request started
        # later is answered by v2 (requests in flight may still finish on v1).
        first_v2_answer = min(end for _, end, _, version in loop.results if version == "2")
        later = [version for start, _, _, version in loop.results if start > first_v2_answer]
        assert later and set(later) == {"2"}
        counts = {v: loop.versions().count(v) for v in ("1", "2")}
        assert counts["1"] >= 100 and counts["2"] >= 100

        # An unchanged MLflow client gets what MLflow's server would answer.
        frame = new.X_test.head(7)
        predictions = ScoringServerClient("127.0.0.1", api.port).invoke(frame).get_predictions()
        assert list(predictions.iloc[:, 0]) == new.pipeline.predict(frame).tolist()
        assert httpx.get(f"{url}/model").json()["version"] == "2"

        code, _ = api.stop()  # SIGTERM, graceful: the prediction log is flushed
        assert code == 0

    log = SQLitePredictionLog(log_path)
    frame = pd.concat([log.read_day(day) for day in log.days()], ignore_index=True)
    log.close()
    # Every answered prediction is in the log, with the version that answered it.
    assert len(frame) == len(loop.results) + 7
    assert frame["model_version"].value_counts().to_dict() == {"1": counts["1"],
                                                               "2": counts["2"] + 7}
