"""A program the tests start: in its own session (so that what it starts can be stopped
with it), its output in a log file, stopped by a signal and then, after a bounded wait,
by SIGKILL to its whole process group. The API launcher (api_process.py), the
production stack and the deploy-file tests all start their programs through it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple


class Stopped(NamedTuple):
    code: int  # the exit code (-N: killed by signal N)
    log: str  # the whole output


class LoggedProcess:
    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path,
                 cwd: Path | None = None):
        self.argv, self.log_path = list(argv), Path(log_path)
        with open(self.log_path, "ab") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self.argv, env=dict(env), cwd=cwd, stdout=out,
                                            stderr=subprocess.STDOUT,
                                            start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self, tail: int | None = None) -> str:
        """The output so far (its last `tail` characters)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if tail is None else text[-tail:]

    def send(self, sig: int, group: bool = False) -> None:
        """Send `sig` to the process, or to its whole process group (its children too,
        even when the leader already exited)."""
        try:
            if group:
                os.killpg(self.process.pid, sig)
            elif self.running:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass  # gone already

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60.0,
             group: bool = False) -> Stopped:
        """Send `sig` (None: it was sent already) unless the process has exited, wait up
        to `timeout` seconds, then SIGKILL the process group; whatever the leader left
        behind in its group is killed too. Returns (exit code, log)."""
        if sig is not None and self.running:
            self.send(sig, group)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL, group=True)
            self.process.wait(30)
        self.send(signal.SIGKILL, group=True)  # stragglers (grandchildren)
        return Stopped(self.process.returncode, self.log())


def session_processes(session: int) -> dict[int, str]:
    """The live processes of session `session` (a LoggedProcess's pid, or any program
    started with start_new_session=True) and their command lines, from /proc (Linux)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != session or fields[0] in ("Z", "X"):  # 6th: the session
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        found[int(entry.name)] = " ".join(a.decode(errors="replace") for a in argv if a)
    return found
