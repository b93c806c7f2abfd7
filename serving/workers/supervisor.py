"""The supervisor: `run_workers` serves with N uvicorn worker processes on one socket
(`python -m serving --workers N`) and turns the workers' reports into the exit status;
`create_worker_app` is the app factory each spawned worker runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from serving.app import create_app
from serving.http.connections import uvicorn_options, with_header_deadline
from serving.settings import ServingSettings
from serving.workers.shared_dir import MULTIPROC_ENV, SharedDir

logger = logging.getLogger(__name__)

APP_FACTORY = "serving.workers.supervisor:create_worker_app"
GRACEFUL_SECONDS = 30  # uvicorn's timeout_graceful_shutdown, as with one process


def create_worker_app() -> FastAPI:
    """uvicorn's app factory in each worker process: settings from the environment the
    supervisor exported, metrics and reloads shared through PROMETHEUS_MULTIPROC_DIR."""
    shared = SharedDir.from_env()
    if shared is None:
        raise RuntimeError(f"{APP_FACTORY} runs under `python -m serving --workers N`, "
                           f"which sets {MULTIPROC_ENV}")
    sys.setswitchinterval(0.001)  # as in the one-process service (serving/__main__.py)
    return create_app(ServingSettings.from_env(), shared_dir=shared.path)


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
                                timeout_graceful_shutdown=GRACEFUL_SECONDS,
                                **uvicorn_options(settings))
        with_header_deadline(config, settings)
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
