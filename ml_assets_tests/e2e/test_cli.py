"""The command line: `ml-platform train` materializes the whole graph in a real process."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from dagster import AssetKey, DagsterInstance

from ml_assets.core.data.datasets import load_breast_cancer_frame


def test_train_from_the_command_line(tmp_path, mlflow_store, unique_name):
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name}
    command = [str(Path(sys.executable).with_name("ml-platform")), "train"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained; held-out metrics: accuracy=" in done.stdout

    client = mlflow.MlflowClient(mlflow_store["tracking_uri"])
    experiment = client.get_experiment_by_name(unique_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model_type"] == "random_forest"
    assert run.data.metrics["test_accuracy"] > 0.9
    assert run.data.tags["code_version"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "feature_schema.yaml"} <= artifacts
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                            output_format="list")
    model = mlflow.pyfunc.load_model(logged.model_uri)
    rows = load_breast_cancer_frame().drop(columns="diagnosis").head(5)
    assert set(model.predict(rows)) <= {"benign", "malignant"}

    # The run is in the persistent Dagster instance, so the UI shows it.
    os.environ["DAGSTER_HOME"], old = env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with DagsterInstance.get() as instance:
            assert instance.get_latest_materialization_event(AssetKey("model_metrics"))
    finally:
        if old is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = old

    again = subprocess.run(command + ["--if-missing"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "skipping training" in again.stdout


def test_failed_training_exits_non_zero_with_the_reason(tmp_path, mlflow_store, unique_name):
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_DATA_SOURCE": "files",
           "ML_DATA_PATH": str(tmp_path / "missing.csv"), "ML_TARGET": "y"}
    done = subprocess.run([str(Path(sys.executable).with_name("ml-platform")), "train"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "does not exist" in done.stderr


def test_reexecute_a_failed_run_after_fixing_its_data(tmp_path, mlflow_store, unique_name):
    """`ml-platform reexecute` re-runs a failed run from its failure in a new run, and
    names the problem when the run is unknown or did not fail."""
    data = tmp_path / "data.csv"
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
           "ML_DATA_SOURCE": "files", "ML_DATA_PATH": str(data), "ML_TARGET": "diagnosis"}
    cli = str(Path(sys.executable).with_name("ml-platform"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True,
                              timeout=300)

    assert run("train").returncode == 1  # the data file is not there yet
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (failed,) = instance.get_runs()
        assert failed.status.value == "FAILURE"

    unknown = run("reexecute", "no-such-run")
    assert unknown.returncode == 1
    assert "run 'no-such-run' does not exist" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    load_breast_cancer_frame().to_csv(data, index=False)  # the fix
    done = run("reexecute", failed.run_id)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"re-execution of {failed.run_id}) succeeded" in done.stdout
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (new_run,) = [r for r in instance.get_runs() if r.run_id != failed.run_id]
        assert new_run.status.value == "SUCCESS"
        assert new_run.parent_run_id == failed.run_id
        assert new_run.tags["ml/reexecution_of"] == failed.run_id
        assert instance.get_latest_materialization_event(AssetKey("champion_model"))
    versions = mlflow.MlflowClient(mlflow_store["tracking_uri"]).search_model_versions(
        f"name = '{unique_name}'")
    assert len(versions) == 1

    again = run("reexecute", new_run.run_id)
    assert again.returncode == 1 and "only a failed or canceled run" in again.stderr
    twice = run("reexecute", failed.run_id)  # would register a second model
    assert twice.returncode == 1
    assert f"already re-executed successfully by run {new_run.run_id}" in twice.stderr


def test_reexecution_keeps_the_partition_and_drops_the_attempts_own_tags():
    from ml_assets.recovery import reexecution_tags

    parent = {"dagster/partition": "2026-11-20", "ml/trigger": "drift",
              "dagster-celery/queue": "gpu", "dagster/failure_reason": "STEP_FAILURE",
              "dagster/retry_number": "1", "dagster/backfill": "abc",
              "dagster/parent_run_id": "p", "dagster/root_run_id": "r",
              "ml/promotion": "refused", "ml/promotion_version": "2"}
    assert reexecution_tags(parent, "run-1") == {
        "dagster/partition": "2026-11-20", "ml/trigger": "drift",
        "dagster-celery/queue": "gpu", "ml/reexecution_of": "run-1"}


def test_up_stops_everything_on_sigterm_even_when_started_in_the_background(
        tmp_path, mlflow_store, unique_name):
    """Started in the background, a process inherits an ignored SIGINT (and `dagster dev`
    maps SIGTERM onto SIGINT): SIGTERM to `ml-platform up` must still stop the API, the
    Dagster UI and the daemon, leaving no process behind. Meanwhile the Dagster UI runs
    under `dg dev`, the children's output goes to $ML_PLATFORM_HOME/logs/, and a training
    run from another terminal is reported in one line each (training, the refusal of an
    identical challenger)."""
    import signal
    import time

    import httpx

    from ml_assets_tests.support.services import free_port

    ui_port, api_port = free_port(), free_port()
    env = {**os.environ, "ML_PLATFORM_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
           # a small tree trains in a blink: this test is about the processes
           "ML_ESTIMATOR": "sklearn.tree.DecisionTreeClassifier",
           "ML_ESTIMATOR_PARAMS": '{"max_depth": 3, "random_state": 0}'}
    cli = str(Path(sys.executable).with_name("ml-platform"))
    output = tmp_path / "up.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [cli, "up", "--port", str(ui_port), "--api-port", str(api_port)], env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 240
        ready = set()
        while time.monotonic() < deadline and len(ready) < 2 and process.poll() is None:
            for name, url in (("ui", f"http://127.0.0.1:{ui_port}/server_info"),
                              ("api", f"http://127.0.0.1:{api_port}/ready")):
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        ready.add(name)
                except httpx.TransportError:
                    pass
            time.sleep(0.5)
        assert ready == {"ui", "api"}, (ready, output.read_text()[-3000:])
        logs = tmp_path / "home" / "logs"
        printed = output.read_text()
        assert f"log {logs / 'dagster.log'}" in printed and "(dg dev:" in printed, printed
        assert f"log {logs / 'api.log'}" in printed, printed
        assert " dev " in (logs / "dagster.log").read_text()  # the command line, then its output
        assert "DEBUG" not in printed

        again = subprocess.run([cli, "train"], env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "challenger not promoted" not in printed:
            time.sleep(1)
            printed = output.read_text()
        status = [line for line in printed.splitlines() if line[:2].isdigit()]
        assert len(status) == 2, printed[-3000:]
        assert "  training run " in status[0] and "held-out f1_weighted=" in status[0]
        assert "  challenger not promoted (run " in status[1], status
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)  # anything left in its session?
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("processes of `ml-platform up` outlived it")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LedgerCorrupted(Exception):
    """An exception from some module: its class path must not reach the summary."""


def test_failure_reasons_are_sentences_without_class_names(tmp_path):
    from dagster import Failure, asset, materialize

    from ml_assets.cli import failure_reasons

    @asset
    def validated_data():
        raise Failure(description="3 validation failure(s) in column(s) year")

    @asset
    def trained_model():
        raise ValueError("Input X contains NaN")

    @asset
    def ledger():
        raise LedgerCorrupted("ledger.db: checksum mismatch: expected 1, got 2")

    reasons = []
    for step in (validated_data, trained_model, ledger):
        result = materialize([step], raise_on_error=False)
        reasons += failure_reasons(result)
    assert reasons == [
        "validated_data: 3 validation failure(s) in column(s) year",
        "trained_model failed unexpectedly: Input X contains NaN (see the Dagster UI for "
        "the traceback)",
        "ledger failed unexpectedly: ledger.db: checksum mismatch: expected 1, got 2 (see "
        "the Dagster UI for the traceback)"]
    for reason in reasons:
        assert "dagster." not in reason and "Error:" not in reason
        assert "LedgerCorrupted" not in reason and "ValueError" not in reason



def test_simulate_passes_client_keys_and_prints_the_variants(tmp_path, monkeypatch, capsys):
    """`ml-platform simulate --clients N` sends N stable client keys (traffic.simulate's
    `client_keys`) and prints how many answers each variant gave."""
    from types import SimpleNamespace

    from ml_assets import cli
    from ml_assets.core.rollout import traffic

    seen: dict = {}

    def fake(url, frame, target, **kwargs):
        seen.update(kwargs, url=url, rows=len(frame), target=target)
        return SimpleNamespace(sent=10, seconds=0.1, ok=10, failed=0, shifted=0,
                               status_counts={200: 10}, model_versions={"1": 7, "2": 3},
                               variants={"champion": 7, "canary": 3}, labels_file=None)

    monkeypatch.setattr(traffic, "simulate", fake)
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert cli.main(["simulate", "--requests", "10", "--clients", "25", "--no-labels",
                     "--rows", "all"]) == 0
    assert seen["client_keys"] == 25 and seen["requests"] == 10 and seen["rows"] > 0
    assert "variants: canary 3, champion 7" in capsys.readouterr().out

    assert cli.main(["simulate", "--requests", "10", "--no-labels", "--rows", "all"]) == 0
    assert seen["client_keys"] == 0  # the default: no key
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--clients", "-1"])
