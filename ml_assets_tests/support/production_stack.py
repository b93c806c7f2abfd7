"""The production profile on this machine, started from the same files the containers
use: docker/dagster.yaml (PostgreSQL storage, queued run coordinator), the code image's
entrypoint (which writes workspace.yaml and celery.yaml), and the compose commands of
the MLflow server, the code server, the daemon and the Celery workers.

Used by the production integration tests and by benchmarks/bench_celery.py. Every
process talks only to 127.0.0.1; every wait is bounded. Each stack gets its own
PostgreSQL databases (Dagster, MLflow, prediction log) and its own Celery queue, and
removes them when it closes; task results go to a Redis database chosen by the caller
(Celery expires them after a day).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ml_assets_tests.support.api_process import ApiProcess, api_process
from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.services import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint-code.sh"
INSTANCE_YAML = ROOT / "docker" / "dagster.yaml"
VENV_BIN = Path(sys.executable).parent
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_URL = "redis://127.0.0.1:6379"
# guest/guest is RabbitMQ's loopback-only default; CI services set their own user.
RABBITMQ_URL = os.environ.get("ML_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


SERVICES = ((PG_HOST, PG_PORT, "PostgreSQL"), ("127.0.0.1", 6379, "Redis"),
            ("127.0.0.1", 5672, "RabbitMQ"))


def pg_url(database: str, driver: str = "postgresql+psycopg2") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                            connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def direct_children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class ProductionStack:
    root: Path
    broker: str = RABBITMQ_URL
    redis_db: int = 12
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    processes: dict[str, LoggedProcess] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # wins over the defaults

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.dagster_home = self.root / "dagster_home"
        self.dagster_home.mkdir(exist_ok=True)
        shutil.copy(INSTANCE_YAML, self.dagster_home / "dagster.yaml")
        self.queue = f"ml-test-{self.tag}"
        self.dagster_db, self.mlflow_db, self.predictions_db = (
            f"ml_{role}_{self.tag}" for role in ("dagster", "mlflow", "predictions"))
        self.mlflow_port, self.code_port = free_port(), free_port()
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.platform_home = self.root / "ml_platform"
        self.platform_home.mkdir(exist_ok=True)

    # --- environment ---------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """What compose gives every Dagster container, pointed at this machine."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("ML_", "DAGSTER_", "MLFLOW_", "CELERY_"))}
        return {
            **base,
            "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT),
            "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": self.dagster_db, "DAGSTER_MAX_CONCURRENT_RUNS": "4",
            "DAGSTER_CODE_HOST": "127.0.0.1", "DAGSTER_CODE_PORT": str(self.code_port),
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "ML_MLFLOW_ARTIFACT_LOCATION": "mlflow-artifacts:/ml_platform",
            "ML_PLATFORM_HOME": str(self.platform_home),
            "ML_PREDICTION_LOG_URL": pg_url(self.predictions_db, "postgresql"),
            "ML_EXECUTOR": "celery",
            "ML_CELERY_BROKER": self.broker,
            "ML_CELERY_BACKEND": f"{REDIS_URL}/{self.redis_db}",
            "ML_CELERY_QUEUE": self.queue,
            **self.extra_env,
        }

    # --- processes -----------------------------------------------------------------------

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              entrypoint: bool = True) -> LoggedProcess:
        command = ["/bin/sh", str(ENTRYPOINT), *argv] if entrypoint else argv
        process = LoggedProcess(command, env or self.env, self.root / f"{name}.log",
                                cwd=self.root)
        self.processes[name], self.logs[name] = process, process.log_path
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        text = self.logs[name].read_text(errors="replace") if name in self.logs else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal the process group of `name` (its children too, even when the leader
        already exited), then SIGKILL whatever is left after `timeout`."""
        process = self.processes.pop(name, None)
        if process is not None:
            process.stop(sig, timeout, group=True)

    def api(self, **env: str) -> contextlib.AbstractContextManager[ApiProcess]:
        """The API image's command (`python -m serving`) on 127.0.0.1 and a free port,
        with the environment compose gives it here (this stack's tracking server, its
        PostgreSQL prediction log), ready for the block and stopped after it."""
        return api_process({"ML_API_HOST": "127.0.0.1", **env}, self.root,
                           environ=self.env, ready_timeout=120)

    def create_databases(self) -> None:
        for db in (self.dagster_db, self.mlflow_db, self.predictions_db):
            _admin(f'CREATE DATABASE "{db}"')
            self.databases.append(db)

    def start_mlflow(self) -> None:
        """`mlflow server` with a PostgreSQL backend store and served artifacts."""
        self.start("mlflow", [
            "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
            "--workers", "1", "--backend-store-uri", pg_url(self.mlflow_db),
            "--serve-artifacts", "--artifacts-destination", str(self.root / "mlartifacts")],
            entrypoint=False)

    def start_code_server(self) -> None:
        self.start("code_server", [
            "dagster", "code-server", "start", "-h", "127.0.0.1", "-p", str(self.code_port),
            "-m", "ml_assets.definitions", "--location-name", "ml_assets"])

    def start_daemon(self) -> None:
        self.start("daemon", ["dagster-daemon", "run", "-w",
                              str(self.dagster_home / "workspace.yaml")])

    def start_worker(self, name: str, concurrency: int = 1) -> None:
        """A worker as compose starts it (`-n` gets @host appended by dagster-celery)."""
        self.start(name, [
            "dagster-celery", "worker", "start", "-A", "dagster_celery.app",
            "-y", str(self.dagster_home / "celery.yaml"), "-n", f"{name}-{self.tag}",
            "-q", self.queue, "--", f"--concurrency={concurrency}"])

    def worker_pool_pids(self, name: str) -> list[int]:
        """The pool processes of worker `name`: they execute the steps
        (dagster-celery -> `celery worker` -> pool processes)."""
        mains = direct_children(self.processes[name].pid)
        return [pid for main in mains for pid in direct_children(main)]

    # --- readiness -----------------------------------------------------------------------

    def wait_http(self, name: str, url: str, timeout: float = 120) -> None:
        process = self.processes.get(name)
        wait_http(url, process.process if process else None, timeout,
                  lambda: self.log_tail(name))

    def wait_code_server(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.processes["code_server"].running:
                raise AssertionError(f"code server exited:\n{self.log_tail('code_server')}")
            probe = subprocess.run(
                ["dagster", "api", "grpc-health-check", "-p", str(self.code_port)],
                env=self.env, capture_output=True, timeout=30)
            if probe.returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"code server not healthy:\n{self.log_tail('code_server')}")

    def wait_workers(self, names: list[str], timeout: float = 120) -> None:
        """Until every named worker answers a ping over the broker."""
        from celery import Celery

        app = Celery(broker=self.broker, backend=f"{REDIS_URL}/{self.redis_db}")
        wanted = {f"{n}-{self.tag}@{socket.gethostname()}" for n in names}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for n in names:
                    if not self.processes[n].running:
                        raise AssertionError(f"{n} exited:\n{self.log_tail(n)}")
                replies = app.control.ping(timeout=1.0) or []
                if wanted <= {name for reply in replies for name in reply}:
                    return
            raise AssertionError(f"workers {names} did not answer a ping in {timeout}s")
        finally:
            app.close()

    # --- Dagster -------------------------------------------------------------------------

    def instance(self):
        """A DagsterInstance on the stack's PostgreSQL storage (for the observer)."""
        from dagster import DagsterInstance

        home = self.root / "observer_home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(
            "storage:\n  postgres:\n    postgres_url: " + pg_url(self.dagster_db) +
            "\ntelemetry:\n  enabled: false\n")
        return DagsterInstance.from_config(str(home))

    def launch(self, job: str, run_config: dict | None = None,
               tags: dict[str, str] | None = None) -> str:
        """Submit a run the way the UI does: queued, started by the daemon through the
        code server, its steps executed by the Celery workers."""
        import json

        run_id = str(uuid.uuid4())
        argv = ["dagster", "job", "launch", "-w", str(self.dagster_home / "workspace.yaml"),
                "-l", "ml_assets", "-j", job, "--run-id", run_id]
        if run_config:
            argv += ["--config-json", json.dumps(run_config)]
        if tags:
            argv += ["--tags", json.dumps(tags)]
        done = subprocess.run(argv, env=self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return run_id

    def toggle(self, kind: str, action: str, name: str) -> None:
        """`dagster sensor|schedule start|stop <name>` against the stack's code location."""
        done = subprocess.run(["dagster", kind, action, "-w",
                               str(self.dagster_home / "workspace.yaml"), "-l", "ml_assets",
                               name], env=self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def wait_run(self, instance, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status.value in TERMINAL:
                return run.status.value
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} not finished after {timeout}s; daemon log:\n"
                             f"{self.log_tail('daemon')}")

    # --- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        for name in list(self.processes)[::-1]:
            try:
                self.stop(name)
            except Exception:  # noqa: BLE001 - keep tearing down the rest
                pass
        self._delete_queue()
        for db in self.databases:
            try:
                _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            except Exception:  # noqa: BLE001 - best effort; a later run drops leftovers
                pass
        self.databases.clear()

    def _delete_queue(self) -> None:
        if not self.broker.startswith("amqp"):
            return
        try:
            from kombu import Connection

            with Connection(self.broker, connect_timeout=5) as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:  # noqa: BLE001 - the queue may never have been declared
            pass
