"""`ml-platform up` and its own crashes, in real processes: a killed daemon is
restarted (the API answering meanwhile) and runs still launch through the queue; a
training run orphaned by a SIGKILL of the whole `up` is marked failed when `up` starts
again, and `ml-platform reexecute` finishes it, or says in one line that a blocking
check refused it; `up` allowed no restart exits 1 naming what died. Also the supervisor
alone, on tiny processes: restart, backoff, and giving up with the child's name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
from dagster import DagsterEventType, DagsterInstance

from ml_assets.supervision import RestartPolicy, Supervisor
from ml_assets_tests.support.processes import LoggedProcess, session_processes
from ml_assets_tests.support.services import free_port

CLI = str(Path(sys.executable).with_name("ml-platform"))


def _env(tmp_path: Path, mlflow_store, name: str) -> dict[str, str]:
    return {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
            "ML_EXPERIMENT_NAME": name, "ML_REGISTERED_MODEL_NAME": name,
            "ML_API_POLL_SECONDS": "1",
            # a small tree trains in a blink: these tests are about the processes
            "ML_ESTIMATOR": "sklearn.tree.DecisionTreeClassifier",
            "ML_ESTIMATOR_PARAMS": '{"max_depth": 3, "random_state": 0}'}


def _wait(condition, timeout: float, what: str, process: LoggedProcess, tick=0.5):
    """condition()'s first truthy value within `timeout` s, else fail with `up`'s output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process.running, f"up exited while waiting for {what}:\n{process.log(4000)}"
        time.sleep(tick)
    raise AssertionError(f"no {what} within {timeout} s:\n{process.log(4000)}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _daemons(up: LoggedProcess) -> list[int]:
    return [pid for pid, argv in session_processes(up.pid).items()
            if "dagster._daemon run" in argv]


def _launch_raw_data(ui: str) -> str:
    """Submit a run of `raw_data` through the UI's GraphQL API (as its Materialize button
    does): the run is queued, and only the daemon starts it."""
    where = httpx.post(f"{ui}/graphql", timeout=30, json={"query": (
        "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")}).json()
    (location,) = [e["name"] for e in where["data"]["workspaceOrError"]["locationEntries"]]
    launched = httpx.post(f"{ui}/graphql", timeout=60, json={
        "query": ("mutation Launch($p: ExecutionParams!) { launchRun(executionParams: $p) "
                  "{ __typename ... on LaunchRunSuccess { run { runId } } "
                  "... on Error { message } } }"),
        "variables": {"p": {"selector": {
            "repositoryLocationName": location, "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["raw_data"]}]},
            "mode": "default"}}}).json()
    answer = launched["data"]["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", launched
    return answer["run"]["runId"]


def test_a_killed_daemon_is_restarted_and_a_run_still_launches(tmp_path, mlflow_store,
                                                                unique_name):
    ui_port, api_port = free_port(), free_port()
    ui, ready = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}/ready"
    up = LoggedProcess([CLI, "up", "--port", str(ui_port), "--api-port", str(api_port)],
                       _env(tmp_path, mlflow_store, unique_name), tmp_path / "up.out")
    try:
        _wait(lambda: _answers(f"{ui}/server_info") and _answers(ready), 240, "UI and API",
              up)
        (daemon,) = _wait(lambda: _daemons(up), 30, "daemon process", up)
        os.kill(daemon, signal.SIGKILL)

        # The API is kept while Dagster restarts: every probe until then is answered.
        probes = []
        while "Dagster restarted" not in up.log():
            assert up.running, up.log(4000)
            probes.append(_answers(ready))
            assert len(probes) < 240, up.log(4000)
            time.sleep(0.5)
        assert probes and all(probes), probes
        printed = up.log()
        assert ("the Dagster daemon (dagster-daemon) was killed by SIGKILL (dg dev stopped "
                "with it); restarting Dagster in 1 s (restart 1 of at most 3") in printed, \
            printed[-3000:]

        _wait(lambda: _answers(f"{ui}/server_info"), 180, "UI after the restart", up)
        (new_daemon,) = _wait(lambda: _daemons(up), 60, "a new daemon", up)
        assert new_daemon != daemon
        run_id = _launch_raw_data(ui)
        with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
            status = _wait(lambda: (lambda r: r.is_finished and r.status.value)(
                instance.get_run_by_id(run_id)), 240, "the queued run to finish", up, tick=1)
            assert status == "SUCCESS", up.log(3000)
            assert instance.get_records_for_run(
                run_id, of_type=DagsterEventType.RUN_ENQUEUED).records  # the daemon started it
        stopped = up.stop(signal.SIGTERM, timeout=90)
        assert stopped.code == 0, stopped.log[-3000:]
    finally:
        up.stop(signal.SIGKILL, timeout=30, group=True)


def test_a_run_orphaned_by_a_killed_up_is_marked_failed_then_reexecuted(
        tmp_path, mlflow_store, unique_name):
    env = _env(tmp_path, mlflow_store, unique_name)
    argv = [CLI, "up", "--no-api", "--port", str(free_port())]
    dagster_home = str(tmp_path / "dagster_home")
    up = LoggedProcess(argv, env, tmp_path / "up.out")
    again = None
    try:
        _wait(lambda: "training:" in up.log(), 120, "training to start", up, tick=0.2)
        with DagsterInstance.from_config(dagster_home) as instance:
            def registering() -> str | None:
                for run in instance.get_runs():
                    for record in instance.get_records_for_run(
                            run.run_id, of_type=DagsterEventType.STEP_START).records:
                        if record.event_log_entry.step_key == "registered_model":
                            return run.run_id
                return None

            run_id = _wait(registering, 180, "registered_model to start", up, tick=0.1)
            up.send(signal.SIGKILL, group=True)  # the whole of `up`, mid-step
            up.stop(None, timeout=30, group=True)
            run = instance.get_run_by_id(run_id)
            assert run.status.value == "STARTED"
            finished = {r.event_log_entry.step_key for r in instance.get_records_for_run(
                run_id, of_type=DagsterEventType.STEP_SUCCESS).records}
            assert "model_metrics" in finished and "registered_model" not in finished

        # Started again, with no restart allowed: the sweep comes first; then a killed
        # daemon makes `up` stop and exit 1, naming it.
        again = LoggedProcess(argv, {**env, "ML_UP_MAX_RESTARTS": "0"},
                              tmp_path / "up-again.out")
        (daemon,) = _wait(lambda: _daemons(again), 180, "the daemon", again)
        assert f"run {run_id} (train_model) was left STARTED: marked failed; its process " \
               f"(pid {up.pid}) no longer exists" in again.log(), again.log(3000)
        os.kill(daemon, signal.SIGKILL)
        stopped = again.stop(None, timeout=120)
        assert stopped.code == 1, stopped.log[-3000:]
        assert "ml-platform up: Dagster died once within 10 min, the last time: the Dagster " \
               "daemon (dagster-daemon) was killed by SIGKILL" in stopped.log, \
            stopped.log[-3000:]
        with DagsterInstance.from_config(dagster_home) as instance:
            assert instance.get_run_by_id(run_id).status.value == "FAILURE"

        def cli(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess:
            return subprocess.run([CLI, *args], env=env, capture_output=True, text=True,
                                  timeout=300)

        done = cli("reexecute", run_id)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "registered_model" in done.stdout and "trained_model" not in done.stdout
        client = mlflow.MlflowClient(mlflow_store["tracking_uri"])
        assert len(client.search_model_versions(f"name = '{unique_name}'")) == 1
        assert str(client.get_model_version_by_alias(unique_name, "champion").version) == "1"

        # A refusal by a blocking check is said as one: a metrics gate the model cannot
        # pass, re-executed.
        strict = {**env, "ML_METRIC_THRESHOLD": "0.99"}
        assert cli("train", env=strict).returncode == 1
        with DagsterInstance.from_config(dagster_home) as instance:
            refused = instance.get_runs(limit=1)[0]
            assert refused.status.value == "FAILURE"
        done = cli("reexecute", refused.run_id, env=strict)
        assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
        line = done.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert f"re-execution of {refused.run_id}) ran and was refused by check " \
               "metrics_above_thresholds on model_metrics: " in line, line
    finally:
        up.stop(signal.SIGKILL, timeout=30, group=True)
        if again is not None:
            again.stop(signal.SIGKILL, timeout=30, group=True)


def test_the_supervisor_restarts_with_backoff_then_gives_up_naming_the_child(tmp_path):
    """A child that exits once comes back; one that keeps exiting is given up on after
    `max_restarts`, with growing pauses between its starts."""
    marker = tmp_path / "started-once"
    flaky = [sys.executable, "-c", "import pathlib, sys, time; p = pathlib.Path(sys.argv[1]);"
             " first = not p.exists(); p.touch(); sys.exit(1) if first else time.sleep(60)",
             str(marker)]
    broken = [sys.executable, "-c", "import sys; sys.exit(7)"]
    said: list[tuple[float, str]] = []
    supervisor = Supervisor(RestartPolicy(max_restarts=2, window_seconds=60,
                                          first_delay=0.5),
                            say=lambda line: said.append((time.monotonic(), line)))
    steady = supervisor.start("steady", flaky, tmp_path / "steady.log")
    supervisor.start("broken", broken, tmp_path / "broken.log")
    try:
        gave_up = supervisor.watch(tick=0.05)
        assert (gave_up.name, gave_up.what, gave_up.deaths) == (
            "broken", "broken exited with code 7", 3)
        lines = [line for _, line in said]
        assert steady.process is not None and steady.process.poll() is None
        assert any(line.startswith("steady exited with code 1; restarting steady in 0.5 s "
                                   "(restart 1 of at most 2 within 1 min; log")
                   for line in lines), lines
        broken_lines = [(t, line) for t, line in said if line.startswith("broken")]
        assert [line.split(" (")[0] for _, line in broken_lines] == [
            "broken exited with code 7; restarting broken in 0.5 s", "broken restarted",
            "broken exited with code 7; restarting broken in 1 s", "broken restarted"]
        pauses = [broken_lines[i + 1][0] - broken_lines[i][0] for i in (0, 2)]
        assert pauses[0] >= 0.5 and pauses[1] >= 1.0, pauses  # the growing pauses, kept
    finally:
        supervisor.stop_all(timeout=10)
    assert steady.process.poll() is not None
