"""Slowloris against a real `python -m serving`: connections that trickle a request's
headers, or its body, are closed once ML_API_HEADER_TIMEOUT_SECONDS /
ML_API_BODY_TIMEOUT_SECONDS pass (set short here), and /health keeps answering."""

from __future__ import annotations

import select
import socket
import time

import httpx

from ml_assets_tests.support.api_process import api_process

SOCKETS = 50  # half trickle headers, half a body
TIMEOUT_SECONDS = 1.0
TRICKLE_EVERY = 0.25


def _open(port: int, body: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if body:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 100000\r\n\r\n{")
    else:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sock.setblocking(False)
    return sock


def test_trickling_connections_are_closed_and_health_answers(mlflow_store, cancer_champion,
                                                             tmp_path):
    env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": cancer_champion.name,
           "ML_API_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
           "ML_API_BODY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}
    with api_process(env, tmp_path) as api:
        sockets = {_open(api.port, body=i % 2 == 1): (i % 2 == 1) for i in range(SOCKETS)}
        received: dict[socket.socket, bytes] = {s: b"" for s in sockets}
        closed: dict[socket.socket, float] = {}
        started = time.monotonic()
        health: list[float] = []
        while len(closed) < SOCKETS and time.monotonic() - started < 15:  # bounded
            for sock, body in sockets.items():
                if sock in closed:
                    continue
                try:
                    sock.send(b" " if body else b"X-Slow: 1\r\n")
                except OSError:  # reset or broken pipe: the server closed it
                    closed[sock] = time.monotonic() - started
            readable, _, _ = select.select([s for s in sockets if s not in closed], [], [],
                                           TRICKLE_EVERY)
            for sock in readable:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    closed[sock] = time.monotonic() - started
            t = time.perf_counter()
            assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200
            health.append(time.perf_counter() - t)
        for sock in sockets:
            sock.close()
    assert len(closed) == SOCKETS, f"{SOCKETS - len(closed)} trickling connections still open"
    # Closed by the deadlines (1 s), not at the end of the test.
    assert max(closed.values()) < 8 * TIMEOUT_SECONDS, sorted(closed.values())
    bodies = [received[s] for s, body in sockets.items() if body]
    assert all(b.startswith(b"HTTP/1.1 408") and b"ML_API_BODY_TIMEOUT_SECONDS" in b
               for b in bodies), bodies[:2]
    assert max(health) < 1.0
