"""Several uvicorn worker processes on one port (`python -m serving --workers N`,
ML_API_WORKERS=N > 1), kept consistent with each other.

The supervisor (`run_workers`, the `python -m serving` process) creates a fresh private
directory (`SharedDir`), exports it as PROMETHEUS_MULTIPROC_DIR and runs uvicorn's
multiprocess supervisor on the import string `serving.workers:create_worker_app`: each
worker is a spawned interpreter that builds its own app from the environment (its own
model copy, micro-batcher and prediction-log connection). The directory holds:

- prometheus-client's per-process value files (`*.db`): /metrics, on whichever worker
  answers it, merges them (serving/metrics.py); the supervisor marks a worker dead
  when it exits, so its live gauges go;
- `reload.generation`: written (atomically) when a worker swaps to a new version on
  its own (poll) or answers 200 to POST /admin/reload; every other worker reads it
  every SYNC_SECONDS and refreshes its store. A follow that does not end serving the
  generation's version (a load that failed, the registry down) is retried with backoff
  (RETRY_BACKOFF) until it does or a newer generation arrives;
- `reload.force`: the same, written only by POST /admin/reload?force=true (before the
  generation), so that a poll's bump that overwrites the generation within
  SYNC_SECONDS does not lose the force flag;
- `worker-<pid>.json`: each worker's prediction-log state, "serving" once its log is
  open, "closed" with its lost and spilled rows at shutdown. The supervisor turns
  them into the exit status: 1 when rows were lost, or when a worker ended without
  closing its log (the rows it held in memory are unaccounted for), as with one process;
- `supervisor.pid`: a worker whose supervisor is gone shuts itself down (no orphans).

The directory is removed when the supervisor exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ml_assets.core.prediction_log import PredictionLog
    from serving.model_store import ModelStore, ServedModel
    from serving.service import Service
    from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
APP_FACTORY = "serving.workers:create_worker_app"
SYNC_SECONDS = 0.5  # how often a worker looks at the generation file (and samples gauges)
# A follow that did not end serving the generation's version is tried again after
# these delays (then every 30 s) until it does or a newer generation arrives.
RETRY_BACKOFF = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
GENERATION = "reload.generation"
FORCED = "reload.force"  # the last forced generation (its own slot: never overwritten
# by a poll's bump)
SUPERVISOR = "supervisor.pid"
GRACEFUL_SECONDS = 30  # uvicorn's timeout_graceful_shutdown, as with one process
_TRUE = ("1", "true", "yes", "on")

# Why the store is swapping now: None for the poller (other workers are told),
# "startup", "follow" (told by another worker) and "reload" (the reload's answer tells
# them, with its force flag): those do not tell anyone.
_ORIGIN: contextvars.ContextVar[str | None] = contextvars.ContextVar("ml_api_swap_origin",
                                                                      default=None)


@contextlib.contextmanager
def swap_origin(origin: str) -> Iterator[None]:
    """Swaps started in this block (threads started from it inherit the context) do not
    write the generation file."""
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


class SharedDir:
    """The directory the supervisor and its workers share (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls) -> SharedDir:
        """A fresh private (0700) directory for one start of the supervisor."""
        shared = cls(tempfile.mkdtemp(prefix="ml-api-workers-"))
        shared._write(SUPERVISOR, {"pid": os.getpid()})
        return shared

    @classmethod
    def from_env(cls) -> SharedDir | None:
        raw = os.environ.get(MULTIPROC_ENV, "").strip()
        return cls(raw) if raw else None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _write(self, name: str, payload: dict) -> None:
        """Atomically: readers see the old content or the new, never a part."""
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(json.dumps(payload).encode())
        os.replace(tmp, self.path / name)

    def _read(self, name: str) -> dict | None:
        try:
            value = json.loads((self.path / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def supervisor_pid(self) -> int | None:
        found = self._read(SUPERVISOR)
        return int(found["pid"]) if found and "pid" in found else None

    def bump(self, version: str, force: bool = False) -> None:
        """Tell every other worker to refresh (they skip it when they already serve
        `version`, unless `force`). A forced bump is also written to its own file,
        first, so that a later bump (a poll's swap) cannot erase the force flag."""
        now = time.time_ns()
        payload = {"token": f"{os.getpid()}-{now}", "pid": os.getpid(), "version": version,
                   "force": force, "ns": now}
        if force:
            self._write(FORCED, payload)
        self._write(GENERATION, payload)

    def generation(self) -> dict | None:
        return self._read(GENERATION)

    def forced(self) -> dict | None:
        """The last forced generation (also the generation until a later bump)."""
        return self._read(FORCED)

    def report(self, pid: int, **state: Any) -> None:
        self._write(f"worker-{pid}.json", {"pid": pid, **state})

    def read_report(self, pid: int) -> dict | None:
        return self._read(f"worker-{pid}.json")


@dataclass
class Target:
    """A generation another worker wrote, that this worker follows (until it serves
    `version`, or a newer generation replaces it)."""

    version: str
    pid: Any
    force: bool
    attempts: int = 0  # refreshes that did not end serving `version`


class WorkerSync:
    """One worker's side: passes its swaps on, follows the others', samples the gauges
    that multiprocess mode cannot read from functions, reports its prediction log's
    state, and shuts down if its supervisor is gone. `clock`: monotonic seconds (the
    retry backoff; injectable for tests)."""

    def __init__(self, shared: SharedDir, interval: float = SYNC_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.shared = shared
        self.interval = interval
        self.clock = clock
        self.pid = os.getpid()
        # Generations written before this worker started are not its business: it
        # loads the champion itself at start-up.
        self._token = _token(shared.generation())
        self._force_token = _token(shared.forced())
        self._pending: Target | None = None  # a follow to retry at _retry_at
        self._retry_at = 0.0
        self._supervisor = shared.supervisor_pid()
        self._orphaned = False
        self.followed = 0  # refreshes made because another worker said so

    # -- telling ---------------------------------------------------------------------
    def on_swap(self, model: ServedModel) -> None:
        """ModelStore's on_swap: a swap this worker found on its own (its poller) is
        passed on at once instead of waiting for every other worker's next poll."""
        if _ORIGIN.get() is None:
            self._bump(model.version, False)

    def reloaded(self, store: ModelStore, force: bool) -> None:
        """POST /admin/reload answered 200 here: the others follow (forced if it was)."""
        current = store.current
        if current is not None:
            self._bump(current.version, force)

    def _bump(self, version: str, force: bool) -> None:
        try:
            self.shared.bump(version, force)
        except OSError as exc:  # the swap stands; the others find it at their next poll
            logger.error("worker %d: cannot tell the other workers about version %s: %s",
                         self.pid, version, exc)

    # -- following -------------------------------------------------------------------
    async def run(self, service: Service) -> None:
        """Every `interval`: sample gauges, check the supervisor, follow a generation."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                service.metrics.sample()
                self._check_supervisor()
                await self.follow(service.store)
            except Exception:  # noqa: BLE001 - the loop must survive anything
                logger.exception("worker %d: following the other workers failed", self.pid)

    async def follow(self, store: ModelStore) -> dict | None:
        """Refresh `store` if another worker wrote a generation this one has not seen,
        or retry one that did not end serving its version once its backoff is over;
        the refresh's result, or None when there was nothing to do."""
        target = self._new_target()
        if target is None:
            target = self._pending
            if target is None or self.clock() < self._retry_at:
                return None
        self._pending = None
        current = store.current
        if (not target.force and current is not None
                and current.version == target.version):
            return None  # already serves it (its own poll may have got there first)
        try:
            with swap_origin("follow"):
                result = await asyncio.to_thread(store.refresh, target.force, True)
        except Exception as exc:  # noqa: BLE001 - retried like any failed follow
            result = {"status": "error", "detail": f"{type(exc).__name__}: {exc}",
                      "serving_version": current.version if current else None}
        self.followed += 1
        status, served = result.get("status"), result.get("serving_version")
        forced = ", forced" if target.force else ""
        if status in ("swapped", "unchanged") and served == target.version:
            logger.info("worker %d followed worker %s (version %s%s): %s%s", self.pid,
                        target.pid, target.version, forced, status,
                        f" after {target.attempts + 1} attempts" if target.attempts else "")
            return result
        target.attempts += 1
        delay = RETRY_BACKOFF[min(target.attempts, len(RETRY_BACKOFF)) - 1]
        self._pending, self._retry_at = target, self.clock() + delay
        reason = result.get("detail") or (
            f"the alias names version {served}" if status in ("swapped", "unchanged")
            else "no detail")
        logger.warning("worker %d: following worker %s to version %s%s failed (attempt "
                       "%d, %s: %s); serving version %s, trying again in %g s", self.pid,
                       target.pid, target.version, forced, target.attempts, status,
                       reason, served, delay)
        return result

    def _new_target(self) -> Target | None:
        """The generation (and forced generation) written by other workers since the
        last look, as one target: the latest version, forced if either bump was."""
        found, forced = self.shared.generation(), self.shared.forced()
        fresh = []
        if found is not None and _token(found) != self._token:
            self._token = _token(found)
            fresh.append(found)
        if forced is not None and _token(forced) != self._force_token:
            self._force_token = _token(forced)
            fresh.append(forced)
        if fresh:  # a newer generation replaces the one being retried (even this
            self._pending = None  # worker's own: it serves what it just told)
        fresh = [bump for bump in fresh if bump.get("pid") != self.pid]
        if not fresh:
            return None
        latest = max(fresh, key=lambda bump: int(bump.get("ns") or 0))
        return Target(version=str(latest.get("version")), pid=latest.get("pid"),
                      force=any(bool(bump.get("force")) for bump in fresh))

    def _check_supervisor(self) -> None:
        if (self._supervisor is not None and not self._orphaned
                and os.getppid() != self._supervisor):
            self._orphaned = True
            logger.error("worker %d: the supervisor (pid %d) is gone; shutting down",
                         self.pid, self._supervisor)
            signal.raise_signal(signal.SIGTERM)  # uvicorn's graceful shutdown

    # -- the prediction log's state, for the supervisor's exit status -----------------
    def log_opened(self) -> None:
        self._report(state="serving")

    def log_closed(self, log: PredictionLog, lost: int) -> None:
        self._report(state="closed", lost_rows=lost, spilled_rows=log.spilled_rows,
                     spilled_to=[str(p) for p in log.spilled_to])

    def _report(self, **state: Any) -> None:
        try:
            self.shared.report(self.pid, **state)
        except OSError as exc:  # then the supervisor reports this worker as unclosed
            logger.error("worker %d: cannot record its prediction log's state (%s) in "
                         "%s: %s", self.pid, state, self.shared.path, exc)


class WorkerHeaders:
    """ASGI middleware (worker processes only): X-Worker-Pid on every answer, and a 200
    from POST /admin/reload passed on to the other workers before it goes out."""

    def __init__(self, app, sync: WorkerSync, store: ModelStore):
        self.app, self.sync, self.store = app, sync, store
        self.header = (b"x-worker-pid", str(sync.pid).encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reload = (scope["method"] == "POST"
                  and scope["path"].rstrip("/") == "/admin/reload")

        async def send_with_pid(message) -> None:
            if message["type"] == "http.response.start":
                if reload and message["status"] == 200:
                    self.sync.reloaded(self.store, _force(scope))
                message = {**message,
                           "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        if not reload:
            await self.app(scope, receive, send_with_pid)
            return
        with swap_origin("reload"):
            await self.app(scope, receive, send_with_pid)


def _token(found: dict | None) -> Any:
    return found.get("token") if found else None


def _force(scope) -> bool:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("force", [])
    return bool(values) and values[-1].strip().lower() in _TRUE


def create_worker_app() -> FastAPI:
    """uvicorn's app factory in each worker process: settings from the environment the
    supervisor exported, metrics and reloads shared through PROMETHEUS_MULTIPROC_DIR."""
    from serving.app import create_app
    from serving.settings import ServingSettings

    shared = SharedDir.from_env()
    if shared is None:
        raise RuntimeError(f"{APP_FACTORY} runs under `python -m serving --workers N`, "
                           f"which sets {MULTIPROC_ENV}")
    sys.setswitchinterval(0.001)  # as in the one-process service (serving/__main__.py)
    return create_app(ServingSettings.from_env(), shared_dir=shared.path)


# -- the supervisor ----------------------------------------------------------------------

@dataclass
class Outcome:
    """What the workers' reports say once every worker has exited."""

    exits: dict[int, int | None] = field(default_factory=dict)  # pid -> exit code
    lost_rows: int = 0
    spilled_rows: int = 0
    unclosed: list[int] = field(default_factory=list)  # died with their log open
    startup_failed: list[int] = field(default_factory=list)

    def exit_code(self) -> int:
        """3 (uvicorn's start-up failure) when a worker could not start, 1 when rows
        were lost or may have been, else 0; the reason is printed to stderr."""
        if self.startup_failed:
            print(f"error: worker(s) {_pids(self.startup_failed)} failed to start (see the "
                  "log above)", file=sys.stderr)
            return STARTUP_FAILURE
        code = 0
        if self.lost_rows:
            print(f"error: {self.lost_rows} prediction-log rows were neither stored nor "
                  "spilled (see the log above)", file=sys.stderr)
            code = 1
        if self.unclosed:
            print(f"error: worker(s) {_pids(self.unclosed)} exited without closing the "
                  "prediction log: rows they had accepted but not stored are lost (in "
                  "commit mode none of them was answered 200)", file=sys.stderr)
            code = 1
        return code


def _pids(pids: list[int]) -> str:
    return ", ".join(map(str, pids))


class Supervisor(Multiprocess):
    """uvicorn's multiprocess supervisor (signals, restarting dead workers, SIGHUP,
    SIGTTIN/SIGTTOU), plus: every worker that exits is marked dead for the metrics and
    its exit code kept for `outcome()`."""

    def __init__(self, config: uvicorn.Config, sockets: list, shared: SharedDir):
        super().__init__(config, sockets)
        self.shared = shared
        self._known: list[Process] = []  # started, not yet seen to exit
        self.exits: list[tuple[int, int | None]] = []  # (pid, exit code) of every worker

    def init_processes(self) -> None:
        super().init_processes()
        self._reap()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._reap()

    def handle_signals(self) -> None:
        super().handle_signals()
        self._reap()

    def run(self) -> None:
        try:
            super().run()
        finally:
            for process in self.processes:  # normally all joined by now
                if process.process.is_alive():
                    process.terminate()
                    process.process.join(GRACEFUL_SECONDS + 30)
                    if process.process.is_alive():
                        process.kill()
                        process.process.join(5)
            self._reap(final=True)

    def _reap(self, final: bool = False) -> None:
        """Workers uvicorn has replaced or removed (it joined them), or all at the end."""
        current = {id(p) for p in self.processes}
        known = {id(p) for p in self._known}
        self._known += [p for p in self.processes if p.pid is not None and id(p) not in known]
        for process in list(self._known):
            if id(process) in current and not final:
                continue
            self._known.remove(process)
            pid, code = process.pid, process.exitcode
            assert pid is not None
            self.exits.append((pid, code))
            mark_process_dead(pid, str(self.shared.path))
            stopped = code in (0, -signal.SIGTERM, -signal.SIGINT)
            if not stopped and code != STARTUP_FAILURE:
                logger.error("worker %d exited with %s%s", pid, _describe(code),
                             "" if final else "; uvicorn starts another")

    def outcome(self) -> Outcome:
        outcome = Outcome(exits=dict(self.exits))
        for pid, code in self.exits:
            report = self.shared.read_report(pid)
            if code == STARTUP_FAILURE:
                outcome.startup_failed.append(pid)  # it never took a request
            elif report is None:
                continue  # never opened its log: it accepted nothing
            elif report.get("state") != "closed":
                outcome.unclosed.append(pid)
            else:
                outcome.lost_rows += int(report.get("lost_rows", 0))
                outcome.spilled_rows += int(report.get("spilled_rows", 0))
        return outcome


def _describe(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def log_config(level: str) -> dict:
    """uvicorn's logging config plus a root handler, so the app's own loggers print in
    every spawned worker (with its pid) as basicConfig makes them print in one process."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["app"] = {
        "format": "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"}
    config["handlers"]["app"] = {"class": "logging.StreamHandler", "formatter": "app",
                                 "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["app"], "level": level.upper()}
    return config


def run_workers(settings: ServingSettings, log_level: str = "info") -> int:
    """Serve with `settings.workers` processes on one socket until SIGTERM/SIGINT; the
    exit status (see `Outcome.exit_code`). Settings reach the workers through the
    environment (the CLI's --host/--port/--workers are exported for them)."""
    shared = SharedDir.create()
    exported = {MULTIPROC_ENV: str(shared.path), "ML_API_HOST": settings.host,
                "ML_API_PORT": str(settings.port), "ML_API_WORKERS": str(settings.workers)}
    saved = {name: os.environ.get(name) for name in exported}
    if saved[MULTIPROC_ENV]:
        logger.warning("%s=%s ignored: the workers share a fresh directory of their own",
                       MULTIPROC_ENV, saved[MULTIPROC_ENV])
    os.environ.update(exported)
    try:
        config = uvicorn.Config(APP_FACTORY, factory=True, host=settings.host,
                                port=settings.port, workers=settings.workers,
                                log_level=log_level, access_log=settings.access_log,
                                log_config=log_config(log_level),
                                timeout_graceful_shutdown=GRACEFUL_SECONDS)
        sock = config.bind_socket()
        try:
            supervisor = Supervisor(config, [sock], shared)
            supervisor.run()
        finally:
            sock.close()
        outcome = supervisor.outcome()
        if outcome.spilled_rows:
            logger.error("%d prediction-log rows were not stored but spilled (see the "
                         "workers' log lines above)", outcome.spilled_rows)
        return outcome.exit_code()
    finally:
        shared.remove()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
