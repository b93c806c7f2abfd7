"""The one prediction handler every wire format goes through, and the adapter each format
implements (`Protocol`): decode a body into rows, map its client errors, render its answer.

`handle` owns the request skeleton: the served model (or the adapter's "unavailable"
answer), the request id, the rollout's choice of variant, in-flight tracking for the
micro-batcher, reading the body, decoding it (off the event loop when large), the answer
(`Service.answer`: batching, runtime, log, metrics, a canary's fall-back to the champion
with the body re-decoded for it), and the mapping of client errors to the format's shape.
Adding a wire format is one new file with an adapter and a one-line route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response

from ml_assets.core.rollout.plan import CHAMPION
from serving.http.middleware import request_id_of
from serving.model.input_limits import InputOverflow
from serving.model.served import ServedModel
from serving.service import Answer, Service


@dataclass(frozen=True, slots=True)
class Decoded:
    """A body decoded for one model: its rows (validated for that model), and whatever
    else the adapter needs to re-decode the body or render the answer (`context`)."""

    rows: list[list]
    context: Any = None


class Adapter(Protocol):
    """One wire format's part of a prediction request."""

    @property
    def client_errors(self) -> tuple[type[Exception], ...]:
        """The format's client errors: raised by `decode`, mapped by `client_error`."""
        ...

    def served(self, service: Service, request: Request) -> ServedModel | Response:
        """The model this request starts on (the champion), or the answer refusing it
        (no model served: 503 in the format's shape; a wrong address or content type)."""
        ...

    def rollout(self) -> bool:
        """Whether the rollout chooses who answers (False: the champion answers)."""
        ...

    async def decode(self, request: Request, body: bytes, model: ServedModel,
                     service: Service) -> Decoded | Response:
        """`body` decoded and validated for `model` (large bodies off the event loop),
        or an answer refusing it; raises one of `client_errors`."""
        ...

    def rows_for(self, body: bytes, decoded: Decoded, other: ServedModel,
                 service: Service) -> list[list]:
        """`body` re-decoded for `other` (a canary's champion, a shadow), in any thread."""
        ...

    def client_error(self, exc: Exception, model: ServedModel) -> Response:
        """The format's answer to a client error found decoding for `model`."""
        ...

    def overflow(self, exc: InputOverflow) -> Response:
        """The format's answer to values the model cannot hold (never a 500)."""
        ...

    def render(self, result: Answer, decoded: Decoded, request_id: str) -> Response:
        """The format's answer to a prediction."""
        ...


async def handle(request: Request, adapter: Adapter) -> Response:
    """Answer one prediction request in `adapter`'s wire format. The service comes from
    the app's state, not a FastAPI dependency: resolving one costs more than the graph
    call of a row."""
    service: Service = request.app.state.service
    champion = adapter.served(service, request)  # this request's model, even if a swap
    if isinstance(champion, Response):           # happens now
        return champion
    request_id = request_id_of(request.scope)
    model, variant, shadow = (service.choose(champion, request.scope, request_id)
                              if adapter.rollout() else (champion, CHAMPION, None))
    with service.batcher.tracking():
        body = await request.body()
        try:
            decoded = await adapter.decode(request, body, model, service)
        except adapter.client_errors as exc:
            return adapter.client_error(exc, model)
        if isinstance(decoded, Response):
            return decoded

        def rows_for(other: ServedModel) -> list[list]:
            return adapter.rows_for(body, decoded, other, service)

        try:
            result = await service.answer(champion, model, variant, shadow, decoded.rows,
                                          request_id, rows_for)
        except InputOverflow as exc:  # NonFinitePrediction too
            return adapter.overflow(exc)
        except adapter.client_errors as exc:  # the champion's schema, after a canary failed
            return adapter.client_error(exc, champion)
    return adapter.render(result, decoded, request_id)
