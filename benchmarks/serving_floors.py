"""The HTTP floors of benchmarks/bench_serving.py: what uvicorn alone costs a request on
this machine, the ceiling any Python service on it can reach. Two apps, each served
by uvicorn with 1 worker and the service's own event loop and HTTP parser choice
(uvicorn's `auto`: uvloop and httptools when installed): a FastAPI route returning a
constant, and a raw ASGI app answering the same constant. Each reads the request
body, so a POST costs them what it costs every server in the table.

    python benchmarks/serving_floors.py fastapi|asgi PORT
"""


import sys
from pathlib import Path

ANSWER = b'{"prediction":"1","confidence":0.9}'
FLOORS = {"fastapi": "FastAPI route returning a constant",
          "asgi": "raw ASGI app on uvicorn"}


def fastapi_app():
    from fastapi import FastAPI, Request, Response

    app = FastAPI()

    @app.post("/predict")
    async def constant(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    @app.get("/ready")
    async def ready() -> Response:
        return Response(b"{}", media_type="application/json")

    return app


async def asgi_app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:  # the whole body, as a real route would
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


def floor_servers(server, env: dict, workdir: Path) -> list:
    """Both floors as benchmark servers (`server` is serving_load.Server)."""
    return [server(label, [sys.executable, __file__, key, "{port}"], env, "/ready",
                   workdir / f"floor-{key}.log") for key, label in FLOORS.items()]


def main(kind: str, port: int) -> None:
    import uvicorn

    app = fastapi_app() if kind == "fastapi" else asgi_app
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
