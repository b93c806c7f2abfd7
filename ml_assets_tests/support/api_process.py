"""The one way the tests run the prediction service as a real process: `python -m serving`
(uvicorn) on 127.0.0.1 and a free port, its output in a log file, its prediction log,
platform home and log file under the test's own directory (named by the port, so one
directory holds several servers).

    with api_process({"MLFLOW_TRACKING_URI": uri, "ML_REGISTERED_MODEL_NAME": name},
                     tmp_path) as api:
        httpx.post(f"{api.url}/predict", json=row)
        code, log = api.stop()  # SIGTERM: graceful, the prediction log is flushed

`env` is laid over this process's environment (without ML_PREDICTION_LOG_URL, unless
`env` names one) and the defaults below; a value of None removes a variable. Leaving
the block stops whatever still runs (SIGTERM, then SIGKILL to its process group)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.services import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]


class ApiProcess(LoggedProcess):
    """A running `python -m serving`: .url, .port, .env, .process, .log(), and .stop()
    (SIGTERM, SIGKILL after a timeout) -> (exit code, log)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, port: int,
                 cwd: Path = REPO):
        super().__init__(argv, env, log_path, cwd=cwd)
        self.env, self.port = env, port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def address(self) -> str:
        """host:port (what tritonclient and MLflow's scoring client take)."""
        return f"127.0.0.1:{self.port}"

    @property
    def prediction_log(self) -> Path:
        """The SQLite prediction log (ML_PREDICTION_LOG_PATH)."""
        return Path(self.env["ML_PREDICTION_LOG_PATH"])

    def wait_ready(self, timeout: float = 90.0) -> ApiProcess:
        """Until GET /ready answers 200; fails at once, with the log, if it exits."""
        wait_http(f"{self.url}/ready", self.process, timeout, lambda: self.log(4000))
        return self


def start_api(env: Mapping[str, str | None], root: Path, *, workers: int = 1,
              log_level: str = "warning", command: list[str] | None = None,
              environ: Mapping[str, str] | None = None, cwd: Path = REPO) -> ApiProcess:
    """Start the service without waiting for it (see api_process). `command` replaces
    `python -m serving ...` (an image's CMD), `cwd` the repository as its directory;
    `environ` replaces this process's environment as the base (a container's, complete:
    no defaults are added to it)."""
    if environ is None:
        port = int(env.get("ML_API_PORT") or free_port())
        base = {k: v for k, v in os.environ.items() if k != "ML_PREDICTION_LOG_URL"}
        base.update({"ML_API_HOST": "127.0.0.1", "ML_API_POLL_SECONDS": "0",
                     "ML_PREDICTION_LOG_PATH": str(root / f"prediction_log_{port}.db"),
                     "ML_PLATFORM_HOME": str(root / f"home_{port}")})
    else:
        port = int(env.get("ML_API_PORT") or environ.get("ML_API_PORT") or free_port())
        base = dict(environ)
    merged = {**base, **env, "ML_API_PORT": str(port)}
    full = {k: v for k, v in merged.items() if v is not None}
    argv = command or [sys.executable, "-m", "serving", "--log-level", log_level,
                       *(["--workers", str(workers)] if workers != 1 else [])]
    return ApiProcess(argv, full, root / f"api_{port}.log", port, cwd)


@contextlib.contextmanager
def api_process(env: Mapping[str, str | None], root: Path, *, workers: int = 1,
                log_level: str = "warning", wait: bool = True, ready_timeout: float = 90.0,
                stop_timeout: float = 60.0, command: list[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Iterator[ApiProcess]:
    """The service, ready (unless `wait=False`) for the block, stopped after it."""
    api = start_api(env, root, workers=workers, log_level=log_level, command=command,
                    environ=environ)
    try:
        if wait:
            api.wait_ready(ready_timeout)
        yield api
    finally:
        api.stop(timeout=stop_timeout)
