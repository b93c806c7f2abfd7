"""Registry events: an alias moved in MLflow reaches the service in under a second.

MLflow's tracking server (`mlflow server`, 3.17, SQL store) sends webhooks for
`model_version_alias.created` and `.deleted`, signed with the webhook's secret:
`X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "{delivery id}.{timestamp}.{body}">`.
`POST /admin/registry-events` checks the signature, the timestamp and the delivery id
(a forged, stale or replayed event is refused), answers 202 at once and then looks the
alias up as polling does (the rollout too; a burst of events costs at most two
lookups, and a version already refused is not retried). Polling (`ML_API_POLL_SECONDS`) stays the
fallback for a lost event and for a local store, which has no server to send events.

At start the service registers its own webhook (one per model and URL, updated in
place) when `ML_API_WEBHOOK_URL` (where the MLflow server reaches this service) and
`ML_REGISTRY_WEBHOOK_SECRET` are set and the registry is an MLflow server.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from serving.http.responses import ErrorResponse, OrjsonResponse
from serving.service import Service, get_service

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
# Older deliveries are refused: a captured event cannot be replayed later.
MAX_AGE_SECONDS = 300
MAX_BODY_BYTES = 64 * 1024
EVENTS = ("model_version_alias.created", "model_version_alias.deleted")

webhook_routes = APIRouter()
ServiceDep = Annotated[Service, Depends(get_service)]


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verification_problem(secret: str, headers: Mapping[str, str], body: bytes,
                         now: float) -> str | None:
    """Why this delivery is not from our MLflow server, or None when it is."""
    delivery = headers.get(DELIVERY_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    sent = headers.get(SIGNATURE_HEADER, "")
    missing = [name for name, value in ((DELIVERY_HEADER, delivery),
                                        (TIMESTAMP_HEADER, stamp),
                                        (SIGNATURE_HEADER, sent)) if not value]
    if missing:
        return f"not a signed MLflow webhook: {', '.join(missing)} missing"
    try:
        age = now - int(stamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a Unix time: {stamp[:40]!r}"
    if abs(age) > MAX_AGE_SECONDS:
        return (f"{TIMESTAMP_HEADER} is {age:.0f} s from now (at most {MAX_AGE_SECONDS} s): "
                "a replayed or delayed delivery")
    expected = signature(secret, delivery, stamp, body)
    # "v1,<sig>", possibly several separated by spaces (Standard Webhooks).
    if any(hmac.compare_digest(candidate.encode(), expected.encode())
           for candidate in sent.split()):
        return None
    return (f"{SIGNATURE_HEADER} does not match: the webhook's secret is not "
            "ML_REGISTRY_WEBHOOK_SECRET")


def _event(body: bytes) -> tuple[str, dict[str, Any]] | str:
    """('entity.action', data) of an MLflow webhook body, or what is wrong with it."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"the body is not JSON: {exc}"
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        return "the body is not an MLflow webhook event (an object with `data`)"
    return f"{doc.get('entity')}.{doc.get('action')}", doc["data"]


_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted: the alias is looked up now, off the request."},
    200: {"description": "Verified but not about the served model: nothing to do."},
    401: {"model": ErrorResponse, "description": "Unsigned, wrongly signed or stale."},
    404: {"model": ErrorResponse, "description": "Webhooks are off (no secret set)."},
    413: {"model": ErrorResponse, "description": "Body over 64 KiB."},
    422: {"model": ErrorResponse, "description": "Not an MLflow webhook event."}}


@webhook_routes.post("/admin/registry-events", tags=["operations"], status_code=202,
                     responses=_RESPONSES, openapi_extra={"requestBody": {
                         "required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["data"], "properties": {
                                 "entity": {"type": "string"},
                                 "action": {"type": "string"},
                                 "data": {"type": "object"}}}}}}})
async def registry_event(request: Request, service: ServiceDep) -> Response:
    """An MLflow registry webhook (signed with ML_REGISTRY_WEBHOOK_SECRET, no API key):
    an alias of the served model moved, so the service looks it up now instead of at the
    next poll."""
    secret = service.settings.webhook_secret
    if not secret:
        return OrjsonResponse({"detail": "registry webhooks are off: set "
                               "ML_REGISTRY_WEBHOOK_SECRET (and register the webhook)"},
                              status_code=404)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return OrjsonResponse({"detail": f"a webhook body is at most {MAX_BODY_BYTES} "
                               "bytes"}, status_code=413)
    problem = verification_problem(secret, request.headers, body, time.time())
    if problem is None and not _first_delivery(request.headers[DELIVERY_HEADER]):
        problem = f"delivery {request.headers[DELIVERY_HEADER][:64]!r} was already received"
    if problem is not None:
        return OrjsonResponse({"detail": problem}, status_code=401)
    event = _event(body)
    if isinstance(event, str):
        return OrjsonResponse({"detail": event}, status_code=422)
    kind, data = event
    if data.get("name") != service.settings.model_name:
        return OrjsonResponse({"status": "ignored", "event": kind,
                               "detail": f"not about {service.settings.model_name}"})
    _schedule_refresh(service, kind)
    return OrjsonResponse({"status": "accepted", "event": kind}, status_code=202)


# Delivery ids seen within MAX_AGE_SECONDS: a replayed delivery (same id, still fresh)
# is refused; older ones are refused by their timestamp.
_seen: dict[str, float] = {}
_SEEN_MAX = 10_000
# At most one refresh runs and one waits: a burst of events costs two lookups.
_running: asyncio.Task | None = None
_again = False


def _first_delivery(delivery: str) -> bool:
    now = time.monotonic()
    for old in [k for k, at in _seen.items() if now - at > MAX_AGE_SECONDS]:
        del _seen[old]
    if delivery in _seen or len(_seen) >= _SEEN_MAX:
        return False
    _seen[delivery] = now
    return True


def _schedule_refresh(service: Service, kind: str) -> None:
    """Look the alias up (as polling does: a refused version is not retried) once now,
    and once more after it if events arrived meanwhile."""
    global _running, _again

    async def refresh() -> None:
        global _running, _again
        try:
            while True:
                _again = False
                try:
                    result = await asyncio.to_thread(service.store.refresh, False, False)
                    logger.info("registry event %s: %s", kind, result.get("status"))
                    if service.router is not None:
                        await asyncio.to_thread(service.router.refresh, False)
                except Exception:  # noqa: BLE001 - polling remains; an event is a hint
                    logger.exception("registry event %s: looking the alias up failed", kind)
                if not _again:
                    break
        finally:
            _running = None

    if _running is not None and not _running.done():
        _again = True
        return
    _running = asyncio.get_running_loop().create_task(refresh(), name="registry-event")


def register_webhook(client: Any, model_name: str, url: str, secret: str) -> str:
    """Create, or update in place, this service's webhook on the MLflow server; returns
    what was done. One webhook per model and URL, so replicas behind one URL share it."""
    name = f"ml-platform-api-{model_name}"[:63]
    description = f"ml-platform prediction service for {model_name} at {url}"
    existing = [hook for hook in _all_webhooks(client)
                if hook.name == name and hook.url == url]
    if existing:
        client.update_webhook(existing[0].webhook_id, url=url, events=list(EVENTS),
                              secret=secret, status="ACTIVE", description=description)
        return f"webhook {existing[0].webhook_id} updated ({url})"
    hook = client.create_webhook(name=name, url=url, events=list(EVENTS), secret=secret,
                                 description=description)
    return f"webhook {hook.webhook_id} created ({url})"


def _all_webhooks(client: Any) -> list:
    hooks, token = [], None
    for _ in range(100):  # bounded: 100 pages
        page = client.list_webhooks(max_results=100, page_token=token)
        hooks.extend(page)
        token = page.token
        if not token:
            break
    return hooks
