"""Which executor runs the steps, chosen by ML_EXECUTOR (never by editing code).

- in_process (default): the graph is a chain and every ML step already uses all
  cores, so a Python start-up per step would only add time;
- multiprocess: one process per step, ML_MAX_CONCURRENT at once, started as
  ML_START_METHOD says: `forkserver` (the default) forks each step from a server that
  imported PRELOAD_MODULES once, so a step starts in a fraction of a second; `spawn`
  (Dagster's own default) starts a fresh interpreter per step, which imports Dagster,
  MLflow, scikit-learn and skops again (seconds per step, tens on a loaded machine);
- celery: steps go to Celery workers (dagster-celery) over Redis or RabbitMQ
  (ML_CELERY_BROKER, ML_CELERY_BACKEND) through the queue ML_CELERY_QUEUE (the
  workers' `-q`), so training and drift scoring run on other processes or machines.
  Needs a persistent instance (DAGSTER_HOME) and storage every worker can read.
"""

import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

EXECUTORS = ("in_process", "multiprocess", "celery")
START_METHODS = ("forkserver", "spawn")

# What the forkserver imports once before forking every step: the code location (what
# a step process reconstructs its job from) and the heavy modules steps import lazily.
# Forking is safe only from a process with no other thread and no open file or socket
# that is not fork-aware, so nothing here may create one at import (a test checks: no
# Python thread, no file, no native thread beyond the fork-aware pools of OpenBLAS and
# pyarrow's jemalloc that any numpy/pyarrow process has). onnxruntime does:
# its telemetry (1.31) opens a SQLite file and starts a thread at import, so each step
# imports it itself (about 0.1 s).
PRELOAD_MODULES = ("ml_assets.definitions", "mlflow.artifacts", "skops.io", "onnx",
                   "sklearn.ensemble", "pyarrow.parquet",
                   # a step's MlflowClient on a database store (SQLite, PostgreSQL): ~1 s
                   "mlflow.store.tracking.sqlalchemy_store",
                   "mlflow.store.model_registry.sqlalchemy_store")


# Celery settings shared by the executor and the workers (docker/entrypoint-code.sh
# writes the same into the workers' celery.yaml). A step's task is acknowledged when it
# finishes, not when a worker takes it: if the whole worker (container, host) is lost
# mid-step, the broker hands the task to another worker and the step runs again. A step
# whose own process dies (OOM kill) still fails cleanly: Celery acknowledges failed
# tasks, so a step that kills its process is not redelivered forever.
CELERY_CONFIG = {"task_acks_late": True}


def celery_config() -> dict:
    """CELERY_CONFIG plus the broker's visibility timeout (ML_CELERY_VISIBILITY_TIMEOUT,
    seconds, Celery's 3600 by default). It matters with Redis only: a task not
    acknowledged within it goes to another worker, so a lost worker's step is retried
    after it, and a step running longer than it would run twice: set it above the
    longest step. RabbitMQ redelivers when the worker's connection drops, at once."""
    from dagster_celery.defaults import broker_transport_options

    raw = os.environ.get("ML_CELERY_VISIBILITY_TIMEOUT", "").strip() or "3600"
    try:
        visibility = int(raw)
    except ValueError:
        raise ValueError(f"ML_CELERY_VISIBILITY_TIMEOUT={raw!r} is not a number of "
                         "seconds") from None
    return CELERY_CONFIG | {"broker_transport_options": {
        **broker_transport_options, "visibility_timeout": visibility}}


def celery_queue() -> str:
    """The Celery queue steps are sent to; workers consume it with `-q`."""
    return os.environ.get("ML_CELERY_QUEUE", "").strip() or "dagster"


def start_method() -> dict:
    """The multiprocess executor's `start_method` config, from ML_START_METHOD."""
    method = os.environ.get("ML_START_METHOD", "").strip().lower() or "forkserver"
    if method == "forkserver":
        return {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}
    if method == "spawn":
        return {"spawn": {}}
    raise ValueError(f"ML_START_METHOD={method!r} is not one of {', '.join(START_METHODS)}")


def build_executor(kind: str | None = None) -> ExecutorDefinition:
    """The executor ML_EXECUTOR names (`kind` overrides it)."""
    kind = (kind or os.environ.get("ML_EXECUTOR") or "in_process").strip().lower()
    if kind == "in_process":
        return in_process_executor
    if kind == "multiprocess":
        return multiprocess_executor.configured(
            {"max_concurrent": int(os.environ.get("ML_MAX_CONCURRENT", "2")),
             "start_method": start_method()})
    if kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured({
            "broker": os.environ.get("ML_CELERY_BROKER", "redis://127.0.0.1:6379/0"),
            "backend": os.environ.get("ML_CELERY_BACKEND", "redis://127.0.0.1:6379/1"),
            "include": ["ml_assets.definitions"],
            "config_source": celery_config() | {"task_default_queue": celery_queue()},
        })
    raise ValueError(f"ML_EXECUTOR={kind!r} is not one of {', '.join(EXECUTORS)}")
