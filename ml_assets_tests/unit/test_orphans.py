"""Whether the process that started a run is gone (ml_assets/orphans.py)."""

import os
import subprocess
import sys
import time

import pytest

from ml_assets.orphans import process_gone

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def test_a_live_process_is_not_gone_and_an_exited_one_is():
    assert not process_gone(os.getpid(), time.time())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no such pid any more (until reused)
    assert process_gone(child.pid, time.time())


def test_a_zombie_is_gone_and_a_reused_pid_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert process_gone(child.pid, time.time())  # exited, not yet reaped
    finally:
        child.wait()
    # This process is alive, but a run stamped years before it started was started by
    # another process with the same pid: that one is gone.
    assert process_gone(os.getpid(), time.time() - 10 * 365 * 86400)
