"""Slow clients (slowloris): uvicorn's HTTP protocols with a deadline for a request's
headers, and the uvicorn options that bound connections.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) but never one that
keeps trickling a request's headers: a byte every few seconds holds it open for ever.
`HeaderDeadlineHttpTools` / `HeaderDeadlineH11` close a connection whose next request's
headers are not complete within ML_API_HEADER_TIMEOUT_SECONDS (counted from the
connection's start, and again from each answer). The body has its own deadline in the
app (serving/http/middleware.py, ML_API_BODY_TIMEOUT_SECONDS: 408), and
ML_API_MAX_CONNECTIONS is uvicorn's `limit_concurrency` (a request past it is answered
503 at once).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.settings import ServingSettings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is optional in uvicorn
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

HEADER_TIMEOUT_ATTRIBUTE = "ml_header_timeout_seconds"  # set on uvicorn's Config


class _HeaderDeadline:
    """Mixin over a uvicorn HTTP protocol: close the connection when no request's headers
    complete within the deadline after it opens or after an answer."""

    config: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_deadline(self) -> None:
        seconds = getattr(self.config, HEADER_TIMEOUT_ATTRIBUTE, None)
        if not seconds:
            return
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(seconds, self._headers_late, self.cycle)

    def _headers_late(self, cycle) -> None:
        # A new request's headers make a new cycle: if none came, the client is too slow.
        if self.cycle is cycle and not self.transport.is_closing():
            self.transport.close()


class HeaderDeadlineH11(_HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline."""


if HttpToolsProtocol is not None:
    class HeaderDeadlineHttpTools(_HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol (its default when installed) with the header
        deadline."""

    PROTOCOL = "serving.http.connections:HeaderDeadlineHttpTools"
else:  # pragma: no cover
    PROTOCOL = "serving.http.connections:HeaderDeadlineH11"


def uvicorn_options(settings: ServingSettings) -> dict[str, Any]:
    """The keyword arguments of uvicorn.Config that bound slow and many connections."""
    return {"http": PROTOCOL, "timeout_keep_alive": settings.keepalive_seconds,
            "limit_concurrency": settings.max_connections}


def with_header_deadline(config, settings: ServingSettings):
    """`config` (a uvicorn.Config) carrying the header deadline the protocols read; it
    is pickled with the config into worker processes."""
    setattr(config, HEADER_TIMEOUT_ATTRIBUTE, settings.header_timeout_seconds)
    return config
