"""A worker process's side of several workers on one port: its swaps passed on to the
others (`WorkerSync.on_swap`, and POST /admin/reload through `WorkerHeaders`), theirs
followed (retried with backoff until it serves their version), the gauges sampled, its
prediction log's state reported, and a shutdown when the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from serving.workers.shared_dir import SharedDir

if TYPE_CHECKING:
    from ml_assets.core.prediction_log import PredictionLog
    from serving.model.served import ServedModel
    from serving.model.store import ModelStore
    from serving.service import Service

logger = logging.getLogger(__name__)

SYNC_SECONDS = 0.5  # how often a worker looks at the generation file (and samples gauges)
# A follow that did not end serving the generation's version is tried again after
# these delays (then every 30 s) until it does or a newer generation arrives.
RETRY_BACKOFF = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
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
