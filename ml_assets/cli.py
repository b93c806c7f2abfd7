"""`ml-platform`: train from the command line, or bring the whole platform up.

    ml-platform train          materialize the training graph once (recorded in the
                               Dagster instance, so the UI shows it); with
                               --allow-breaking-change a model that breaks API
                               clients' inputs is promoted instead of refused
    ml-platform up             train if no model exists yet, then start the prediction
                               API (port 8000) and the Dagster UI (port 3000)
    ml-platform rollback       restore the previous champion in one step
    ml-platform reexecute ID   re-run a failed run from its failure (steps that succeeded
                               are not run again; with Celery the workers execute it)
    ml-platform simulate       send realistic (optionally drifted) traffic to the API
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ml_assets.registry import PROMOTION_CHECK
from ml_assets.settings import PlatformSettings

DAGSTER_YAML = """\
# Embedded default instance: SQLite storage under this directory.
telemetry:
  enabled: false
"""


def prepare_environment(settings: PlatformSettings) -> Path:
    """Create the platform home and a DAGSTER_HOME in it unless one is configured."""
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster_home"))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return dagster_home


def train(if_missing: bool = False, allow_breaking_change: bool = False,
          verbose: bool = False) -> int:
    """Run the `train_model` job in this process against the persistent instance.

    Resources are built from the environment as it is now (ML_DATA_PATH, ...).
    `allow_breaking_change` sets `allow_breaking_change: true` in this run's
    champion_comparison config: a challenger that changes the API's inputs in a way
    that breaks clients is then promoted (and the change named) instead of refused.
    Dagster's own event log (with stack traces) goes to the terminal only with
    `verbose`; it is always in the Dagster UI."""
    from dagster import AssetKey, DagsterInstance

    from ml_assets.definitions import defs
    from ml_assets.resources.factory import build_resources

    instance = DagsterInstance.get()
    if if_missing and instance.get_latest_materialization_event(AssetKey("model_metrics")):
        print("a trained model already exists; skipping training (ml-platform train to retrain)")
        return 0
    level = "INFO" if verbose else "CRITICAL"  # the summary below says what matters
    run_config: dict = {"loggers": {"console": {"config": {"log_level": level}}}}
    if not verbose:
        print("training: ingest, validate, split, fit, evaluate, register, compare "
              "(Dagster's event log: --verbose, or the run in the Dagster UI)", flush=True)
    if allow_breaking_change:
        run_config["ops"] = {"champion_comparison": {"config": {
            "allow_breaking_change": True}}}
    result = defs.resolve_job_def("train_model").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config,
        resources=build_resources())
    reasons = failure_reasons(result)
    refused = [r for r in reasons if r.startswith(f"check {PROMOTION_CHECK} ")]
    if not result.success and reasons != refused:
        print(f"training run {result.run_id} failed:\n  " + "\n  ".join(reasons),
              file=sys.stderr)
        return 1
    metrics = result.output_for_node("model_metrics")
    print("trained; held-out metrics: "
          + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    registered = result.output_for_node("registered_model")
    decision = result.output_for_node("champion_comparison").decision
    if refused:
        print(f"registered {registered.name} version {registered.version} as challenger; "
              f"not promoted: {decision.reason}")
        if decision.breaking_change and not decision.breaking_change_allowed:
            print("to promote it anyway: ml-platform train --allow-breaking-change (or "
                  "ML_ALLOW_BREAKING_SCHEMA_CHANGE=true)")
    else:
        print(f"registered {registered.name} version {registered.version}; it is the "
              f"champion (models:/{registered.name}@champion): {decision.reason}")
        if decision.breaking_change:
            print(f"breaking change to the API's inputs, allowed by this run: "
                  f"{decision.schema_change.split(': ', 1)[-1]}; API clients must follow "
                  "the new request schema (GET /model, /docs)")
    if decision.schema_change.startswith("compatible: "):
        print(f"compatible change to the API's inputs: "
              f"{decision.schema_change.split(': ', 1)[1]}")
    elif decision.schema_change.startswith("unknown: "):
        print(f"input change not judged: {decision.schema_change.split(': ', 1)[1]}")
    return 0


# "dagster._core.definitions.events.Failure: ": a class path, not part of the sentence.
_CLASS_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*: ")


def _without_class(message: str, cls_name: str | None = None) -> str:
    """`message` without a leading "<dotted.module.ClassName>: " (or "<cls_name>: ")."""
    message = message.strip()
    if cls_name:
        own = re.compile(rf"^(?:[A-Za-z_]\w*\.)*{re.escape(cls_name)}: ")
        if own.match(message):  # only the class's own prefix: the text may hold "a.b: "
            return own.sub("", message, count=1).strip()
    return _CLASS_PREFIX.sub("", message, count=1).strip()


def _step_failure(step: str, error, user_failure) -> str:
    """One sentence for a failed step: a `Failure`'s own description; for anything
    unexpected, the exception's message without its class path."""
    if error is None:
        return f"{step} failed (see the Dagster UI for its logs)"
    if user_failure is not None and user_failure.description:
        return f"{step}: {user_failure.description.strip()}"
    if error.cls_name == "Failure":
        return f"{step}: {_without_class(error.message, error.cls_name)}"
    cause = error.cause or error
    if error.cause is not None and error.cause.cls_name == "Failure":
        return f"{step}: {_without_class(cause.message, cause.cls_name)}"
    message = _without_class(cause.message, cause.cls_name) or cause.cls_name
    return f"{step} failed unexpectedly: {message} (see the Dagster UI for the traceback)"


def failure_reasons(result) -> list[str]:
    """One sentence per failed step or failed check, with its own message (framework
    class names left out)."""
    reasons = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            error = data.error
            if error and error.cls_name == "DagsterAssetCheckFailedError":
                continue  # the failed check itself is reported below
            reasons.append(_step_failure(event.step_key, error, data.user_failure_data))
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                reasons.append(f"check {evaluation.check_name} on "
                               f"{evaluation.asset_key.to_user_string()}: "
                               f"{evaluation.description}")
    return reasons or ["run failed; see the Dagster UI for its logs"]


def up(host: str, port: int, api_port: int, no_api: bool = False) -> int:
    """Train once if needed, then run the prediction API and `dagster dev` (webserver +
    daemon) until Ctrl-C; stopping one stops both (the API flushes its log first)."""
    code = train(if_missing=True)
    if code:
        return code
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    command = [dagster, "dev", "-h", host, "-p", str(port)]
    command += ["-w", str(workspace)] if workspace.exists() else ["-m", "ml_assets.definitions"]
    processes: list[subprocess.Popen] = []

    def stop(signum, frame):  # SIGTERM stops the children too, like Ctrl-C
        raise KeyboardInterrupt

    def interruptible() -> None:
        # Started in the background (nohup, `&` in a script), a process inherits an
        # ignored SIGINT, and `dagster dev` maps SIGTERM onto SIGINT: the children could
        # then not be stopped at all. They get the default back before they start.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not no_api:
        api = [sys.executable, "-m", "serving", "--host", host, "--port", str(api_port)]
        processes.append(subprocess.Popen(api, preexec_fn=interruptible))
        print(f"Prediction API on http://{host}:{api_port}  (docs at /docs)")
    processes.append(subprocess.Popen(command, preexec_fn=interruptible))
    print(f"Dagster UI on http://{host}:{port}  (Ctrl-C stops everything)")
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    failures = [p.returncode for p in processes if p.returncode and p.returncode > 0]
    return failures[0] if failures else 0


def rollback(to_version: str | None, reason: str) -> int:
    """Point `champion` back at the previous champion (or a named version)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml_assets.core import registry
    from ml_assets.core.model_loading import check_model

    settings = PlatformSettings.from_env()
    client = MlflowClient(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    name = settings.registered_model_name

    def loadable(version: str) -> None:  # what the API would refuse is not restored
        check_model(f"models:/{name}/{version}", source=f"version {version}")

    try:
        change = registry.rollback(client, name, to_version, reason, check=loadable)
    except registry.RegistryError as exc:
        print(f"rollback refused: {exc}", file=sys.stderr)
        return 1
    print(f"{change.name}: champion is version {change.version} again (was {change.previous}); "
          "a running API picks it up on its next poll or POST /admin/reload")
    return 0


def reexecute(run_id: str) -> int:
    """Re-execute failed run `run_id` from its failure and wait for the new run."""
    from ml_assets.recovery import RecoveryError, reexecute_from_failure

    try:
        outcome = reexecute_from_failure(run_id)
    except RecoveryError as exc:
        print(f"reexecute refused: {exc}", file=sys.stderr)
        return 1
    state = "succeeded" if outcome.success else "failed"
    print(f"run {outcome.run_id} ({outcome.job_name}, re-execution of {run_id}) {state}; "
          f"steps: {', '.join(outcome.steps) or 'none'}")
    return 0 if outcome.success else 1


def simulate(args) -> int:
    """Send realistic (optionally drifted) traffic to the API."""
    from ml_assets.core.traffic import simulate as run
    from ml_assets.resources.factory import build_resources

    settings = PlatformSettings.from_env()
    source = build_resources(settings)["data_source"]
    frame = source.load()
    result = run(args.url, frame, source.target_column, requests=args.requests,
                 shift_after=args.shift_after, shift=args.shift, concurrency=args.concurrency,
                 labels_dir=None if args.no_labels else settings.labels_dir,
                 api_key=os.environ.get("ML_API_KEY") or None, seed=args.seed,
                 max_seconds=args.max_seconds)
    print(f"sent {result.sent} requests in {result.seconds:.1f} s: {result.ok} ok, "
          f"{result.failed} failed, {result.shifted} shifted; statuses {result.status_counts};"
          f" model versions {result.model_versions}")
    if result.labels_file:
        print(f"true labels written to {result.labels_file}")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ml-platform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser = sub.add_parser("train", help="materialize the training graph once")
    train_parser.add_argument("--if-missing", action="store_true",
                              help="skip when a model has been trained already")
    train_parser.add_argument("--allow-breaking-change", action="store_true",
                              help="promote a challenger even when it changes the API's "
                              "inputs in a way that breaks clients (a feature removed, a "
                              "required one added, a type or allowed values narrowed); "
                              "without it such a challenger is refused")
    train_parser.add_argument("--verbose", action="store_true",
                              help="print Dagster's event log (every step, stack traces)")
    up_parser = sub.add_parser("up", help="train if needed, then start the Dagster UI")
    up_parser.add_argument("--host", default="127.0.0.1")
    up_parser.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    up_parser.add_argument("--api-port", type=int,
                           default=int(os.environ.get("ML_API_PORT", "8000")))
    up_parser.add_argument("--no-api", action="store_true", help="do not start the API")
    rollback_parser = sub.add_parser("rollback", help="restore the previous champion")
    rollback_parser.add_argument("--to", dest="to_version", help="a specific version")
    rollback_parser.add_argument("--reason", default="manual rollback")
    reexec = sub.add_parser("reexecute", help="re-run a failed run from its failure")
    reexec.add_argument("run_id", help="the failed run's id (Dagster UI, `dagster run list`)")
    sim = sub.add_parser("simulate", help="send realistic traffic to the prediction API")
    sim.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('ML_API_PORT', '8000')}")
    sim.add_argument("--requests", type=int, default=300)
    sim.add_argument("--shift-after", type=int, default=None,
                     help="requests after this index are shifted")
    sim.add_argument("--shift", type=float, default=1.5,
                     help="shift in reference standard deviations (with --shift-after)")
    sim.add_argument("--concurrency", type=int, default=4)
    sim.add_argument("--no-labels", action="store_true", help="do not write true labels")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    prepare_environment(PlatformSettings.from_env())
    if args.command == "train":
        return train(args.if_missing, args.allow_breaking_change, args.verbose)
    if args.command == "simulate":
        return simulate(args)
    if args.command == "rollback":
        return rollback(args.to_version, args.reason)
    if args.command == "reexecute":
        return reexecute(args.run_id)
    return up(args.host, args.port, args.api_port, args.no_api)


if __name__ == "__main__":
    sys.exit(main())
