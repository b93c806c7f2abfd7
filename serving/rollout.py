"""The API's side of a gradual rollout (ml_assets.core.rollout.plan): the challenger slot,
which variant answers a request, and the bounded shadow copies.

`RolloutRouter.refresh()` runs on the same poll as the champion's refresh (and on
POST /admin/reload): while `read_rollout(...).active`, the plan's version is loaded
into the challenger slot by the very path the champion takes (`ModelStore.load`: the
safe loader, the smoke prediction, the compiled runtime); a version it rejects is
never served (counted in ml_api_model_load_failures_total, not retried by polling),
and the champion answers alone. When the rollout ends (alias gone, status no longer
active) the challenger is dropped; when it was promoted, the champion's own swap
serves it. A registry that cannot be read keeps the current state.

`choose(champion, key)` is what a request asks: (the model that answers, its variant,
the model that scores a shadow copy or None). The assignment is sticky:
`serves_canary(key, salt, share)`, with the client's X-Client-Key (else the request
id, so unkeyed requests are assigned one by one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from ml_assets.core.rollout.plan import (
    CANARY,
    CANARY_ALIAS,
    CHAMPION,
    CLIENT_KEY_HEADER,
    SHADOW,
    RolloutPlan,
    read_rollout,
    serves_canary,
)
from serving.http.metrics import ServiceMetrics
from serving.model.served import ServedModel
from serving.model.store import ModelRejected, ModelStore
from serving.shadow_lane import ShadowLane

logger = logging.getLogger(__name__)

__all__ = ["CLIENT_KEY_HEADER", "RolloutRouter", "RolloutState", "request_key"]

SHADOW_DRAIN_SECONDS = 10.0  # at shutdown, how long shadow copies in flight may finish
SHED_LOG_INTERVAL_SECONDS = 10.0  # at most one "shadow copies shed" line per interval
_CLIENT_KEY = CLIENT_KEY_HEADER.lower().encode("latin-1")


def request_key(scope, request_id: str) -> str:
    """The assignment key of a request: its X-Client-Key header when it sends one, else
    its request id."""
    for name, value in scope.get("headers", ()):
        if name == _CLIENT_KEY:
            key = value.decode("latin-1").strip()
            if key:
                return key
    return request_id


@dataclass(frozen=True)
class RolloutState:
    """What the router follows: the plan and its loaded challenger (read as one
    reference, so a request never sees a plan with another plan's challenger)."""

    plan: RolloutPlan
    challenger: ServedModel


class RolloutRouter:
    """The challenger slot, the per-request choice and the shadow copies' bound."""

    def __init__(self, store: ModelStore, metrics: ServiceMetrics,
                 shadow_max_in_flight: int = 64):
        self.store = store
        self.metrics = metrics
        self.state: RolloutState | None = None
        self.rejected: dict[str, str] = {}  # version -> why (not retried by polling)
        self.last_error: str | None = None
        self.shadow_max_in_flight = shadow_max_in_flight
        self.shadow_in_flight = 0
        self._shadow_tasks: set[asyncio.Task] = set()
        # The lane the copies are scored in: its own thread and lock, never the
        # champion's (serving/shadow_lane.py).
        self.lane = ShadowLane()
        self._shed_since_report = 0
        self._last_shed_report = -SHED_LOG_INTERVAL_SECONDS
        self._lock = threading.Lock()
        metrics.track_rollout_share(self.share)

    # -- state ---------------------------------------------------------------------
    def share(self) -> float:
        """The canary share in force now (0 without a canary rollout)."""
        state = self.state
        return state.plan.share_at() if state is not None else 0.0

    def _set(self, state: RolloutState | None) -> None:
        self.state = state
        if state is None:
            self.metrics.set_rollout(None, None)
        else:
            self.metrics.set_rollout(state.plan.mode, state.challenger.version)
        self.metrics.sample()

    def refresh(self, retry_rejected: bool = False) -> dict:
        """Follow the registry's rollout: load, keep or drop the challenger. Thread-safe;
        returns {"status": none|following|loaded|dropped|rejected|registry_error, ...}."""
        with self._lock:
            current = self.state
            try:
                rollout = read_rollout(self.store.client, self.store.settings.model_name)
            except Exception as exc:  # noqa: BLE001 - registry down: keep the state
                self.last_error = f"rollout look-up failed: {exc}"
                logger.warning("%s; keeping the current rollout state", self.last_error)
                return {"status": "registry_error", "detail": self.last_error}
            plan = rollout.plan
            if not rollout.active or plan is None:
                if current is not None:
                    logger.info("rollout of version %s ended (%s); the champion answers "
                                "alone", current.challenger.version,
                                plan.status if plan is not None else "no plan")
                    self._set(None)
                    return {"status": "dropped", "version": current.challenger.version}
                return {"status": "none"}
            champion = self.store.current
            if champion is not None and champion.version == plan.version:
                # Promoted: the champion's swap serves it; no second copy is needed.
                if current is not None:
                    self._set(None)
                return {"status": "none", "detail": f"version {plan.version} is the champion"}
            if current is not None and current.challenger.version == plan.version:
                if current.plan != plan:  # a restarted rollout: new salt, steps, mode
                    self._set(RolloutState(plan, current.challenger))
                return {"status": "following", **self._summary(plan)}
            if current is not None:
                # Another version is rolled out now: the old challenger stops getting
                # traffic at once, not only once the new one has loaded.
                self._set(None)
            if plan.version in self.rejected and not retry_rejected:
                return {"status": "rejected", "version": plan.version,
                        "detail": self.rejected[plan.version]}
            try:
                model = self.store.load(plan.version)
            except ModelRejected as exc:
                self.rejected[plan.version] = str(exc)
                self.last_error = str(exc)
                self.metrics.model_load_failures.labels(exc.reason).inc()
                logger.error("rejected the %s challenger version %s: %s; the champion "
                             "answers alone", plan.mode, plan.version, exc)
                return {"status": "rejected", "version": plan.version, "detail": str(exc)}
            self.rejected.pop(plan.version, None)
            self.last_error = None
            self._set(RolloutState(plan, replace(model, alias=CANARY_ALIAS)))
            logger.info("following the %s rollout of version %s (champion %s)", plan.mode,
                        plan.version, champion.version if champion else "none")
            return {"status": "loaded", **self._summary(plan)}

    def _summary(self, plan: RolloutPlan) -> dict:
        return {"mode": plan.mode, "version": plan.version,
                "share": plan.share_at() if plan.mode == CANARY else None}

    def describe(self) -> dict | None:
        """What GET /model shows (never the salt); None without a rollout."""
        state = self.state
        if state is None:
            return None
        plan = state.plan
        return {"mode": plan.mode, "challenger_version": state.challenger.version,
                "champion_version": plan.champion_version,
                "started_at": plan.started_at.isoformat(),
                "share": plan.share_at() if plan.mode == CANARY else None,
                "runtime": state.challenger.runtime}

    # -- the per-request choice ----------------------------------------------------
    def choose(self, model: ServedModel, request_key: str
               ) -> tuple[ServedModel, str, ServedModel | None]:
        """(the model that answers, its variant, the model scoring a shadow copy or
        None) for a request that started on champion `model`."""
        state = self.state
        if state is None:
            return model, CHAMPION, None
        challenger = state.challenger
        if challenger.version == model.version or challenger.name != model.name:
            return model, CHAMPION, None
        plan = state.plan
        if plan.mode == SHADOW:
            return model, CHAMPION, challenger
        if serves_canary(request_key, plan.salt, plan.share_at()):
            return challenger, CANARY, None
        return model, CHAMPION, None

    # -- shadow copies -----------------------------------------------------------------
    def spawn_shadow(self, score: Callable[[], Awaitable[None]]) -> bool:
        """Run `score()` as a task of its own, unless shadow_max_in_flight copies are
        being scored or waiting for the lane already: then it is shed (counted, and
        logged at most once per interval) and False returned. Call it on the event
        loop."""
        if self.shadow_in_flight >= self.shadow_max_in_flight:
            self.metrics.shadow_skipped.inc()
            self._shed_since_report += 1
            now = time.monotonic()
            if now - self._last_shed_report >= SHED_LOG_INTERVAL_SECONDS:
                logger.warning("shadow lane full (ML_API_SHADOW_MAX_IN_FLIGHT=%d copies in "
                               "flight): %d shadow copies shed since the last report; the "
                               "challenger is slower than the traffic",
                               self.shadow_max_in_flight, self._shed_since_report)
                self._shed_since_report = 0
                self._last_shed_report = now
            return False
        self.shadow_in_flight += 1

        async def run() -> None:
            try:
                await score()
            except Exception:  # noqa: BLE001 - a copy must never hurt anything else
                self.metrics.rollout_failures.labels(SHADOW).inc()
                logger.exception("shadow scoring failed")
            finally:
                self.shadow_in_flight -= 1

        task = asyncio.get_running_loop().create_task(run(), name="shadow-copy")
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)
        return True

    async def drain(self, timeout: float = SHADOW_DRAIN_SECONDS) -> None:
        """Wait (up to `timeout`) for the shadow copies in flight, then cancel the rest
        and stop the lane."""
        tasks = set(self._shadow_tasks)
        if not tasks:
            await self.lane.stop()
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
            logger.warning("%d shadow copies still running at shutdown were cancelled",
                           len(pending))
        await self.lane.stop()
