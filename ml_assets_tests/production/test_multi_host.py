"""The production profile across hosts, on this machine: Linux network namespaces as
machines joined by a bridge (ml_assets_tests/support/netns.py), each with its own
address and port space.

- the root namespace is the database/broker host: PostgreSQL, Redis and RabbitMQ keep
  listening on 127.0.0.1 only (other tests use them; they are not reconfigured), so a
  small TCP forwarder started by the test publishes them, and the MLflow server, on the
  bridge address; the servers see the forwarder as a local client. The Dagster run
  (`dagster asset materialize`, the celery executor) runs here too;
- `w1`, `w2`: Celery workers (dagster-celery, the production command and celery.yaml),
  reaching PostgreSQL, the broker and MLflow only over the namespace network;
- `api1`, `api2`: `python -m serving`, both writing one PostgreSQL prediction log;
- `lb`: haproxy from Debian's packages in front of the two API hosts.

What it proves: one day of batch_predictions is scored shard by shard on the two worker
hosts; the host running a shard hangs (SIGSTOP) and is then lost mid-run (every process
SIGKILLed, its veth deleted); the broker hands its unacknowledged shard to the other
host (late acknowledgement, ml_assets/execution.py), the run succeeds and the output
holds every input row exactly once. Then a load through the load balancer is answered
by both replicas and every acknowledged row is in the log exactly once.

Needs root (namespaces), the three servers, and haproxy (installed with apt-get when
missing and possible): otherwise it skips with the reason, and fails under CI=true.
Every wait is bounded; the namespaces, the bridge and every process are removed at the
end, also after a failure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets_tests.support import netns
from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.production_stack import (
    ENTRYPOINT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    RABBITMQ_URL,
    REDIS_URL,
    SERVICES,
    ProductionStack,
)
from ml_assets_tests.support.services import require, skip_or_fail, wait_http

MODEL_NAME = "ml_platform_model"
# Eight shards, each big enough that a step outlasts the test's polling by seconds.
ROWS, ROW_GROUP, SHARD_ROWS = 64_000, 8_000, 8_000
API_PORT, LB_PORT, REQUESTS = 8000, 8080, 240


@pytest.fixture(scope="module")
def network() -> Iterator[netns.Network]:
    missing = netns.unavailable()
    if missing:
        skip_or_fail(f"no network namespaces: {missing}")
    require(*SERVICES)
    with netns.Network() as net:
        yield net


@pytest.fixture(scope="module")
def stack(network, tmp_path_factory) -> Iterator[ProductionStack]:
    """The Dagster instance, MLflow server and prediction log of the production profile,
    every address pointing at the database host's bridge address; a champion
    registered."""
    root = tmp_path_factory.mktemp("multi_host")
    hub = network.hub
    rabbit = urlsplit(RABBITMQ_URL)  # CI may name its own user (guest is loopback-only)
    rabbit_host, rabbit_port = rabbit.hostname or "127.0.0.1", rabbit.port or 5672
    user = rabbit.netloc.rpartition("@")[0]
    broker = urlunsplit(rabbit._replace(netloc=f"{user}@{hub}:{rabbit_port}" if user
                                        else f"{hub}:{rabbit_port}"))
    redis = urlsplit(REDIS_URL)
    stack = ProductionStack(root, broker=broker, redis_db=13)
    forwarded = {PG_PORT: (PG_HOST, PG_PORT), rabbit_port: (rabbit_host, rabbit_port),
                 redis.port or 6379: (redis.hostname or "127.0.0.1", redis.port or 6379)}
    stack.extra_env.update({
        "DAGSTER_PG_HOST": hub,
        "MLFLOW_TRACKING_URI": f"http://{hub}:{stack.mlflow_port}",
        "ML_CELERY_BACKEND": f"redis://{hub}:{redis.port or 6379}/13",
        "ML_PREDICTION_LOG_URL": f"postgresql://{PG_USER}@{hub}:{PG_PORT}/"
                                 f"{stack.predictions_db}",
        "ML_BATCH_INPUT_DIR": str(root / "batch_in"),
        "ML_BATCH_OUTPUT_DIR": str(root / "batch_out"),
    })
    try:
        stack.create_databases()
        stack.start_mlflow()
        network.forward({**forwarded, stack.mlflow_port: ("127.0.0.1", stack.mlflow_port)},
                        log=root / "forwarder.log")
        stack.wait_http("mlflow", f"{stack.mlflow_uri}/health")
        _register_champion(stack.mlflow_uri)
        yield stack
    finally:
        # The forwarder stays up until the network fixture closes: the APIs' graceful
        # stop flushes their log, and the stack deletes its queue, through it. The
        # MLflow server has nothing to flush (its store is PostgreSQL, dropped next),
        # and a graceful stop waits up to 30 s for its connections.
        stack.stop("mlflow", signal.SIGKILL)
        stack.close()


def _register_champion(uri: str) -> None:
    import mlflow

    from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        register(train_breast_cancer(n_estimators=20), MODEL_NAME, experiment_id("ml_platform"))
    finally:
        mlflow.set_tracking_uri(previous)


# --- Celery workers on two hosts -------------------------------------------------------


def _start_worker(stack: ProductionStack, host: netns.Host) -> None:
    """The compose worker command (entrypoint, dagster-celery), inside `host`."""
    stack.start(host.role, host.run([
        "/bin/sh", str(ENTRYPOINT), "dagster-celery", "worker", "start",
        "-A", "dagster_celery.app", "-y", str(stack.dagster_home / "celery.yaml"),
        "-n", f"{host.role}-{stack.tag}", "-q", stack.queue, "--", "--concurrency=1"]),
        entrypoint=False)


def _write_day(stack: ProductionStack, day: str) -> set[str]:
    """ROWS breast-cancer rows (resampled) in one Parquet file of ROW_GROUP-row groups;
    the request ids the output must hold."""
    from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame

    frame = load_breast_cancer_frame().drop(columns=BREAST_CANCER_TARGET)
    rows = frame.sample(ROWS, replace=True, random_state=24).reset_index(drop=True)
    folder = Path(stack.extra_env["ML_BATCH_INPUT_DIR"]) / day
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), folder / "day.parquet",
                   row_group_size=ROW_GROUP)
    return {f"batch-{day}-day-{i}" for i in range(1, ROWS + 1)}


def _shard_events(instance, run_id: str) -> dict[str, dict[str, list]]:
    """Per shard step: the Celery workers that took it (in order), and its starts and
    successes."""
    from dagster import DagsterEventType

    steps: dict[str, dict[str, list]] = {}
    for record in instance.all_logs(run_id, of_type={
            DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_START,
            DagsterEventType.STEP_SUCCESS}):
        event = record.dagster_event
        if event is None or not event.step_key or "score_batch_shard" not in event.step_key:
            continue
        seen = steps.setdefault(event.step_key, {"workers": [], "starts": [], "successes": []})
        if event.event_type == DagsterEventType.ENGINE_EVENT:
            metadata = event.engine_event_data.metadata if event.engine_event_data else {}
            if "Celery worker" in metadata:
                seen["workers"].append(str(metadata["Celery worker"].value).split("@")[0])
        elif event.event_type == DagsterEventType.STEP_START:
            seen["starts"].append(record.timestamp)
        else:
            seen["successes"].append(record.timestamp)
    return steps


def _run_id(instance, process: LoggedProcess, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(limit=1)
        if runs:
            return runs[0].run_id
        assert process.running, f"the run exited early:\n{process.log(4000)}"
        time.sleep(0.2)
    raise AssertionError(f"no run after {timeout}s:\n{process.log(4000)}")


def _running_shard(instance, run_id: str, process: LoggedProcess,
                   timeout: float = 240) -> tuple[str, str]:
    """(worker, shard step): a shard step started and not finished, once another shard
    has finished (the run is well under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = _shard_events(instance, run_id)
        if any(s["successes"] for s in steps.values()):
            running = [(s["starts"][-1], s["workers"][-1], k) for k, s in steps.items()
                       if s["starts"] and s["workers"] and not s["successes"]]
            if running:
                _, worker, step = max(running)
                return worker, step
        assert process.running, f"the run ended before a host could be lost:\n" \
            f"{process.log(4000)}"
        time.sleep(0.05)
    raise AssertionError(f"no shard step to interrupt in {timeout}s: "
                         f"{_shard_events(instance, run_id)}")


def _freeze_mid_shard(network: netns.Network, instance, run_id: str, hosts: dict,
                      process: LoggedProcess) -> tuple[netns.Host, str]:
    """The host running a shard, frozen (SIGSTOP) before that shard finished: a shard
    step takes a second or two, so the one seen running may finish before the freeze;
    then the host goes on and the next one is tried. Deterministic where a kill
    timed by polling would race the step's end."""
    for _ in range(20):
        worker, step = _running_shard(instance, run_id, process)
        host = hosts[worker]
        network.signal_host(host, signal.SIGSTOP)
        time.sleep(0.5)  # an event the frozen step had already sent lands
        if not _shard_events(instance, run_id)[step]["successes"]:
            return host, step
        network.signal_host(host, signal.SIGCONT)
    raise AssertionError("every shard finished before its host could be frozen")


def test_a_lost_worker_host_s_shards_are_retried_on_the_other_host(network, stack):
    from ml_assets.core.batch.shards import read_day, read_manifest

    w1, w2 = network.add_host("w1"), network.add_host("w2")
    for host in (w1, w2):
        _start_worker(stack, host)
    stack.wait_workers(["w1", "w2"], timeout=180)
    day = datetime.now(timezone.utc).date().isoformat()
    expected = _write_day(stack, day)

    started = time.monotonic()
    config = {"ops": {"batch_predictions": {"ops": {"plan_batch_shards": {
        "config": {"shard_rows": SHARD_ROWS}}}}}}
    run = stack.start("batch_run", [
        "dagster", "asset", "materialize", "-m", "ml_assets.definitions",
        "--select", "batch_predictions", "--partition", day,
        "--config-json", json.dumps(config)], entrypoint=False)
    instance = stack.instance()
    try:
        run_id = _run_id(instance, run)
        lost, victim = _freeze_mid_shard(network, instance, run_id,
                                         {f"{h.role}-{stack.tag}": h for h in (w1, w2)}, run)
        survivor = w2 if lost is w1 else w1
        lost_wall = time.time()
        killed = network.kill_host(lost)
        lost_at = time.monotonic() - started
        assert killed, f"no process ran in {lost.role}"
        code = run.process.wait(timeout=300)
        elapsed = time.monotonic() - started
        status = instance.get_run_by_id(run_id).status.value
        assert code == 0 and status == "SUCCESS", f"{status}:\n{run.log(6000)}"

        steps = _shard_events(instance, run_id)
        names = {k: [w.rsplit("-", 1)[0] for w in s["workers"]] for k, s in steps.items()}
        assert all(len(s["successes"]) == 1 for s in steps.values()), steps
        # Interrupted: the shard the lost host was running, finished only after the
        # loss, on the survivor.
        interrupted = {k for k, v in names.items() if v == [lost.role, survivor.role]}
        assert interrupted == {victim}, names
        assert all(steps[k]["successes"][0] > lost_wall for k in interrupted), steps
        # Every other shard ran once, on one host (on the lost one only if it finished
        # there before the loss): retried alone.
        others = {k: v for k, v in names.items() if k not in interrupted}
        assert all(len(v) == 1 for v in others.values()), names
        assert all(steps[k]["successes"][0] < lost_wall for k, v in others.items()
                   if v == [lost.role]), steps
        assert len(steps) == ROWS // SHARD_ROWS

        day_dir = Path(stack.extra_env["ML_BATCH_OUTPUT_DIR"]) / day
        manifest = read_manifest(day_dir)
        assert manifest is not None and manifest["rows"] == ROWS
        written = read_day(day_dir)
        ids = written["request_id"]
        assert len(written) == ROWS and ids.is_unique and set(ids) == expected
        print(f"\nmulti-host batch: {ROWS} rows in {len(steps)} shards, "
              f"{lost.role} lost at {lost_at:.1f}s during {victim}, retried on "
              f"{survivor.role}; run "
              f"{elapsed:.1f}s; shards per host "
              f"{dict(Counter(v[-1] for v in names.values()))}")
    finally:
        run.stop(signal.SIGTERM, timeout=30, group=True)
        instance.dispose()
        for name in ("w1", "w2"):
            stack.stop(name, signal.SIGKILL, timeout=10)


# --- two API replicas behind haproxy ---------------------------------------------------


HAPROXY_CFG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend api
    bind {lb}:{lb_port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /ready
    http-response set-header X-Served-By %s
{servers}
"""


def _start_api(stack: ProductionStack, host: netns.Host) -> LoggedProcess:
    """The API image's command inside `host`, on its address, logging to PostgreSQL over
    the namespace network."""
    env = {**stack.env, "ML_API_HOST": host.address, "ML_API_PORT": str(API_PORT),
           "ML_PLATFORM_HOME": str(stack.root / f"home_{host.role}")}
    process = LoggedProcess(host.run([sys.executable, "-m", "serving", "--log-level",
                                      "warning"]), env, stack.root / f"{host.role}.log",
                            cwd=stack.root)
    stack.processes[host.role], stack.logs[host.role] = process, process.log_path
    return process


def _logged(stack: ProductionStack, request_ids: list[str]) -> Counter:
    """(request id, row index) of every logged row of `request_ids`, read through the
    log's own reader (its request-id index), duplicates counted."""
    from ml_assets.core.prediction_log import open_prediction_log

    url = f"postgresql://{PG_USER}@127.0.0.1:{PG_PORT}/{stack.predictions_db}"
    log = open_prediction_log(url, read_only=True)
    try:
        rows = log.read_requests(request_ids, features=False)
    finally:
        log.close()
    return Counter(zip(rows["request_id"], rows["row_index"].astype(int), strict=True))


def test_two_api_replicas_behind_haproxy_log_every_acknowledged_row_once(network, stack):
    from sklearn.datasets import load_breast_cancer

    haproxy = netns.ensure_haproxy()
    if haproxy is None:
        skip_or_fail("haproxy is not installed (Debian: apt-get install haproxy)")
    replicas = [network.add_host("api1"), network.add_host("api2")]
    lb = network.add_host("lb")
    apis = [_start_api(stack, host) for host in replicas]
    for host, api in zip(replicas, apis, strict=True):
        wait_http(f"http://{host.address}:{API_PORT}/ready", api.process, 180,
                  lambda api=api: api.log(4000))
    servers = "\n".join(f"    server {h.role} {h.address}:{API_PORT} check inter 500ms"
                        for h in replicas)
    config = stack.root / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.format(lb=lb.address, lb_port=LB_PORT, servers=servers))
    checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    balancer = LoggedProcess(lb.run([haproxy, "-db", "-f", str(config)]), stack.env,
                             stack.root / "haproxy.log", cwd=stack.root)
    stack.processes["haproxy"], stack.logs["haproxy"] = balancer, balancer.log_path
    url = f"http://{lb.address}:{LB_PORT}"

    frame = load_breast_cancer(as_frame=True).frame.drop(columns="target")
    rows = frame.sample(REQUESTS, replace=True, random_state=7).to_dict(orient="records")
    with httpx.Client(timeout=30) as client:
        # Both servers up in haproxy's health checks: two answers from two replicas.
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        while seen != {"api1", "api2"}:
            assert time.monotonic() < deadline, f"haproxy: {seen}\n{balancer.log(3000)}"
            try:
                seen.add(client.get(f"{url}/ready").headers.get("x-served-by", ""))
            except httpx.TransportError:
                pass
            seen.discard("")
            time.sleep(0.2)

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda row: client.post(f"{url}/predict", json=row), rows))
        elapsed = time.monotonic() - started

    acknowledged = [a for a in answers if a.status_code == 200]
    assert len(acknowledged) == REQUESTS, Counter(a.status_code for a in answers)
    by_replica = Counter(a.headers["x-served-by"] for a in acknowledged)
    assert set(by_replica) == {"api1", "api2"} and min(by_replica.values()) > REQUESTS // 4, \
        by_replica
    ids = [a.headers["x-request-id"] for a in acknowledged]
    assert len(set(ids)) == REQUESTS
    # A 200 means the row is committed: read at once, with the replicas still running.
    logged = _logged(stack, ids)
    assert set(logged) == {(i, 0) for i in ids}, len(logged)
    assert set(logged.values()) == {1}, [k for k, n in logged.items() if n > 1][:5]
    print(f"\nmulti-host API: {REQUESTS} requests through haproxy in {elapsed:.1f}s, "
          f"per replica {dict(by_replica)}, {sum(logged.values())} rows logged once each")
