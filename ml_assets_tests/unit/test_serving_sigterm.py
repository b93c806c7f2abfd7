"""The API process's SIGTERM handler: raised once, so a second delivery during shutdown
(uvicorn re-raises the SIGTERM it caught while the event loop may still hold the first)
is not raised again from the loop's callback, where it would be logged as a traceback."""

import signal

import pytest


def test_sigterm_stops_the_server_once_and_ignores_a_second_delivery():
    from serving.__main__ import _Stopped, _stopped

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _stopped)
        with pytest.raises(_Stopped):
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.raise_signal(signal.SIGTERM)  # the second delivery: nothing raised
    finally:
        signal.signal(signal.SIGTERM, before)
