"""Request guards shared by the prediction and admin routes.

`require_json`: /predict, /predict/batch and /admin/* take `application/json` only
(charset UTF-8 allowed), so a cross-site "simple" request (text/plain, form data)
cannot reach them: anything else is a 415 before the body is read.
`off_loop`: bodies above `OFF_LOOP_BYTES` are parsed and validated in a worker
thread, so one large body does not stall every other request on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import HTTPException, Request

from serving.http.responses import ErrorResponse
from serving.model.input_limits import excerpt

OFF_LOOP_BYTES = 64 * 1024
_T = TypeVar("_T")
# Two threads: a large body or two parse while small ones are answered on the loop.
_PARSER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parse-body")

UNSUPPORTED_MEDIA_TYPE: dict[int | str, dict[str, Any]] = {
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json "
          "(charset=utf-8 allowed)."}}


def json_content_type(header: str | None) -> str | None:
    """None when `header` is application/json (optionally charset=utf-8), else why not."""
    if not header:
        return "Content-Type application/json is required"
    mime, *params = (part.strip() for part in header.split(";"))
    if mime.lower() != "application/json":
        return f"Content-Type must be application/json, not {excerpt(mime, 60)!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            return f"unsupported Content-Type parameter {excerpt(param, 60)!r}: only " \
                   "charset=utf-8 is allowed"
    return None


async def require_json(request: Request) -> None:
    """415 unless the request declares an application/json body."""
    problem = json_content_type(request.headers.get("content-type"))
    if problem is not None:
        raise HTTPException(415, detail=problem)


async def off_loop(body: bytes, parse: Callable[..., _T], *args: Any) -> _T:
    """`parse(*args)` on the event loop for small bodies, in a parser thread for large."""
    if len(body) <= OFF_LOOP_BYTES:
        return parse(*args)
    return await in_parser(parse, *args)


async def in_parser(parse: Callable[..., _T], *args: Any) -> _T:
    """`parse(*args)` in a parser thread whatever the body's size: for formats whose
    decoded size is unrelated to their length (a few hundred bytes of Parquet can
    expand to gigabytes before a bound refuses them)."""
    return await asyncio.get_running_loop().run_in_executor(_PARSER, parse, *args)
