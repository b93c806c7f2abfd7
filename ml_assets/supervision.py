"""How `ml-platform up` keeps its processes running: a child that exits without being
asked is started again after a growing pause (1, 2, 4 ... s); one that dies more than
`max_restarts` times within `window_seconds` is given up on, and `up` then stops the
others and exits non-zero naming it (so a supervisor above it, systemd or a container
runtime, sees a failure).

The Dagster child is `dg dev` (`dagster dev`), which stops the webserver when the daemon
dies and the other way round: it is restarted whole, and its log says which of the two
died (`dagster_death`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_RESTARTS_VARIABLE = "ML_UP_MAX_RESTARTS"
# `dagster dev`'s own line when one of its two processes exits.
_DAGSTER_DEATH = re.compile(r"(dagster-daemon|dagster-webserver) process shut down "
                            r"unexpectedly with return code (-?\d+)")
_DAGSTER_NAMES = {"dagster-daemon": "the Dagster daemon (dagster-daemon)",
                  "dagster-webserver": "the Dagster webserver (dagster-webserver)"}


@dataclass(frozen=True)
class RestartPolicy:
    """At most `max_restarts` restarts of one child within `window_seconds`, the n-th
    after `first_delay * 2**(n-1)` seconds (at most `max_delay`)."""

    max_restarts: int = 3
    window_seconds: float = 600.0
    first_delay: float = 1.0
    max_delay: float = 30.0

    @classmethod
    def from_env(cls) -> RestartPolicy:
        """The default policy, with ML_UP_MAX_RESTARTS (0: never restart) if set."""
        raw = os.environ.get(MAX_RESTARTS_VARIABLE, "").strip()
        if not raw:
            return cls()
        if not raw.isdigit():
            raise ValueError(f"{MAX_RESTARTS_VARIABLE}={raw!r} is not a whole number of "
                             "restarts (0 or more)")
        return cls(max_restarts=int(raw))

    def delay(self, recent_deaths: int) -> float | None:
        """The pause before restarting a child that died `recent_deaths` times within the
        window (this death included); None: give up on it."""
        if recent_deaths < 1:
            raise ValueError(f"recent_deaths must be 1 or more, got {recent_deaths}")
        if recent_deaths > self.max_restarts:
            return None
        return min(self.max_delay, self.first_delay * 2 ** (recent_deaths - 1))


def exit_words(code: int) -> str:
    """'exited with code 1', 'was killed by SIGKILL'."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def dagster_death(log_text: str, code: int) -> str:
    """What died, from `dg dev`'s output since its start: the daemon or the webserver
    (`dagster dev` then stops the other one and exits), else `dg dev` itself."""
    found = _DAGSTER_DEATH.findall(log_text)
    if found:
        process, returncode = found[-1]
        return (f"{_DAGSTER_NAMES[process]} {exit_words(int(returncode))} "
                "(dg dev stopped with it)")
    return f"Dagster (dg dev) {exit_words(code)}"


@dataclass
class Child:
    """One supervised process: its command, its log (appended to) and its deaths."""

    name: str
    argv: list[str]
    log: Path
    describe: Callable[[str, int], str] | None = None  # (output since start, code)
    process: subprocess.Popen | None = None
    log_offset: int = 0
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    def start(self, preexec_fn: Callable[[], None] | None) -> None:
        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n"
                      .encode())
            out.flush()
            self.log_offset = out.tell()
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn)
        self.restart_at = None

    def what_died(self, code: int) -> str:
        if self.describe is None:
            return f"{self.name} {exit_words(code)}"
        with open(self.log, "rb") as log:
            log.seek(self.log_offset)
            return self.describe(log.read().decode(errors="replace"), code)


@dataclass(frozen=True)
class GaveUp:
    """The child `up` stopped restarting: its name, what happened the last time."""

    name: str
    what: str
    deaths: int
    log: Path


class Supervisor:
    """Starts children and keeps them running under `policy` (`watch`); `say` prints a
    line per death and restart; `before_restart(child)` runs before each restart."""

    def __init__(self, policy: RestartPolicy, say: Callable[[str], None] = print,
                 preexec_fn: Callable[[], None] | None = None,
                 before_restart: Callable[[Child], None] | None = None):
        self.policy, self.say, self.preexec_fn = policy, say, preexec_fn
        self.before_restart = before_restart
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], log: Path,
              describe: Callable[[str, int], str] | None = None) -> Child:
        child = Child(name, list(argv), Path(log), describe)
        self.children.append(child)
        child.start(self.preexec_fn)
        return child

    def watch(self, tick: float = 0.5) -> GaveUp:
        """Restart children that die, until one has died too often (returned). Runs
        until then or until interrupted (KeyboardInterrupt, e.g. from SIGTERM)."""
        while True:
            now = time.monotonic()
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    what = child.what_died(child.process.returncode)
                    child.process = None
                    child.deaths.append(now)
                    while child.deaths and now - child.deaths[0] > self.policy.window_seconds:
                        child.deaths.popleft()
                    delay = self.policy.delay(len(child.deaths))
                    if delay is None:
                        return GaveUp(child.name, what, len(child.deaths), child.log)
                    self.say(f"{what}; restarting {child.name} in {delay:g} s (restart "
                             f"{len(child.deaths)} of at most {self.policy.max_restarts} "
                             f"within {self.policy.window_seconds / 60:g} min; "
                             f"log {child.log})")
                    child.restart_at = now + delay
                elif child.process is None and child.restart_at is not None \
                        and now >= child.restart_at:
                    if self.before_restart is not None:
                        self.before_restart(child)
                    child.start(self.preexec_fn)
                    self.say(f"{child.name} restarted")
            time.sleep(tick)

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGINT to every running child (the API flushes its log; `dg dev` stops the
        webserver and daemon), then SIGKILL to whichever has not exited in `timeout`."""
        running = [c.process for c in self.children
                   if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
