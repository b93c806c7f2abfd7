"""The directory the supervisor and its workers share (serving/workers/__init__.py
describes its files): written atomically, read as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GENERATION = "reload.generation"
FORCED = "reload.force"  # the last forced generation (its own slot: never overwritten
# by a poll's bump)
SUPERVISOR = "supervisor.pid"


class SharedDir:
    """The directory the supervisor and its workers share."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls) -> SharedDir:
        """A fresh private (0700) directory for one start of the supervisor."""
        shared = cls(tempfile.mkdtemp(prefix="ml-api-workers-"))
        shared._write(SUPERVISOR, {"pid": os.getpid()})
        return shared

    @classmethod
    def from_env(cls) -> SharedDir | None:
        raw = os.environ.get(MULTIPROC_ENV, "").strip()
        return cls(raw) if raw else None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _write(self, name: str, payload: dict) -> None:
        """Atomically: readers see the old content or the new, never a part."""
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(json.dumps(payload).encode())
        os.replace(tmp, self.path / name)

    def _read(self, name: str) -> dict | None:
        try:
            value = json.loads((self.path / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def supervisor_pid(self) -> int | None:
        found = self._read(SUPERVISOR)
        return int(found["pid"]) if found and "pid" in found else None

    def bump(self, version: str, force: bool = False) -> None:
        """Tell every other worker to refresh (they skip it when they already serve
        `version`, unless `force`). A forced bump is also written to its own file,
        first, so that a later bump (a poll's swap) cannot erase the force flag."""
        now = time.time_ns()
        payload = {"token": f"{os.getpid()}-{now}", "pid": os.getpid(), "version": version,
                   "force": force, "ns": now}
        if force:
            self._write(FORCED, payload)
        self._write(GENERATION, payload)

    def generation(self) -> dict | None:
        return self._read(GENERATION)

    def forced(self) -> dict | None:
        """The last forced generation (also the generation until a later bump)."""
        return self._read(FORCED)

    def report(self, pid: int, **state: Any) -> None:
        self._write(f"worker-{pid}.json", {"pid": pid, **state})

    def read_report(self, pid: int) -> dict | None:
        return self._read(f"worker-{pid}.json")
