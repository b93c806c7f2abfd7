"""What a load probe's child may do instead of loading (serving/model/load_probe.py's
`work`), for the tests of what its death looks like to the serving process: crash on a
signal, allocate past its memory limit, never return."""

from __future__ import annotations

import os
import signal
import time


def crash(settings, version, directory, record) -> None:
    """Die by SIGSEGV, as compiled code following a bad index does."""
    os.kill(os.getpid(), signal.SIGSEGV)


def allocate(settings, version, directory, record) -> None:
    """Ask for twice the probe's memory limit, as an inflating array would."""
    import numpy as np

    np.ones(2 * settings.load_probe_memory_bytes // 8)


def hang(settings, version, directory, record) -> None:
    """Never return, as a tree walk caught in a cycle does."""
    while True:
        time.sleep(1)
