"""Runs left in progress by a process that no longer exists (a crash, a SIGKILL, a power
cut), marked failed so that `ml-platform reexecute` can run them again: the laptop's run
launcher cannot tell Dagster's run monitoring whether a started run's process is alive,
so such a run would stay STARTED forever.

A run is orphaned when the process that started it (the pid on its RUN_START event) is
gone: no such process, a zombie, or a newer process that reuses the pid. Only instances
whose runs are stored in SQLite are swept (one machine, where a pid means something); a
process whose state cannot be read counts as alive.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

_LEFT_IN_PROGRESS = (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)


@dataclass(frozen=True)
class Orphan:
    run_id: str
    job_name: str
    status: str  # the status it was left in
    pid: int  # the process that started it, gone

    def message(self) -> str:
        """The reason recorded on the run (the UI shows it) and printed."""
        return (f"its process (pid {self.pid}) no longer exists (a crash or a kill); "
                f"`ml-platform reexecute {self.run_id}` runs again what it did not finish")


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_gone(pid: int, started_by: float) -> bool:
    """True when process `pid` does not exist, is a zombie, or started after
    `started_by` (epoch seconds: the pid was reused). False when it runs or cannot be
    told (no /proc: macOS)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    try:
        # "pid (comm) state ..." : comm may hold spaces and parentheses
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # gone since os.kill, or no /proc at all
        return Path("/proc/self").exists()
    except OSError:
        return False
    if fields[0] in ("Z", "X"):
        return True
    boot = _boot_time()
    if boot is None:
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started > started_by + 1.0  # btime and clock ticks round to a second


def sweeps(instance: DagsterInstance) -> bool:
    """Whether `instance` keeps its runs on this machine (SQLite run storage)."""
    from dagster._core.storage.runs.sqlite import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def orphan_of(instance: DagsterInstance, run) -> Orphan | None:
    """`run` as an Orphan if it is left in progress by a process that is gone."""
    if run.status not in _LEFT_IN_PROGRESS or not sweeps(instance):
        return None
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START,
                                           limit=1).records
    if not records:
        return None  # never started: run monitoring's start timeout fails it
    entry = records[0].event_log_entry
    pid = entry.dagster_event.pid if entry.dagster_event is not None else None
    if pid is None or not process_gone(pid, entry.timestamp):
        return None
    return Orphan(run.run_id, run.job_name, run.status.value, pid)


def mark_orphan(instance: DagsterInstance, orphan: Orphan) -> bool:
    """Mark `orphan` failed (canceled if it was canceling), unless it ended meanwhile."""
    run = instance.get_run_by_id(orphan.run_id)
    if run is None or run.status.value != orphan.status:
        return False  # its process is gone, so nothing else writes it: it ended before
    if run.status == DagsterRunStatus.CANCELING:
        instance.report_run_canceled(run, f"Marked canceled by ml-platform: "
                                          f"{orphan.message()}")
    else:
        instance.report_run_failed(run, f"Marked failed by ml-platform: {orphan.message()}")
    return True


def sweep_orphans(instance: DagsterInstance) -> list[Orphan]:
    """Mark every orphaned run of `instance` failed (or canceled); the ones marked."""
    if not sweeps(instance):
        return []
    marked = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=list(_LEFT_IN_PROGRESS))):
        orphan = orphan_of(instance, record.dagster_run)
        if orphan is not None and mark_orphan(instance, orphan):
            marked.append(orphan)
    return marked


def say_orphans() -> None:
    """`sweep_orphans` on the instance of DAGSTER_HOME, one printed line per run marked
    (what `ml-platform up` does at start and before restarting Dagster)."""
    try:
        with DagsterInstance.get() as instance:
            orphans = sweep_orphans(instance)
    except Exception as exc:  # noqa: BLE001 - the platform starts without it
        print(f"could not look for runs left by a crash: {exc}", file=sys.stderr, flush=True)
        return
    for orphan in orphans:
        marked = "canceled" if orphan.status == DagsterRunStatus.CANCELING.value else "failed"
        print(f"run {orphan.run_id} ({orphan.job_name}) was left {orphan.status}: "
              f"marked {marked}; {orphan.message()}", flush=True)
