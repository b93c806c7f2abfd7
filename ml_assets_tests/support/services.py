"""The local servers the tests talk to (PostgreSQL, Redis, RabbitMQ on 127.0.0.1), and
free ports for the processes they start. One rule for a missing server: the test skips
on a developer machine and fails under CI=true, where the servers are part of the job."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable

import pytest


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(*services: tuple[str, int, str]) -> None:
    """Each (host, port, name) must accept connections: skip, or fail under CI=true."""
    missing = [f"{name} ({host}:{port})" for host, port, name in services
               if not reachable(host, port)]
    if missing:
        skip_or_fail(f"not reachable: {', '.join(missing)}")


def skip_or_fail(reason: str) -> None:
    """A prerequisite is missing: skip on a developer machine, fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen | None = None, timeout: float = 90.0,
              detail: Callable[[], str] = str) -> None:
    """Until GET `url` answers 200; fails at once if `process` exits, or after `timeout`
    seconds (`detail()`, e.g. the process's log, is added to the message)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{url}: server exited with {process.returncode}\n{detail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s\n{detail()}")


PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_SERVER = f"postgresql://postgres@{PG_HOST}:{PG_PORT}"


def pg_admin(statement: str, params: tuple = (), database: str = "postgres") -> list[tuple]:
    """Run one statement on the local PostgreSQL (autocommit); its rows, if any."""
    import psycopg2

    conn = psycopg2.connect(f"{PG_SERVER}/{database}", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def require_postgres() -> None:
    """The local PostgreSQL answers: skip, or fail under CI=true."""
    import psycopg2

    try:
        pg_admin("SELECT 1")
    except psycopg2.OperationalError as exc:
        skip_or_fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}: {exc}".strip())


def until(predicate, timeout: float = 30.0, every: float = 0.1):
    """Poll `predicate` until it returns something truthy (that value) or `timeout`
    seconds pass (then its last value): a bounded wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()
