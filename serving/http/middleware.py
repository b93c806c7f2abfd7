"""Pure ASGI middleware (cheaper per request than BaseHTTPMiddleware).

`RequestContext`, one layer: a request id per request (X-Request-ID echoed or made
up), request count and latency by endpoint template and status, a last-resort 500
that logs the error server-side and never shows a stack trace, 413 for bodies over the
limit (by Content-Length or while streaming a chunked body) and 408 for a body that
does not arrive within the body timeout (a client trickling it: slowloris).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import orjson

from serving.http.metrics import ServiceMetrics

logger = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(Exception):
    """Raised while reading a streamed body that passes the limit."""

    def __init__(self, limit: int):
        super().__init__(f"request body exceeds the limit of {limit} bytes "
                         "(ML_API_MAX_BODY_BYTES)")


class BodyReadTimeout(Exception):
    """Raised when a request's body has not arrived within the body timeout."""

    def __init__(self, seconds: float):
        super().__init__(f"request body not received within {seconds:g}s "
                         "(ML_API_BODY_TIMEOUT_SECONDS)")


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


def new_request_id() -> str:
    """32 random hex digits from the OS's random source (as uuid4().hex, at a fraction
    of its cost). Not the `random` module: a `random.seed(...)` anywhere in the process
    (a user's estimator code, a library) would repeat ids, and the label join reads the
    log by request id."""
    return os.urandom(16).hex()


def request_id_of(scope) -> str:
    return scope.get("state", {}).get("request_id") or new_request_id()


class RequestContext:
    """One ASGI layer for what every request needs: its id, its metrics, the
    last-resort error answer, and the body's bounds (413 for bodies over `max_bytes`,
    by Content-Length before the app reads anything or while a chunked body streams in:
    BodyTooLarge; BodyReadTimeout, 408, for a body that takes longer than
    `timeout_seconds` to arrive)."""

    def __init__(self, app, metrics: ServiceMetrics, max_bytes: int,
                 timeout_seconds: float = 30.0):
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = length = None  # the first of each header, as before
        for key, value in scope["headers"]:
            if key == b"x-request-id" and offered is None:
                offered = value
            elif key == b"content-length" and length is None:
                length = value
        text = (offered or b"").decode("latin-1")
        request_id = text if _REQUEST_ID.match(text) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_with_id(message):
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                await _send_json(send_with_id, 413, {
                    "detail": f"request body of {int(length)} bytes exceeds the limit of "
                              f"{self.max_bytes} bytes (ML_API_MAX_BODY_BYTES)"},
                    [(b"connection", b"close")])
                return
            await self.app(scope, self._bounded(receive, counted=length is None),
                           send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s (request %s)", scope["method"],
                             scope["path"], request_id)
            status = 500
            if not response_started:
                await _send_json(send, 500, {"detail": "internal server error",
                                             "request_id": request_id}, [id_header])
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, scope["method"], status, started)

    def _bounded(self, receive, counted: bool):
        """`receive` bounded in time (the whole body within timeout_seconds of the first
        read) and, for a body without Content-Length (`counted`), in size."""
        received = 0
        limit = self.max_bytes
        seconds = self.timeout_seconds
        deadline: float | None = None
        complete = False

        async def bounded_receive():
            nonlocal received, deadline, complete
            if complete:  # the body is in: what follows is the wait for a disconnect
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyReadTimeout(seconds) from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                if counted:
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
            return message

        return bounded_receive
