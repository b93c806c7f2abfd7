"""The production profile, for real: PostgreSQL-backed Dagster (docker/dagster.yaml),
runs queued and started by the daemon through a gRPC code server, steps executed by two
Celery workers over RabbitMQ (results in Redis), an `mlflow server` with a PostgreSQL
backend store and served artifacts, the prediction API loading the champion from that
server and logging to PostgreSQL, and sensor ticks stored in PostgreSQL.

Everything is started by the fixture from the same entrypoint and commands the
containers use (ml_assets_tests/support/production_stack.py). The servers must be on 127.0.0.1:
without them these tests skip on a developer machine and fail under CI=true.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import pytest

from ml_assets_tests.support.production_stack import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    SERVICES,
    ProductionStack,
)
from ml_assets_tests.support.services import require

TRAINING_ASSETS = ["raw_data", "validated_data", "data_split", "feature_preprocessor",
                   "trained_model", "model_metrics", "registered_model", "champion_comparison",
                   "champion_model", "reference_profile"]
MODEL_NAME = "ml_platform_model"
WORKERS = ["w1", "w2"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[ProductionStack]:
    require(*SERVICES)
    stack = ProductionStack(tmp_path_factory.mktemp("production"))
    try:
        stack.create_databases()
        stack.start_mlflow()
        stack.start_code_server()
        for name in WORKERS:
            stack.start_worker(name, concurrency=1)
        stack.wait_http("mlflow", f"{stack.mlflow_uri}/health")
        stack.wait_code_server()
        stack.start_daemon()
        # Nothing may train behind the tests' back and race the registry assertions: a
        # drift verdict on the API's few rows, or a schedule coming due mid-test.
        # Retraining on drift is covered by test_loop_e2e.py.
        stack.toggle("sensor", "stop", "retrain_on_drift")
        stack.toggle("schedule", "stop", "weekly_retrain")
        stack.toggle("schedule", "stop", "daily_drift_scoring")
        stack.wait_workers(WORKERS)
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def instance(stack):
    instance = stack.instance()
    yield instance
    instance.dispose()


@pytest.fixture(scope="module")
def first_run(stack, instance) -> str:
    run_id = stack.launch("train_model")
    status = stack.wait_run(instance, run_id, timeout=300)
    assert status == "SUCCESS", _run_failure(instance, run_id)
    return run_id


def _run_failure(instance, run_id: str) -> str:
    """The run's failure messages with their errors (step, engine and run failures)."""
    from dagster import DagsterEventType

    records = instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE,
                                                 DagsterEventType.RUN_FAILURE,
                                                 DagsterEventType.ENGINE_EVENT})
    lines = []
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        error = getattr(event.event_specific_data, "error", None)
        lines.append(f"{event.message}" + (f"\n{error.to_string()}" if error else ""))
    return "\n".join(lines[-12:])


def _celery_steps(instance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker that executed it (from the workers' engine events)."""
    from dagster import DagsterEventType

    steps = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "Celery worker" in metadata and event and event.step_key:
            steps[event.step_key] = str(metadata["Celery worker"].value)
    return steps


def _client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)


def test_training_graph_runs_on_celery_workers_with_postgres_storage(stack, instance,
                                                                      first_run):
    from dagster import AssetKey
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    run = instance.get_run_by_id(first_run)
    assert run.job_name == "train_model"
    # Queued by `dagster job launch`, taken off the queue by the daemon.
    from dagster import DagsterEventType

    lifecycle = [r.dagster_event_type for r in instance.all_logs(
        first_run, of_type={DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING,
                            DagsterEventType.RUN_SUCCESS})]
    assert lifecycle == [DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING,
                         DagsterEventType.RUN_SUCCESS]
    executed = _celery_steps(instance, first_run)
    assert set(TRAINING_ASSETS) <= set(executed), executed
    hosts = {name.split("@")[0] for name in executed.values()}
    assert hosts <= {f"{w}-{stack.tag}" for w in WORKERS}, hosts
    for key in TRAINING_ASSETS:
        event = instance.get_latest_materialization_event(AssetKey(key))
        assert event is not None and event.run_id == first_run, key


def test_tracking_server_holds_the_run_and_the_registry(stack, first_run):
    client = _client(stack)
    experiment = client.get_experiment_by_name("ml_platform")
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.dagster_run_id = '{first_run}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["test_accuracy"] > 0.9
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert len(versions) == 1
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.version == versions[0].version == "1"
    # The artifacts went to the server's store (served over HTTP), not a local path.
    assert list((stack.root / "mlartifacts").rglob("MLmodel"))


@pytest.fixture(scope="module")
def served(stack, first_run) -> dict:
    """The API image's command against the tracking server: the model it loaded, and
    the prediction-log rows in PostgreSQL after its graceful stop."""
    from sklearn.datasets import load_breast_cancer

    with stack.api(ML_API_POLL_SECONDS="2") as api:
        url = api.url
        model = httpx.get(f"{url}/model", timeout=10).json()
        frame = load_breast_cancer(as_frame=True).frame.drop(columns="target")
        rows = frame.head(20).to_dict(orient="records")
        responses = [httpx.post(f"{url}/predict", json=row, timeout=30) for row in rows[:5]]
        responses.append(httpx.post(f"{url}/predict/batch", json={"records": rows},
                                    timeout=30))
        api.stop(timeout=60)  # SIGTERM, graceful: flushes the log
    from ml_assets.core.prediction_log import PostgresPredictionLog

    with PostgresPredictionLog(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/"
                               f"{stack.predictions_db}", read_only=True) as log:
        days = log.days()  # today's, or two across midnight UTC
        frames = [log.read_day(day) for day in days]
    logged = (sum(len(f) for f in frames),
              len({v for f in frames for v in f["model_version"]}))
    return {"model": model, "responses": responses, "logged": logged}


def test_api_serves_the_champion_from_the_tracking_server(served):
    assert str(served["model"].get("version")) == "1", served["model"]
    for response in served["responses"]:
        assert response.status_code == 200, response.text
    assert all(r.json()["prediction"] in ("malignant", "benign")
               for r in served["responses"][:5])
    assert len(served["responses"][-1].json()["predictions"]) == 20
    assert served["logged"] == (25, 1)  # every row, in PostgreSQL


def test_killed_worker_fails_the_step_cleanly_and_reexecution_completes(stack, instance,
                                                                       first_run):
    """SIGKILL the pool process running `trained_model` (what the kernel's OOM killer
    does): the step fails with WorkerLostError, the run fails cleanly, and
    `ml-platform reexecute` finishes it from the failure, registering exactly one new
    version."""
    from dagster import DagsterEventType

    # n_jobs=1 and 25 CV folds keep the step busy for seconds; the final model and its
    # held-out metrics do not depend on them, so the retrained model would tie the
    # champion, and a tie is no significant gain: the alias is cleared first, so the
    # run ends by promoting without a comparison, as a first model does.
    config = {"ops": {"trained_model": {"config": {"n_jobs": 1, "cv_folds": 25}}}}
    _client(stack).delete_registered_model_alias(MODEL_NAME, "champion")
    run_id = stack.launch("train_model", run_config=config, tags={"test": "worker-kill"})
    victim = _wait_for_step(stack, instance, run_id, "trained_model")
    worker = next(w for w in WORKERS if victim.startswith(f"{w}-"))
    pool = stack.worker_pool_pids(worker)
    assert pool, f"no pool process under {worker}"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)

    assert stack.wait_run(instance, run_id, timeout=180) == "FAILURE"
    failure = _run_failure(instance, run_id)
    assert "WorkerLostError" in failure or "exited prematurely" in failure, failure
    successes = {r.step_key for r in instance.all_logs(
        run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert "data_split" in successes and "trained_model" not in successes
    stack.wait_workers(WORKERS)  # the worker replaced its pool process

    client = _client(stack)
    before = client.search_model_versions(f"name = '{MODEL_NAME}'")
    done = subprocess.run(["ml-platform", "reexecute", run_id], env=stack.env,
                          cwd=stack.root, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reexecution = [r for r in instance.get_runs()
                   if r.tags.get("ml/reexecution_of") == run_id]
    assert len(reexecution) == 1 and reexecution[0].status.value == "SUCCESS"
    new_run = reexecution[0]
    assert new_run.parent_run_id == run_id
    executed = set(_celery_steps(instance, new_run.run_id))
    assert "trained_model" in executed and "raw_data" not in executed, executed

    after = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert len(after) == len(before) + 1, [v.version for v in after]
    assert len({v.run_id for v in after}) == len(after)  # one version per trained model
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert int(champion.version) == max(int(v.version) for v in after)


def _wait_for_step(stack, instance, run_id: str, step: str, timeout: float = 240) -> str:
    """The worker running `step` of `run_id`, once the step has started there."""
    from dagster import DagsterEventType

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker = _celery_steps(instance, run_id).get(step)
        started = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
        if worker and any(r.step_key == step for r in started):
            return worker
        if instance.get_run_by_id(run_id).status.value in ("SUCCESS", "FAILURE"):
            pytest.fail(f"run finished before {step} could be interrupted")
        time.sleep(0.2)
    raise AssertionError(f"{step} never started")


def test_lost_worker_step_is_retried_on_the_other_worker(stack, instance, first_run):
    """SIGKILL a whole worker (its process group: what losing the container or host
    does) in the middle of `trained_model`: the task was not acknowledged yet, so the
    broker hands it to the other worker, the step runs again there and the run
    succeeds, registering exactly one new version."""
    from dagster import DagsterEventType

    # As above: the retrained model would tie the champion; with the alias cleared the
    # run ends by promoting without a comparison.
    config = {"ops": {"trained_model": {"config": {"n_jobs": 1, "cv_folds": 25}}}}
    client = _client(stack)
    client.delete_registered_model_alias(MODEL_NAME, "champion")
    before = client.search_model_versions(f"name = '{MODEL_NAME}'")
    run_id = stack.launch("train_model", run_config=config, tags={"test": "worker-lost"})
    victim = _wait_for_step(stack, instance, run_id, "trained_model")
    lost = next(w for w in WORKERS if victim.startswith(f"{w}-"))
    survivor = next(w for w in WORKERS if w != lost)
    stack.stop(lost, signal.SIGKILL)
    try:
        assert stack.wait_run(instance, run_id, timeout=300) == "SUCCESS", \
            _run_failure(instance, run_id)
        starts = [r for r in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
                  if r.step_key == "trained_model"]
        assert len(starts) == 2  # the lost attempt and the retry
        assert _celery_steps(instance, run_id)["trained_model"].startswith(f"{survivor}-")
        after = client.search_model_versions(f"name = '{MODEL_NAME}'")
        assert len(after) == len(before) + 1, [v.version for v in after]
        assert len({v.run_id for v in after}) == len(after)
    finally:
        stack.start_worker(lost, concurrency=1)
        stack.wait_workers(WORKERS)


def _sensor_ticks(instance) -> dict[str, list]:
    from dagster._core.scheduler.instigation import InstigatorType

    ticks = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        found = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
        if found:
            ticks[state.instigator_name] = found
    return ticks


def test_sensors_tick_in_postgres_and_launch_drift_scoring_on_the_workers(stack, instance,
                                                                           served):
    """The daemon's production_data_sensor sees the API's predictions in the PostgreSQL
    log and requests today's partition; the automation sensor then scores its drift; both
    runs execute on the Celery workers, and every tick is stored in PostgreSQL."""
    import psycopg2
    from dagster import AssetKey

    today = datetime.now(timezone.utc).date().isoformat()
    deadline = time.monotonic() + 200
    requested: list[str] = []
    while time.monotonic() < deadline and not requested:
        ticks = _sensor_ticks(instance).get("production_data_sensor", [])
        requested = [run_id for tick in ticks for run_id in tick.run_ids]
        time.sleep(1)
    assert requested, {name: [t.status.value for t in ticks]
                       for name, ticks in _sensor_ticks(instance).items()}
    run = instance.get_run_by_id(requested[0])
    assert run.tags["dagster/partition"] == today
    assert stack.wait_run(instance, run.run_id, timeout=240) == "SUCCESS"
    assert "production_data" in _celery_steps(instance, run.run_id)

    deadline = time.monotonic() + 240
    scored = None
    while time.monotonic() < deadline and scored is None:
        scored = instance.get_latest_materialization_event(AssetKey("drift_scores"))
        if scored is not None and scored.dagster_event.partition != today:
            scored = None
        time.sleep(1)
    assert scored is not None, "drift_scores was not materialized for today"
    assert "drift_scores" in _celery_steps(instance, scored.run_id)

    ticks = _sensor_ticks(instance)
    assert "production_data_sensor" in ticks and "alert_on_run_failure" in ticks, set(ticks)
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=stack.dagster_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM job_ticks")
            (rows,) = cur.fetchone()
    finally:
        conn.close()
    assert rows >= sum(len(t) for t in ticks.values())
