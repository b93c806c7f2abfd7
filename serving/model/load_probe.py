"""The load probe: a new version is first loaded and smoke-predicted in a child process
with a time limit (ML_API_LOAD_PROBE_SECONDS) and a memory limit
(ML_API_LOAD_PROBE_MEMORY_BYTES, added to what the child starts with, as RLIMIT_AS),
so a file that passes every check and still crashes, hangs or exhausts memory in its
smoke prediction or compiled graph kills the child, not the serving process: the
version is refused and the served one keeps serving. (The build itself, skops' rebuild
after the array and booster-record checks, runs in the serving process first.)

Children are forked from one forkserver that has already imported the loader (started
in the background once the service serves, `warm`; single-threaded: no lock of a
serving thread, no OpenMP or ONNX Runtime pool, no MLflow connection is inherited); a
probe then costs a fork plus the load itself. The child sees the service's ML_* and
MLFLOW_* environment as it is at the probe, and works in a temporary directory the
parent removes whatever happens. Under a container's memory limit the child offers
itself to the kernel's OOM killer first (oom_score_adj 1000).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

REASON = "load_probe_failed"
# What the forkserver imports once, so that a child only pays for the load itself.
PRELOAD = ["serving.model.store", "ml_assets.core.artifacts.onnx.runtime", "onnx",
           "onnxruntime", "skops.io", "sklearn.ensemble", "sklearn.compose",
           "sklearn.preprocessing", "sklearn.impute", "sklearn.feature_selection",
           "lightgbm", "xgboost"]
_ENV_PREFIXES = ("ML_", "MLFLOW_")
_context_lock = threading.Lock()
_context: Any = None


class ProbeFailed(Exception):
    """The child crashed, timed out or ran out of memory; the message says which."""


def _forkserver():
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _context = context
        return _context


def _nothing() -> None:
    """What the warm-up child runs."""


def warm() -> None:
    """Start the forkserver (its imports) now, off any request, so that the first probe
    costs a fork and the load rather than the server's start too."""
    child = _forkserver().Process(target=_nothing, name="load-probe-warm-up", daemon=True)
    child.start()
    child.join(60)


def _virtual_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _memory_error(exc: BaseException | None) -> bool:
    """A MemoryError in the chain, or a library that could not be mapped (RLIMIT_AS)."""
    while exc is not None:
        if isinstance(exc, MemoryError) or (isinstance(exc, (ImportError, OSError)) and (
                "failed to map" in str(exc) or "Cannot allocate memory" in str(exc))):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _child(work, settings, version: str, directory: str, record, memory_bytes: int,
           environment: dict[str, str], workdir: str, conn: Connection) -> None:
    """Run in the child: `work` (the service's own `ModelStore.load` of the downloaded
    `directory`: checks, load, smoke prediction, compiled graph), then report
    {status, ...} on `conn`."""
    try:  # under a container's memory limit the kernel kills the child, not the service
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass
    for key in [k for k in os.environ if k.startswith(_ENV_PREFIXES)]:
        del os.environ[key]
    os.environ.update(environment)
    tempfile.tempdir = workdir
    limit = _virtual_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.perf_counter()
    try:
        work(settings, version, directory, record)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        if _memory_error(exc):
            conn.send({"status": "memory"})
        elif type(exc).__name__ == "ModelRejected":  # the store's refusal, as it says it
            conn.send({"status": "rejected", "reason": str(getattr(exc, "reason", "load_error")),
                       "message": str(exc)})
        else:
            conn.send({"status": "error", "message": f"{type(exc).__name__}: {exc}"[:300]})
        return
    conn.send({"status": "ok", "seconds": time.perf_counter() - started,
               "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def probe(work, settings, version: str, directory: str, record) -> dict:
    """Load `version` (downloaded in `directory`, with its registry `record`) in a child
    process within the settings' limits. Returns the child's
    report ({"status": "ok", "seconds", "peak_bytes", "wall_seconds"} or {"status":
    "rejected", "reason", "message"}: the child's own refusal, for the caller to raise);
    raises ProbeFailed when the child crashed, timed out, ran out of memory or failed
    otherwise. `work(settings, version, directory, record)` is what the child runs: a
    module-level function (the store's `load_in_child`; tests pass others to see what a
    child's death looks like)."""
    seconds = settings.load_probe_seconds
    memory = settings.load_probe_memory_bytes
    limits = (f"a child process limited to {seconds:g} s (ML_API_LOAD_PROBE_SECONDS) and "
              f"{memory / 2**20:,.0f} MiB more memory (ML_API_LOAD_PROBE_MEMORY_BYTES)")
    what = "its load and smoke prediction"
    environment = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    context = _forkserver()
    workdir = tempfile.mkdtemp(prefix="serving-probe-")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, name=f"load-probe-{version}", daemon=True,
                            args=(work, replace(settings, load_probe_seconds=0.0), version,
                                  directory, record, memory, environment, workdir, sender))
    started = time.perf_counter()
    try:
        child.start()
        sender.close()
        ready = wait([receiver, child.sentinel], timeout=seconds)
        report = None
        if receiver in ready:
            try:
                report = receiver.recv()
            except EOFError:
                report = None
        if report is None and not ready:
            raise ProbeFailed(f"{what} did not finish within {seconds:g} s in {limits}; "
                              "the child was killed")
        child.join(timeout=5)
        if report is None:
            code = child.exitcode
            how = _signal_name(code) if code is not None and code < 0 else f"exit code {code}"
            raise ProbeFailed(f"{what} killed {limits} ({how})")
        if report["status"] == "memory":
            raise ProbeFailed(f"{what} ran out of memory in {limits}")
        if report["status"] == "error":
            raise ProbeFailed(f"{what} failed in {limits} ({report['message']})")
        report["wall_seconds"] = time.perf_counter() - started
        return report
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
        receiver.close()
        shutil.rmtree(workdir, ignore_errors=True)
