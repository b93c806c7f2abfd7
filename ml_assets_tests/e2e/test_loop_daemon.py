"""The retraining loop through the daemon the README describes (`ml-platform up` runs
`dg dev`: webserver and daemon): the real `dagster-daemon` evaluates `retrain_on_drift`
against the instance while days of traffic are scored by the `score_drift` job.

Fourteen quiet days of 50-200 rows launch no retrain; a harmful shift launches exactly
one, at the daemon's next tick; a shift confined to features the model ignores warns
and launches none. The run queue holds the runs the daemon launches
(`max_concurrent_runs: 0`): what is asserted is what the sensor asked for, and the
champion stays the one the days were scored against. The in-process replay of the same
days with `build_sensor_context` is simulations/test_retrain_on_evidence.py."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, RunsFilter

from ml_assets.definitions import defs
from ml_assets.resources.factory import build_resources
from ml_assets_tests.support.loop_days import (
    calm_rows,
    conflicting_rows,
    ignored_shift,
    train_loop_champion,
)
from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.production_days import log_day

SENSOR = "retrain_on_drift"
TICK_SECONDS = 60  # retrain_on_drift's minimum_interval_seconds
START = dt.date(2026, 11, 2)


@pytest.fixture
def home(tmp_path, mlflow_store, unique_name, monkeypatch) -> Path:
    """The environment `ml-platform up` gives Dagster, for this process and the daemon."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 0\n")
    env = {"DAGSTER_HOME": str(dagster_home), "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_MLFLOW_ARTIFACT_LOCATION": (tmp_path / "art").as_uri(),
           "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
           "ML_RETRAIN_COOLDOWN_SECONDS": "0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dagster_home


def _ticks(instance: DagsterInstance) -> list:
    states = [s for s in instance.all_instigator_state() if s.name == SENSOR]
    if not states:
        return []
    return list(instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id))


def _tick_after(instance: DagsterInstance, since: float, daemon: LoggedProcess):
    """The first finished tick of the sensor that started after `since` (bounded)."""
    deadline = time.monotonic() + 3 * TICK_SECONDS + 60
    while time.monotonic() < deadline:
        assert daemon.running, daemon.log(4000)
        done = [t for t in _ticks(instance)
                if t.timestamp > since and t.status.value in ("SUCCESS", "SKIPPED", "FAILURE")]
        if done:
            tick = min(done, key=lambda t: t.timestamp)
            assert tick.status.value != "FAILURE", (tick.error, daemon.log(4000))
            return tick
        time.sleep(1)
    raise AssertionError(f"no {SENSOR} tick after {since}\n{daemon.log(4000)}")


def _retrains(instance: DagsterInstance) -> list:
    return list(instance.get_runs(RunsFilter(tags={"ml/trigger": "drift"})))


def test_the_daemon_retrains_once_on_a_harmful_shift_and_never_on_quiet_days(home, tmp_path):
    instance = DagsterInstance.get()
    resources = build_resources()
    trained, model, kept = train_loop_champion(instance, resources)
    held_out = trained.output_for_node("data_split").X_test
    log = Path(resources["production"].prediction_log_path)  # the API's, by default
    name = os.environ["ML_REGISTERED_MODEL_NAME"]
    score = defs.resolve_job_def("score_drift")
    rng = np.random.default_rng(0)

    def day(offset: int, rows) -> None:
        date = (START + dt.timedelta(days=offset)).isoformat()
        log_day(log, rows, date, model.pipeline, model_name=name)
        assert score.execute_in_process(instance=instance, resources=resources,
                                        partition_key=date).success

    for offset in range(14):  # quiet: 50, 120, 200 rows in turn
        day(offset, calm_rows(held_out, rng, (50, 120, 200)[offset % 3]))

    daemon = LoggedProcess([str(Path(sys.executable).with_name("dagster-daemon")), "run",
                            "-m", "ml_assets.definitions"], dict(os.environ),
                           tmp_path / "daemon.log")
    try:
        quiet = _tick_after(instance, time.time() - 1, daemon)
        assert quiet.status.value == "SKIPPED" and not _retrains(instance), quiet.skip_reason

        day(14, conflicting_rows(model.pipeline, kept, rng, 120))
        harmful = _tick_after(instance, time.time(), daemon)
        (retrain,) = _retrains(instance)
        assert harmful.status.value == "SUCCESS" and retrain.run_id in harmful.run_ids
        assert retrain.tags["ml/evidence"] == "estimate"
        assert retrain.tags["ml/evidence_days"] == (START + dt.timedelta(days=14)).isoformat()

        # The shift goes on (one retrain per episode), ends, then moves to the features
        # the model ignores: a warning, no retrain.
        day(15, conflicting_rows(model.pipeline, kept, rng, 120))
        day(16, calm_rows(held_out, rng, 120))
        day(17, ignored_shift(calm_rows(held_out, rng, 120), kept))
        later = _tick_after(instance, time.time(), daemon)
        assert len(_retrains(instance)) == 1, [r.tags for r in _retrains(instance)]
        assert later.status.value == "SKIPPED", later.run_ids
        assert "did not move the estimated performance" in (later.skip_reason or "")
    finally:
        daemon.stop()
