"""The protocol's errors: `V2Error` (a refused request) answered as `{"error": "<one
sentence>"}`, and `V2ErrorShape`, the middleware that gives the app's shared error
answers (body limit, API key, prediction-log 503, unmatched paths, last-resort 500)
that shape on /v2 paths.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from serving.http.responses import OrjsonResponse
from serving.model.input_limits import excerpt
from serving.protocols.v2.types import PREFIX


class V2Error(Exception):
    """A request the protocol refuses: `{"error": message}` with `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def is_v2_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(message: str, status: int, headers: dict[str, str] | None = None
                   ) -> OrjsonResponse:
    return OrjsonResponse({"error": message}, status_code=status, headers=headers)


def quote(name: Any) -> str:
    return json.dumps(excerpt(name if isinstance(name, str) else repr(name)))


def _as_sentence(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors
        parts = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                 for d in detail[:3] if isinstance(d, dict)]
        return "invalid request: " + "; ".join(parts) if parts else "invalid request"
    return excerpt(detail, 200)


def v2_error_body(body: bytes) -> bytes | None:
    """An error body of the app's shared parts ({"detail": ..., "request_id"?}) in the
    V2 shape, {"error": "..."}; None when `body` is not such a body."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "error" in payload or "detail" not in payload:
        return None
    message = _as_sentence(payload["detail"])
    if isinstance(payload.get("request_id"), str):
        message += f" (request {payload['request_id']})"
    return orjson.dumps({"error": message})


class V2ErrorShape:
    """Pure ASGI middleware: on /v2 paths, error answers that the app's shared parts
    give in the {"detail": ...} shape (the body limit's 413, the API key's 401, the
    prediction log's 503, unmatched paths' 404/405, the last-resort 500) are given in
    the protocol's {"error": "..."} shape, status and headers kept. Other paths and
    successful answers pass untouched (only /v2 error bodies are buffered)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_v2_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        held: dict | None = None
        chunks: list[bytes] = []
        sent = False

        async def reshaping_send(message):
            nonlocal held, sent
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await flush()

        async def flush():
            nonlocal sent
            assert held is not None
            sent = True
            original = b"".join(chunks)
            body = v2_error_body(original)
            headers = list(held.get("headers", []))
            if body is None:
                body = original
            else:
                headers = [(k, v) for k, v in headers
                           if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, reshaping_send)
        finally:
            if held is not None and not sent:  # the app stopped mid-answer
                await flush()
