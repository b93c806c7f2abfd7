"""`python -m serving [--host H] [--port P]`: run the service with uvicorn (one worker).

Settings come from the environment (see serving/settings.py); arguments win.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import uvicorn

from serving.app import create_app
from serving.settings import ServingSettings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", help="bind address (ML_API_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (ML_API_PORT, default 8000)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    try:
        settings = ServingSettings.from_env(host=args.host, port=args.port)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A prediction thread holds the GIL for milliseconds at a time; a shorter switch
    # interval lets the event loop answer in between.
    sys.setswitchinterval(0.001)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM (in-flight requests answered,
    # prediction log flushed), then re-raises the signal; that is a clean exit.
    signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1,
                    log_level=args.log_level, access_log=settings.access_log,
                    timeout_graceful_shutdown=30)
    except (KeyboardInterrupt, _Stopped):
        pass
    return 0


class _Stopped(Exception):
    """SIGTERM, raised once the server has stopped."""


def _stopped(signum, frame):
    raise _Stopped


if __name__ == "__main__":
    sys.exit(main())
