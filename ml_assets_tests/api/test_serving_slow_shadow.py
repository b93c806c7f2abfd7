"""A shadow challenger far slower than the champion must not delay the champion: shadow
copies are scored in a lane of their own (serving/shadow_lane.py: its own thread and
lock, a bounded queue) and shed first when it is full. In-process (TestClient) on the
real MLflow registry; timings compared with a baseline measured in the same test,
interleaved."""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import replace

from mlflow import MlflowClient

from ml_assets.core.rollout.plan import start_rollout
from ml_assets_tests.support.models import (
    champion_and_challenger,
    register_champion_and_challenger,
)
from ml_assets_tests.support.user_factory import SlowClassifier
from serving.app import create_app
from serving.rollout import RolloutState
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROUNDS = 4  # interleaved blocks of each kind
PER_BLOCK = 8  # requests per block
ATTEMPTS = 3  # measurements, the best judged


def _metric(text: str, prefix: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(prefix)), None)
    return float(line.split()[-1]) if line else 0.0


def _timed(http: TestClient, row: dict, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.post("/predict", json=row)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.json()["variant"] == "champion"
    return times


def test_a_shadow_100x_slower_does_not_delay_the_champion(mlflow_store, tmp_path):
    models = champion_and_challenger()
    name = register_champion_and_challenger(models, "t_slow_shadow",
                                            mlflow_store["artifact_root"])
    client = MlflowClient(mlflow_store["tracking_uri"])
    start_rollout(client, name, "shadow", "2", "1", ((0.0, 0.0),))
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                               prediction_log_path=tmp_path / "log.db", poll_seconds=0,
                               shadow_max_in_flight=3)
    app = create_app(settings)
    row = models[1].X_test.iloc[0].to_dict()
    with TestClient(app) as http:
        router = app.state.service.router
        state = router.state
        assert state is not None and state.plan.mode == "shadow"
        assert app.state.service.store.current.runtime == "sklearn"
        router.state = None  # the champion alone
        _timed(http, row, 5)  # warm-up
        champion_p50 = statistics.median(_timed(http, row, 9))
        # 100x the champion's request time, within what a bounded test can wait for.
        slow = SlowClassifier(state.challenger.pipeline, min(1.0, max(0.2,
                                                                      100 * champion_p50)))
        shadowed = RolloutState(state.plan, replace(state.challenger, compiled=None,
                                                    pipeline=slow))
        # Judged on the best of up to ATTEMPTS measurements: a shadow that holds the
        # champion back does so in every one, other work on a shared machine (the
        # suite's other workers) only in some.
        attempts = []
        for _ in range(ATTEMPTS):
            alone: list[float] = []
            with_shadow: list[float] = []
            for _ in range(ROUNDS):
                router.state = None
                alone += _timed(http, row, PER_BLOCK)
                router.state = shadowed
                with_shadow += _timed(http, row, PER_BLOCK)
            attempts.append((statistics.median(alone), statistics.median(with_shadow)))
            p50_alone, p50_shadow = attempts[-1]
            if p50_shadow <= max(1.2 * p50_alone, p50_alone + 0.0015):
                break
        router.state = shadowed
        deadline = time.monotonic() + 30
        while router.shadow_in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.shadow_in_flight == 0
        text = http.get("/metrics").text
    print(f"champion p50 alone / with a {slow.seconds:.2f} s shadow, per attempt (ms): "
          f"{[(round(a * 1000, 2), round(s * 1000, 2)) for a, s in attempts]}; shadow "
          f"calls {slow.calls}")
    # 20 % of the no-shadow figure, or 1.5 ms where that is less: the numpy-replay
    # champion answers in ~2.5 ms, and 0.5 ms is below a loaded 2-core machine's
    # scheduling noise. Sharing the predict thread cost the champion 47 -> 869 ms.
    assert p50_shadow <= max(1.2 * p50_alone, p50_alone + 0.0015), (
        f"champion p50 {p50_shadow * 1000:.1f} ms with a {slow.seconds:.2f} s shadow, "
        f"{p50_alone * 1000:.1f} ms without, in each of {len(attempts)} attempts: "
        f"{attempts}")
    # The shadow did score (in its lane), and the copies past the bound were shed.
    assert slow.calls >= 1
    shed = _metric(text, "ml_api_shadow_skipped_total ")
    scored = _metric(text, 'ml_api_variant_predictions_total{model_version="2",'
                           'variant="shadow"} ')
    assert shed >= 1 and scored >= 1
    # every copy scored (in batches) or shed
    assert shed + scored == len(attempts) * ROUNDS * PER_BLOCK
