"""The executor chosen by configuration (ml_assets/execution.py): ML_EXECUTOR, and how the
multiprocess executor starts its step processes (ML_START_METHOD, PRELOAD_MODULES)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import in_process_executor
from dagster._core.definitions.executor_definition import (
    _core_multiprocess_executor_creation,
)

from ml_assets.execution import PRELOAD_MODULES, build_executor, start_method

ROOT = Path(__file__).resolve().parents[2]


def _multiprocess(monkeypatch, method: str | None):
    """The executor Dagster builds from `build_executor('multiprocess')`'s config."""
    if method is None:
        monkeypatch.delenv("ML_START_METHOD", raising=False)
    else:
        monkeypatch.setenv("ML_START_METHOD", method)
    monkeypatch.setenv("ML_MAX_CONCURRENT", "3")
    resolved = build_executor("multiprocess").config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    config = resolved.value["config"]
    return config, _core_multiprocess_executor_creation(config)


def test_multiprocess_steps_are_forked_from_a_preloaded_server_by_default(monkeypatch):
    config, executor = _multiprocess(monkeypatch, None)
    assert config["start_method"] == {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}
    assert executor._start_method == "forkserver"
    assert list(executor._explicit_forkserver_preload) == list(PRELOAD_MODULES)
    assert executor._max_concurrent == 3


@pytest.mark.parametrize("value", ["spawn", " Spawn "])
def test_spawn_stays_reachable(monkeypatch, value):
    config, executor = _multiprocess(monkeypatch, value)
    assert config["start_method"] == {"spawn": {}}
    assert executor._start_method == "spawn"


def test_an_empty_start_method_is_the_default(monkeypatch):
    monkeypatch.setenv("ML_START_METHOD", "  ")
    assert start_method() == {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}


@pytest.mark.parametrize("value", ["fork", "forkserver,spawn"])
def test_a_bad_start_method_names_the_variable_and_the_choices(monkeypatch, value):
    monkeypatch.setenv("ML_START_METHOD", value)
    expected = f"ML_START_METHOD={value!r} is not one of forkserver, spawn"
    with pytest.raises(ValueError) as raised:
        build_executor("multiprocess")
    assert str(raised.value) == expected


def test_the_start_method_is_read_only_for_the_multiprocess_executor(monkeypatch):
    monkeypatch.setenv("ML_START_METHOD", "fork")
    assert build_executor("in_process") is in_process_executor


def test_a_bad_executor_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("ML_EXECUTOR", "threads")
    with pytest.raises(ValueError) as raised:
        build_executor()
    assert str(raised.value) == ("ML_EXECUTOR='threads' is not one of in_process, "
                                 "multiprocess, celery")


# Imports PRELOAD_MODULES as the forkserver does, then reports what a fork would copy.
PROBE = """
import json, os, sys, threading
from ml_assets.execution import PRELOAD_MODULES
before = set(os.listdir("/proc/self/fd"))
for name in PRELOAD_MODULES:
    __import__(name)  # the forkserver would swallow an ImportError: here it fails
opened = []
for fd in sorted(set(os.listdir("/proc/self/fd")) - before):
    try:
        opened.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # the listing's own descriptor, closed since
        pass
print(json.dumps({"threads": [t.name for t in threading.enumerate()], "opened": opened,
                  "native": len(os.listdir("/proc/self/task")),
                  "onnxruntime": "onnxruntime" in sys.modules}))
"""
# The native threads every numeric process has: the thread pools of numpy's and scipy's
# OpenBLAS and the background thread of pyarrow's jemalloc, all of which handle fork.
BASELINE = """
import os
import numpy, pyarrow.parquet, scipy.linalg
print(len(os.listdir("/proc/self/task")))
"""


def test_preloaded_modules_import_and_leave_nothing_a_fork_would_share():
    """A forked step inherits the server's memory but not its threads: a module that
    started a thread, or opened a file or socket, at import would leave its state in
    every step (a lock held by a thread that does not exist there, one SQLite
    connection written by several processes)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["threads"] == ["MainThread"]
    baseline = subprocess.run([sys.executable, "-c", BASELINE], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=300, env=env)
    assert probe["native"] == int(baseline.stdout.strip().splitlines()[-1]), \
        "a preloaded module started a native thread of its own at import"
    assert probe["opened"] == [], "a preloaded module opened a file or socket at import"
    # onnxruntime 1.31's telemetry opens a SQLite file and starts a thread at import
    assert probe["onnxruntime"] is False
