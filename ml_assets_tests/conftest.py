"""Shared fixtures, and the layers. One MLflow SQLite store per test session: MLflow's
first use of a new store runs migrations for seconds, so every test shares it and
isolates itself by experiment / registered-model name instead.

Each test is marked by the folder it lives in, never by hand: `unit` (pure functions),
`assets` (the graph in-process), `api` (the service in-process), `simulations` (seeded
statistical simulations and multi-day replays of the loop, in-process), `e2e` (real
processes: uvicorn, the CLI, dg) and `production` (PostgreSQL, Redis, RabbitMQ on
127.0.0.1). The last three are also `slow`: the inner loop is `pytest -m "not slow"`."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import pytest


def _fast_temp_root() -> None:
    """Temporary files of the run (MLflow and Dagster SQLite stores, artifacts, logs) on
    a RAM disk when the machine has one: every SQLite commit fsyncs, and a graph run
    commits hundreds of times (about 40 % of an asset test's time on a plain disk). The
    stores are the real ones; only the disk under them is faster. ML_TEST_TMPDIR
    chooses another directory; an explicit --basetemp still wins."""
    chosen = os.environ.get("ML_TEST_TMPDIR")
    if not chosen:
        shm = Path("/dev/shm")
        try:
            usable = (shm.is_dir() and os.access(shm, os.W_OK)
                      and shutil.disk_usage(shm).free >= 4 * 2**30)
        except OSError:
            usable = False
        if not usable:
            return
        chosen = str(shm)
    os.environ["TMPDIR"] = chosen  # processes the tests start inherit it
    tempfile.tempdir = None  # re-read TMPDIR


_fast_temp_root()
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    # Container images often set it; then every process of a run (each xdist worker, and
    # each server, CLI and dg the tests start) re-compiles every module and pytest
    # re-rewrites every test and plugin module: ~7 s of CPU a process. The run writes
    # its bytecode caches (__pycache__, ignored by git) instead.
    sys.dont_write_bytecode = False
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers already use every core: one OpenMP/BLAS thread each, or their
    # thread pools oversubscribe the cores and OpenMP's spin-waits thrash (a 20-iteration
    # HistGradientBoosting fit went from seconds to 45 s). Set before numpy/sklearn load;
    # processes the tests start inherit it.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


LAYERS = ("unit", "assets", "api", "simulations", "e2e", "production")
SLOW_LAYERS = {"simulations", "e2e", "production"}


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: the inner loop (`-m "not slow"`) is CPU-bound, so a worker per core (on 2
    cores: 2:50 against 3:03-3:16 with three workers); the full suite waits on processes
    it started (uvicorn, Celery, dg), so one more worker keeps the cores busy meanwhile.
    ML_TEST_WORKERS overrides."""
    wanted = os.environ.get("ML_TEST_WORKERS")
    if wanted:
        return int(wanted)
    cores = os.cpu_count() or 1
    inner_loop = "not slow" in " ".join((config.option.markexpr or "").split())
    return cores if inner_loop else cores + 1


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        layer = Path(item.path).relative_to(root).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of {LAYERS}")
        item.add_marker(getattr(pytest.mark, layer))
        if layer in SLOW_LAYERS:
            item.add_marker(pytest.mark.slow)
    seed = os.environ.get("ML_TEST_SHUFFLE")
    if seed:
        # Order-dependence check: files and the tests inside them in a seeded random order
        # (the same on every xdist worker, which must collect identically).
        import random

        random.Random(seed).shuffle(items)


def pytest_report_header(config):
    seed = os.environ.get("ML_TEST_SHUFFLE")
    return f"test order shuffled with ML_TEST_SHUFFLE={seed}" if seed else None


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> dict[str, str]:
    """A session-wide MLflow tracking/registry store: {'tracking_uri', 'artifact_root'}."""
    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    artifact_root = (root / "artifacts").as_uri()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    # Run the migrations once, up front.
    mlflow.MlflowClient(tracking_uri).search_experiments()
    return {"tracking_uri": tracking_uri, "artifact_root": artifact_root}


# The signal dispositions this process started with. Dagster's in-process execution
# maps SIGTERM onto SIGINT's disposition and leaves it so; when the suite runs in the
# background (no job control: SIGINT ignored) that is SIG_IGN, which every process a
# later test starts would inherit (a container's entrypoint could then not be stopped).
SIGNALS = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals() -> None:
    for sig, handler in SIGNALS.items():
        if signal.getsignal(sig) != handler:
            signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def own_signals():
    """Each test starts and ends with the dispositions the session started with."""
    _restore_signals()  # module/session fixtures may have run Dagster just now
    yield
    _restore_signals()


@pytest.fixture(scope="session")
def cancer_champion(mlflow_store):
    """ONE breast-cancer model per session (a 20-tree forest), registered as version 1
    of its own registered model, champion, compiled (its ONNX graph passed parity) and
    with a logged metric (cv_f1_weighted_mean 0.95). For the tests that only READ it:
    serve it, predict, read its metadata. A test that moves an alias, tags a version,
    registers another version or needs another model registers its own."""
    from ml_assets_tests.support.models import (
        Champion,
        experiment_id,
        register,
        train_breast_cancer,
    )

    trained = train_breast_cancer(n_estimators=20)
    name = f"shared_bc_{uuid.uuid4().hex[:8]}"
    version, info = register(trained, name, experiment_id(name, mlflow_store["artifact_root"]),
                             metrics={"cv_f1_weighted_mean": 0.95}, compile=True)
    return Champion(name, version, trained, info)


@pytest.fixture
def instance(tmp_path):
    """A fresh, temporary Dagster instance (runs, events, materializations) per test."""
    from dagster import DagsterInstance

    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture
def unique_name() -> str:
    """A fresh name for an experiment or registered model, so tests never collide."""
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mlflow_tracking(mlflow_store, unique_name, tmp_path: Path):
    """The typed MLflow resource pointed at the session store, in a fresh experiment and
    with a fresh registered model name (versions of one test never meet another's)."""
    from ml_assets.resources import MlflowTracking

    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name=unique_name, registered_model_name=unique_name,
                          artifact_location=(tmp_path / "artifacts").as_uri())


@pytest.fixture
def database():
    """A new, empty PostgreSQL database's name (dropped at teardown, connections and all)."""
    from ml_assets_tests.support.services import pg_admin, require_postgres

    require_postgres()
    name = f"pl_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(database) -> str:
    """The URL of a new, empty PostgreSQL database."""
    from ml_assets_tests.support.services import PG_SERVER

    return f"{PG_SERVER}/{database}"
