"""Optional API-key authentication: off unless ML_API_KEY is set.

A client sends the key as `X-API-Key: <key>` or `Authorization: Bearer <key>`.
Health endpoints (/health, /ready, /ping) and the API docs stay open.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="The service's API key (ML_API_KEY).")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token.")


def api_key_dependency(expected: str):
    """A FastAPI dependency that accepts `expected` in either header, or answers 401."""
    expected_bytes = expected.encode()

    async def require_api_key(
        api_key: Annotated[str | None, Depends(_api_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        offered = api_key or (bearer.credentials if bearer else None)
        if offered is None or not hmac.compare_digest(offered.encode(), expected_bytes):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key: send X-API-Key or Authorization: Bearer",
                headers={"WWW-Authenticate": "Bearer"})

    return require_api_key
