"""Batching end to end on the compiled (ONNX) runtime, through the one prediction handler:
concurrent requests coalesce into few graph calls (seen in ml_api_micro_batch_rows),
a lone request is not delayed, every wire format shares the batches, and a swap in the
middle of a burst leaves each answer to one whole model. Real models in the session
MLflow store, the app in process over httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer
from serving.app import create_app
from serving.settings import ServingSettings


def _app(mlflow_store, name: str, tmp_path, **overrides):
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                               prediction_log_path=tmp_path / f"log-{uuid.uuid4().hex}.db",
                               poll_seconds=0, **overrides)
    return create_app(settings)


def _batches(app) -> tuple[float, float]:
    """(graph or predict calls, rows) observed by ml_api_micro_batch_rows."""
    registry = app.state.service.metrics.registry
    return (registry.get_sample_value("ml_api_micro_batch_rows_count") or 0.0,
            registry.get_sample_value("ml_api_micro_batch_rows_sum") or 0.0)


async def _served(app, scenario):
    async with app.router.lifespan_context(app):
        assert app.state.service.store.current.runtime == "onnx"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await scenario(client)


def _records(trained, n: int) -> list[dict]:
    return [{k: float(v) for k, v in row.items()}
            for _, row in trained.X_test.head(n).iterrows()]


def test_concurrent_compiled_requests_coalesce_and_get_their_own_answers(
        mlflow_store, cancer_champion, tmp_path):
    trained = cancer_champion.trained
    records = _records(trained, 32)
    app = _app(mlflow_store, cancer_champion.name, tmp_path)

    async def scenario(client):
        before = _batches(app)
        answers = await asyncio.gather(*(client.post("/predict", json=r) for r in records))
        return answers, before, _batches(app)

    answers, before, after = asyncio.run(_served(app, scenario))
    assert all(a.status_code == 200 for a in answers)
    expected = trained.pipeline.predict(trained.X_test.head(32)).tolist()
    assert [a.json()["prediction"] for a in answers] == expected  # each its own row
    calls, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 32
    assert calls <= 4, f"32 concurrent rows took {calls:g} graph calls"


def test_every_wire_format_shares_the_compiled_batches(mlflow_store, cancer_champion,
                                                       tmp_path):
    trained = cancer_champion.trained
    records = _records(trained, 8)
    name = cancer_champion.name
    app = _app(mlflow_store, name, tmp_path)
    v2_inputs = [{"name": column, "datatype": "FP64", "shape": [1],
                  "data": [records[0][column]]} for column in records[0]]

    async def scenario(client):
        before = _batches(app)
        answers = await asyncio.gather(
            *(client.post("/predict", json=r) for r in records),
            client.post("/predict/batch", json={"records": records}),
            client.post("/invocations", json={"dataframe_records": records}),
            client.post(f"/v2/models/{name}/infer", json={"inputs": v2_inputs}))
        return answers, before, _batches(app)

    answers, before, after = asyncio.run(_served(app, scenario))
    assert [a.status_code for a in answers] == [200] * 11
    expected = trained.pipeline.predict(trained.X_test.head(8)).tolist()
    assert [a.json()["prediction"] for a in answers[:8]] == expected
    assert [p["prediction"] for p in answers[8].json()["predictions"]] == expected
    assert answers[9].json()["predictions"] == expected
    assert answers[10].json()["outputs"][0]["data"] == [str(expected[0])]
    calls, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 8 + 8 + 8 + 1
    assert calls < 11, f"11 concurrent requests took {calls:g} graph calls"


def test_a_lone_compiled_request_is_not_delayed(mlflow_store, cancer_champion, tmp_path):
    """A batching wait of 2 s would show in every answer: a lone request never waits."""
    record = _records(cancer_champion.trained, 1)[0]
    app = _app(mlflow_store, cancer_champion.name, tmp_path, micro_batch_wait_ms=2000.0)

    async def scenario(client):
        before = _batches(app)
        started = time.perf_counter()
        for _ in range(5):
            assert (await client.post("/predict", json=record)).status_code == 200
        return (time.perf_counter() - started) / 5, before, _batches(app)

    seconds, before, after = asyncio.run(_served(app, scenario))
    assert seconds < 0.5
    assert (after[0] - before[0], after[1] - before[1]) == (5, 5)  # one call each


@pytest.fixture
def two_compiled_versions(mlflow_store, unique_name):
    """A registered model with two compiled versions (different forests); the alias on
    version 1."""
    from mlflow import MlflowClient

    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    first, second = train_breast_cancer(n_estimators=10, seed=1), train_breast_cancer(
        n_estimators=10, seed=2, max_depth=2)
    register(first, unique_name, experiment, compile=True)
    return unique_name, experiment, (first, second), MlflowClient()


def test_a_swap_mid_burst_leaves_each_answer_to_one_whole_compiled_model(
        mlflow_store, two_compiled_versions, tmp_path):
    name, experiment, (first, second), _ = two_compiled_versions
    app = _app(mlflow_store, name, tmp_path)
    records = _records(first, 40)

    async def scenario(client):
        register(second, name, experiment, compile=True)
        before = asyncio.ensure_future(asyncio.gather(
            *(client.post("/predict", json=r) for r in records)))
        reload = asyncio.ensure_future(client.post("/admin/reload", json={}))
        during = await asyncio.gather(*(client.post("/predict", json=r) for r in records))
        swapped = (await reload).json()
        after = await asyncio.gather(*(client.post("/predict", json=r) for r in records))
        return [*(await before), *during], swapped, after

    around, swapped, after = asyncio.run(_served(app, scenario))
    assert swapped["status"] == "swapped"
    assert all(r.status_code == 200 for r in around + after)
    assert {r.json()["model_version"] for r in after} == {"2"}
    models = {"1": first, "2": second}
    for i, response in enumerate(around + after):
        body = response.json()
        pipeline = models[body["model_version"]].pipeline
        row = first.X_test.iloc[[i % len(records)]]
        proba = dict(zip(pipeline.classes_, pipeline.predict_proba(row)[0], strict=True))
        assert body["probabilities"] == pytest.approx(proba, abs=1e-5)


def _count_appends(log, appends: list[int], all_queued=None, rows: int = 0) -> None:
    """`log.append` wrapped to record each append's row count in `appends`, setting the
    Event `all_queued` (if any) once `rows` rows were handed to the log."""
    original = log.append

    def counting(records):
        appends.append(len(records))
        try:
            return original(records)
        finally:
            if all_queued is not None and sum(appends) == rows:
                all_queued.set()

    log.append = counting


def _predicted(app) -> float:
    """Rows counted by ml_api_predictions_total, every class."""
    registry = app.state.service.metrics.registry
    return sum(s.value for m in registry.collect() if m.name == "ml_api_predictions"
               for s in m.samples if s.name == "ml_api_predictions_total")


def test_concurrent_compiled_requests_share_log_appends_and_lone_ones_append_alone(
        mlflow_store, cancer_champion, tmp_path):
    """32 concurrent rows: far fewer log appends than requests (one per loop tick), every
    row committed under its own request id before its 200, every answer counted once.
    Then a lone request appends at once, alone."""
    trained = cancer_champion.trained
    records = _records(trained, 32)
    app = _app(mlflow_store, cancer_champion.name, tmp_path)
    appends: list[int] = []

    async def scenario(client):
        log = app.state.service.log
        _count_appends(log, appends)
        counted = _predicted(app)
        answers = await asyncio.gather(*(client.post("/predict", json=r) for r in records))
        burst, counted_burst = list(appends), _predicted(app) - counted
        alone = await client.post("/predict", json=records[0])
        ids = [a.json()["request_id"] for a in [*answers, alone]]
        return answers, burst, counted_burst, alone, log.read_requests(ids)

    answers, burst, counted, alone, logged = asyncio.run(_served(app, scenario))
    assert [a.status_code for a in answers] == [200] * 32 and alone.status_code == 200
    assert sum(burst) == 32 and len(burst) <= 8, f"32 requests took {len(burst)} appends"
    assert appends[len(burst):] == [1]  # the lone request: its own append
    assert counted == 32
    assert sorted(logged["request_id"]) == sorted(a.json()["request_id"]
                                                  for a in [*answers, alone])
    assert list(logged.sort_values("request_id")["prediction"]) == [
        a.json()["prediction"] for a in sorted([*answers, alone],
                                               key=lambda a: a.json()["request_id"])]


def test_a_shared_append_too_big_for_the_queue_takes_as_many_requests_as_fit(
        mlflow_store, cancer_champion, tmp_path):
    """A queue of 8 rows (the smallest valid with ML_API_MAX_BATCH=8) and 32 concurrent
    one-row requests: a tick's shared append of more rows than the queue holds is not
    refused as a whole; its requests append alone, so the queue is filled before anyone
    hears it is full, and every refusal describes the queue as it was (full). Every
    answered row is in the log; no refused one is."""
    trained = cancer_champion.trained
    records = _records(trained, 32)
    app = _app(mlflow_store, cancer_champion.name, tmp_path, max_batch=8, log_queue_rows=8)

    async def scenario(client):
        answers = await asyncio.gather(*(client.post("/predict", json=r) for r in records))
        ids = [a.json()["request_id"] for a in answers if a.status_code == 200]
        return answers, app.state.service.log.read_requests(ids)

    answers, logged = asyncio.run(_served(app, scenario))
    answered = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(answered) >= 8, [a.status_code for a in answers]
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert "the prediction log queue is full (8 of 8 rows waiting)" in answer.text
    assert sorted(logged["request_id"]) == sorted(a.json()["request_id"] for a in answered)


def _burst_while(app, records, break_log, mend_log, all_queued=None):
    """32 concurrent one-row requests while `break_log(log)` holds (bounded: 60 s); then
    `mend_log(log)` and the log flushed; `all_queued` (an Event) is set once every row
    was handed to the log. (answers, rows counted by the burst, rows counted in all,
    rows per log append of the burst)."""
    appends: list[int] = []

    async def scenario(client):
        log = app.state.service.log
        _count_appends(log, appends, all_queued, len(records))
        counted = _predicted(app)
        break_log(log)
        answers = await asyncio.wait_for(asyncio.gather(
            *(client.post("/predict", json=r) for r in records)), 60)
        during = _predicted(app) - counted
        mend_log(log)
        assert await asyncio.to_thread(log.flush, 30)
        await asyncio.sleep(0.1)  # a late commit's hop back to the loop
        return answers, during, _predicted(app) - counted

    answers, during, after = asyncio.run(_served(app, scenario))
    return answers, during, after, appends


def test_a_shared_append_whose_write_fails_answers_every_request_503_and_counts_none(
        mlflow_store, cancer_champion, tmp_path):
    """Storage failing under a burst: the first write fails once every request's rows
    are queued (most of them in shared appends), and every request hears the storage's
    own error as a 503 (none hangs, none is answered 200); none is counted in
    ml_api_predictions_total, then or after storage recovers."""
    import threading

    records = _records(cancer_champion.trained, 32)
    app = _app(mlflow_store, cancer_champion.name, tmp_path)
    queued = threading.Event()

    def broken(rows):
        queued.wait(20)
        raise OSError("disk on fire")

    answers, during, after, appends = _burst_while(
        app, records, lambda log: setattr(log, "_write", broken),
        lambda log: delattr(log, "_write"), all_queued=queued)
    assert queued.is_set() and sum(appends) == 32
    assert max(appends) > 1, appends  # a shared append of several requests failed
    assert [a.status_code for a in answers] == [503] * 32, [a.text for a in answers]
    for answer in answers:
        assert "the prediction log cannot store rows: disk on fire" in answer.text
        assert answer.headers.get("retry-after")
    assert during == 0 and after == 0


def test_a_shared_append_not_committed_in_time_answers_503_and_a_late_commit_counts_none(
        mlflow_store, cancer_champion, tmp_path):
    """A write slower than ML_PREDICTION_LOG_COMMIT_TIMEOUT_SECONDS (0.3 s): every request
    of the shared append is answered 503 with the per-request text once the timeout
    passes, and when the commit lands later it counts none of them (they were refused)."""
    import threading

    records = _records(cancer_champion.trained, 32)
    app = _app(mlflow_store, cancer_champion.name, tmp_path, log_commit_timeout_seconds=0.3)
    release = threading.Event()

    def slow(log):
        write = log._write

        def stuck(rows):
            release.wait(20)
            return write(rows)

        log._write = stuck

    def mend(log):
        release.set()
        del log._write

    started = time.perf_counter()
    answers, during, after, appends = _burst_while(app, records, slow, mend)
    assert time.perf_counter() - started < 20  # answered by the timeout, not the write
    assert sum(appends) == 32 and len(appends) < 32, appends  # shared appends
    assert [a.status_code for a in answers] == [503] * 32, [a.text for a in answers]
    for answer in answers:
        assert ("the prediction log did not commit this request's 1 rows within 0.3s"
                in answer.text)
    assert during == 0 and after == 0
