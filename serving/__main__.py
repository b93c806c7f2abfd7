"""`python -m serving [--host H] [--port P] [--workers N]`: run the service with uvicorn.

Settings come from the environment (see serving/settings.py); arguments win. One worker
(ML_API_WORKERS=1, the default) serves in this process; with more, this process
supervises that many worker processes on one port (serving/workers/).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from ml_assets.core.prediction_log import PredictionLogError
from serving.app import create_app, open_log
from serving.http.connections import uvicorn_options, with_header_deadline
from serving.settings import ServingSettings, SettingsError
from serving.workers.supervisor import run_workers


def serve(app, settings: ServingSettings, log_level: str) -> None:
    """One uvicorn process serving `app` until a signal, with the header deadline and the
    connection limits of `settings`; exits STARTUP_FAILURE when the app cannot start."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1,
                            log_level=log_level, access_log=settings.access_log,
                            timeout_graceful_shutdown=30, **uvicorn_options(settings))
    server = uvicorn.Server(with_header_deadline(config, settings))
    server.run()
    if not server.started:  # as uvicorn.run: the app could not start
        sys.exit(STARTUP_FAILURE)


def main(argv: list[str] | None = None) -> int:
    # Models open only through ml_assets.core.artifacts.loading; MLflow's own loaders
    # (which trust the artifact's format and skops list) are disabled in this process.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", help="bind address (ML_API_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (ML_API_PORT, default 8000)")
    parser.add_argument("--workers", type=int,
                        help="worker processes (ML_API_WORKERS, default 1)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    try:
        settings = ServingSettings.from_env(host=args.host, port=args.port,
                                            workers=args.workers)
        if settings.workers < 1:
            raise SettingsError(f"--workers {settings.workers}: give at least 1")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A prediction thread holds the GIL for milliseconds at a time; a shorter switch
    # interval lets the event loop answer in between.
    sys.setswitchinterval(0.001)
    # Pre-flight: a log that cannot be opened is a configuration error, named now.
    try:
        log = open_log(settings)
    except PredictionLogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        # Each worker opens its own connection; this one only proved the log opens (and
        # created the table, and the SQLite file in WAL mode, before N writers race).
        log.close()
        return run_workers(settings, args.log_level)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM (in-flight requests answered,
    # prediction log flushed), then re-raises the signal; that is a clean exit.
    signal.signal(signal.SIGTERM, _stopped)
    app = create_app(settings, prediction_log=log)
    try:
        serve(app, settings, args.log_level)
    except (KeyboardInterrupt, _Stopped):
        pass
    lost = getattr(app.state, "prediction_log_lost_rows", 0)
    if lost:
        print(f"error: {lost} prediction-log rows were neither stored nor spilled "
              "(see the log above)", file=sys.stderr)
        return 1
    return 0


class _Stopped(Exception):
    """SIGTERM, raised once the server has stopped."""


def _stopped(signum, frame):
    # Raised once: uvicorn re-raises the SIGTERM it caught, and the event loop may still
    # hold the first delivery; run again from the loop's callback during its shutdown,
    # the exception would be logged as a traceback. Shutdown is under way either way.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stopped


if __name__ == "__main__":
    sys.exit(main())
