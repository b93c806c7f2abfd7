"""The app factory: `create_app(settings)` wires settings, model store, micro-batcher,
prediction log, metrics, auth and routes; the lifespan loads the champion at start-up,
polls for a new one (and follows a gradual rollout: serving/rollout.py), and flushes
the prediction log at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi

from ml_assets.core.prediction_log import (
    PredictionLog,
    PredictionLogError,
    PredictionLogUnavailable,
    open_prediction_log,
    resolve_log_location,
)
from serving.batcher import MicroBatcher
from serving.http.auth import api_key_dependency
from serving.http.docs import add_offline_docs
from serving.http.metrics import VALUE_BUCKETS, ServiceMetrics
from serving.http.middleware import (
    BodyReadTimeout,
    BodyTooLarge,
    RequestContext,
    request_id_of,
)
from serving.http.registry_webhook import register_webhook, webhook_routes
from serving.http.responses import ErrorResponse, OrjsonResponse, unavailable
from serving.model import load_probe
from serving.model.request_models import BATCH_MODEL, INVOCATIONS_RECORD_MODEL, RECORD_MODEL
from serving.model.store import ModelStore
from serving.protocols.native import open_routes, protected_routes
from serving.protocols.v2.errors import V2ErrorShape
from serving.protocols.v2.routes import include_open_inference
from serving.rollout import RolloutRouter
from serving.service import Service
from serving.settings import ServingSettings
from serving.workers.shared_dir import SharedDir
from serving.workers.sync import WorkerHeaders, WorkerSync, swap_origin

logger = logging.getLogger(__name__)
try:
    __version__ = version("ml-assets")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

STARTUP_LOAD_SECONDS = 60
LOG_CLOSE_SECONDS = 20  # at shutdown, how long the log may take to store what it holds

DESCRIPTION = """Predictions from the champion model of the ML platform's MLflow registry.

The request schema of `/predict` and `/predict/batch` is generated from the served
model's feature schema and changes when a new champion is swapped in.
"""


async def _poll(service: Service) -> None:
    """Look for a new champion, and follow the rollout, every poll_seconds (loads run in
    a thread)."""
    while True:
        await asyncio.sleep(service.settings.poll_seconds)
        try:
            await asyncio.to_thread(service.store.refresh)
        except Exception:  # noqa: BLE001 - polling must survive anything
            logger.exception("polling the registry failed")
        await _follow_rollout(service)


async def _follow_rollout(service: Service, retry_rejected: bool = False) -> dict | None:
    """The router's refresh (serving/rollout.py), off the event loop; None on failure."""
    if service.router is None:
        return None
    try:
        return await asyncio.to_thread(service.router.refresh, retry_rejected)
    except Exception:  # noqa: BLE001 - polling must survive anything
        logger.exception("following the rollout failed")
        return None


def _warm_probe() -> None:
    """The load probe's forkserver started in the background (a failure here only
    means the first probe starts it)."""
    try:
        load_probe.warm()
    except Exception:  # noqa: BLE001 - the probe starts its server itself if need be
        logger.exception("starting the load probe's server failed")


async def _register_webhook(service: Service) -> None:
    """This service's MLflow webhook, registered off the loop; a failure leaves
    polling in charge and says so (a local store has no server to send events)."""
    settings = service.settings
    if not settings.tracking_uri.startswith(("http://", "https://")):
        logger.warning("ML_API_WEBHOOK_URL is set but the registry (%s) is not an MLflow "
                       "server: no events will come; polling every %ss",
                       settings.tracking_uri, settings.poll_seconds)
        return
    try:
        done = await asyncio.wait_for(asyncio.to_thread(
            register_webhook, service.store.client, settings.model_name,
            str(settings.webhook_url), str(settings.webhook_secret)), STARTUP_LOAD_SECONDS)
        logger.info("registry events: %s", done)
    except Exception as exc:  # noqa: BLE001 - polling remains the fallback
        logger.error("registering the registry webhook failed (%s: %s); polling every %ss",
                     type(exc).__name__, exc, settings.poll_seconds)


def open_log(settings: ServingSettings) -> PredictionLog:
    """The configured prediction log, opened for writing (does I/O: call it off the event
    loop). PredictionLogError names the location and the variable that set it."""
    location = settings.prediction_log_url or settings.prediction_log_path
    setting = settings.log_location_setting
    options: dict[str, Any] = {
        "max_queue_rows": settings.log_queue_rows, "spill_path": settings.prediction_log_path,
        "stall_seconds": settings.log_commit_timeout_seconds}
    try:
        if resolve_log_location(location)[0] == "sqlite":
            options.update(busy_timeout=settings.log_busy_timeout_seconds,
                           synchronous=settings.log_sqlite_synchronous,
                           sync_interval=settings.log_sync_interval_seconds)
        return open_prediction_log(location, **options)
    except (PredictionLogError, ValueError, OSError) as exc:
        raise PredictionLogError(f"{exc} (the prediction log location comes from {setting}; "
                                 "point it at a writable file or a reachable "
                                 "database)") from exc


def create_app(settings: ServingSettings | None = None, *,
               prediction_log: PredictionLog | None = None,
               shared_dir: Path | None = None) -> FastAPI:
    """The prediction service. `prediction_log` replaces the configured log (PostgreSQL
    when `prediction_log_url` is set, else the SQLite file; see `open_log`); the app
    closes it at shutdown and records on `app.state.prediction_log_lost_rows` how many
    rows could be neither stored nor spilled. `shared_dir`: set in a worker process
    (serving/workers/): metrics are merged with the other workers', reloads are
    passed on and followed, the log's state is reported to the supervisor."""
    settings = settings or ServingSettings.from_env()
    metrics = ServiceMetrics(settings.predicted_value_buckets or VALUE_BUCKETS,
                             multiprocess_dir=shared_dir)
    sync = WorkerSync(SharedDir(shared_dir)) if shared_dir is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service: Service = app.state.service
        log = (prediction_log if prediction_log is not None
               else await asyncio.to_thread(open_log, settings))
        service.log = log
        app.state.prediction_log_lost_rows = 0
        metrics.track_backlog(lambda: log.backlog)
        log.on_commit = metrics.observe_log_commit
        log.on_write_failure = metrics.log_write_failures.inc
        if sync is not None:
            sync.log_opened()
        service.batcher.start()
        # Serve once the champion is loaded; a registry that does not answer in time
        # must not keep the service from starting (/ready says 503 meanwhile). Every
        # worker loads it itself: this swap is not passed on.
        with swap_origin("startup"):
            initial = asyncio.ensure_future(asyncio.to_thread(service.store.refresh))
        done, _ = await asyncio.wait({initial}, timeout=STARTUP_LOAD_SECONDS)
        if done and initial.exception() is not None:
            logger.error("start-up model load failed", exc_info=initial.exception())
        elif done:
            logger.info("start-up model load: %s", initial.result())
        else:
            logger.warning("champion still loading after %ss; starting without it",
                           STARTUP_LOAD_SECONDS)
        if done:  # a rollout running now: its challenger answers from the first request
            following = asyncio.ensure_future(_follow_rollout(service))
            if not (await asyncio.wait({following}, timeout=STARTUP_LOAD_SECONDS))[0]:
                logger.warning("rollout challenger still loading after %ss; starting "
                               "without it", STARTUP_LOAD_SECONDS)
        if settings.webhook_url and settings.webhook_secret:
            await _register_webhook(service)
        warming = (asyncio.ensure_future(asyncio.to_thread(_warm_probe))
                   if settings.load_probe_seconds > 0 else None)
        poller = (asyncio.create_task(_poll(service), name="champion-poller")
                  if settings.poll_seconds > 0 else None)
        follower = (asyncio.create_task(sync.run(service), name="worker-sync")
                    if sync is not None else None)
        try:
            yield
        finally:
            for task in (poller, follower, warming):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if service.router is not None:
                await service.router.drain()  # shadow copies still being scored
            await service.batcher.stop()
            lost = await asyncio.to_thread(log.close, LOG_CLOSE_SECONDS)
            app.state.prediction_log_lost_rows = lost
            if sync is not None:
                sync.log_closed(log, lost)
            if lost:
                logger.error("prediction log closed: %d rows LOST (neither stored nor "
                             "spilled)", lost)
            elif log.spilled_rows:
                logger.error("prediction log closed: %d rows not stored, spilled to %s",
                             log.spilled_rows, ", ".join(map(str, log.spilled_to)))
            else:
                logger.info("prediction log flushed and closed")

    app = FastAPI(title="ML platform prediction service", version=__version__,
                  description=DESCRIPTION, lifespan=lifespan,
                  default_response_class=OrjsonResponse, docs_url=None, redoc_url=None)
    add_offline_docs(app)  # /docs and /redoc without a CDN

    def on_swap(model) -> None:
        if sync is not None:
            sync.on_swap(model)  # the other workers follow
        _on_swap(app)

    store = ModelStore(settings, metrics, on_swap=on_swap)
    app.state.service = Service(
        settings=settings, metrics=metrics, store=store,
        batcher=MicroBatcher(settings.micro_batch_rows, settings.micro_batch_wait_ms / 1000,
                             metrics),
        router=RolloutRouter(store, metrics, settings.shadow_max_in_flight))
    auth = [Depends(api_key_dependency(settings.api_key))] if settings.api_key else []
    unauthorized: dict[int | str, dict[str, Any]] | None = {
        401: {"model": ErrorResponse, "description": "Missing or wrong API "
              "key (X-API-Key or Authorization: Bearer)."}} if auth else None
    app.include_router(open_routes)
    app.include_router(protected_routes, dependencies=auth, responses=unauthorized)
    include_open_inference(app, auth)  # /v2: the Open Inference Protocol (KServe V2)
    app.include_router(webhook_routes)  # signed by MLflow's secret, not the API key

    @app.exception_handler(PredictionLogUnavailable)
    async def log_unavailable(request: Request, exc: PredictionLogUnavailable):
        # Nothing was acknowledged: the client may send the same request again.
        message = f"prediction not answered: it could not be logged durably ({exc}); retry"
        return unavailable(message, exc.retry_after,
                           mlflow_style=request.url.path.rstrip("/") == "/invocations",
                           request_id=request_id_of(request.scope))

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge):
        return OrjsonResponse({"detail": str(exc)}, status_code=413,
                              headers={"Connection": "close"})

    @app.exception_handler(BodyReadTimeout)
    async def body_timeout(request: Request, exc: BodyReadTimeout):
        return OrjsonResponse({"detail": str(exc)}, status_code=408,
                              headers={"Connection": "close"})

    app.add_middleware(RequestContext, metrics=metrics, max_bytes=settings.max_body_bytes,
                       timeout_seconds=settings.body_timeout_seconds)
    # /v2 paths: the shared error answers above (413, 401, 503, 404) as {"error": ...}
    app.add_middleware(V2ErrorShape)
    if sync is not None:  # X-Worker-Pid; a 200 from /admin/reload reaches every worker
        app.add_middleware(WorkerHeaders, sync=sync, store=store)
    # FastAPI's documented way to customise the schema; mypy forbids assigning to a method.
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _on_swap(app: FastAPI) -> None:
    app.openapi_schema = None  # rebuilt with the new model's request schema on next read
    _freeze_heap()


def _freeze_heap() -> None:
    """Move what is alive now (libraries, the model) out of the garbage collector's
    sight, so that full collections stay short instead of pausing requests for ~0.1 s.
    Unfreezing first lets this one full collection free the previous model's cycles
    (its generated request classes); it costs one such pause per swap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


_NO_MODEL_SCHEMA = {"type": "object", "description": "No model is loaded yet: the feature "
                    "schema appears here once a champion is served."}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the served model's generated request models."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    model = app.state.service.store.current
    if model is not None:
        components.update(model.requests.json_schemas())
    else:
        components[RECORD_MODEL] = {**_NO_MODEL_SCHEMA, "title": RECORD_MODEL}
        components[BATCH_MODEL] = {**_NO_MODEL_SCHEMA, "title": BATCH_MODEL}
        components[INVOCATIONS_RECORD_MODEL] = {**_NO_MODEL_SCHEMA,
                                                "title": INVOCATIONS_RECORD_MODEL}
    app.openapi_schema = schema
    return schema
