"""`ml-platform`: train from the command line, or bring the whole platform up.

    ml-platform train          materialize the training graph once (recorded in the
                               Dagster instance, so the UI shows it); with
                               --allow-breaking-change a model that breaks API
                               clients' inputs is promoted instead of refused
    ml-platform up             train if no model exists yet, then start the prediction
                               API (port 8000) and the Dagster UI (port 3000, `dg dev`);
                               their output goes to $ML_PLATFORM_HOME/logs/, the terminal
                               gets one line per training, promotion, drift verdict,
                               retrain, rollout decision and failed run
    ml-platform rollback       restore the previous champion in one step
    ml-platform rollout start  put a registered version (default: the `challenger`) in
                               canary or shadow; `rollout status` shows it, `rollout
                               stop` ends it (the champion stays)
    ml-platform reexecute ID   re-run a failed run from its failure (steps that succeeded
                               are not run again; with Celery the workers execute it);
                               exit 0: succeeded, 3: refused by a blocking check, 1: failed
    ml-platform simulate       send realistic (optionally drifted) traffic to the API
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from ml_assets.laptop_instance import _OLD_DAGSTER_YAMLS, DAGSTER_YAML
from ml_assets.settings import PlatformSettings
from ml_assets.shared import PROMOTION_TAG
from ml_assets.status import failure_reasons, failures_beyond_refusal

# Settings that name a file or directory: made absolute for the processes `up` starts,
# which do not share this directory (`dg dev` runs the code location from the project).
PATH_VARIABLES = ("ML_DATA_PATH", "ML_PREDICTION_LOG_PATH", "ML_LANDING_DIR",
                  "ML_LABELS_DIR", "ML_BATCH_INPUT_DIR", "ML_BATCH_OUTPUT_DIR")


def prepare_environment(settings: PlatformSettings) -> Path:
    """Create the platform home and a DAGSTER_HOME in it unless one is configured; the
    home and every relative path setting are made absolute in the environment, so the
    daemon, the webserver's code location and the API see what this directory sees."""
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ["ML_PLATFORM_HOME"] = str(settings.home)
    for name in PATH_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and "://" not in value:
            os.environ[name] = str(Path(value).expanduser().resolve())
    os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster_home"))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text(encoding="utf-8") in _OLD_DAGSTER_YAMLS:
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
    if not result.success:
        reasons = failures_beyond_refusal(failure_reasons(result))
        print(f"training run {result.run_id} failed:\n  " + "\n  ".join(reasons),
              file=sys.stderr)
        return 1
    metrics = result.output_for_node("model_metrics")
    print("trained; held-out metrics: "
          + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    registered = result.output_for_node("registered_model")
    decision = result.output_for_node("champion_comparison").decision
    if not decision.promote:  # a decision: the run succeeded, tagged ml/promotion=refused
        print(f"registered {registered.name} version {registered.version} as challenger; "
              f"not promoted: {decision.reason}")
        if decision.breaking_change and not decision.breaking_change_allowed:
            print("to promote it anyway: ml-platform train --allow-breaking-change (or "
                  "ML_ALLOW_BREAKING_SCHEMA_CHANGE=true)")
    elif str(champion_change(result).get("action", "")).startswith("rollout_"):
        change = champion_change(result)
        mode = str(change["action"]).removeprefix("rollout_")
        print(f"registered {registered.name} version {registered.version}; a {mode} rollout "
              f"started against champion {change['version']} (rollout_evaluation decides on "
              f"live labelled traffic; `ml-platform rollout status`): {decision.reason}")
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


def champion_change(result) -> dict:
    """champion_model's output of a run ({} when it did not materialize)."""
    try:
        return dict(result.output_for_node("champion_model"))
    except Exception:  # noqa: BLE001 - Dagster raises when the step did not run
        return {}


def _console_script(name: str) -> str | None:
    """The console script `name` of this environment (next to this Python), else on PATH."""
    sibling = Path(sys.executable).with_name(name)
    return str(sibling) if sibling.exists() else shutil.which(name)


def dagster_command(host: str, port: int) -> list[str]:
    """`dg dev` for the dg project this checkout is (pyproject.toml `[tool.dg]`); without
    dg (or installed without the checkout) `dagster dev` on workspace.yaml or the module."""
    root = Path(__file__).resolve().parent.parent
    dg = _console_script("dg")
    pyproject = root / "pyproject.toml"
    if dg and pyproject.exists() and "[tool.dg]" in pyproject.read_text(encoding="utf-8"):
        return [dg, "dev", "--target-path", str(root), "-h", host, "-p", str(port)]
    dagster = _console_script("dagster") or "dagster"
    workspace = root / "workspace.yaml"
    command = [dagster, "dev", "-h", host, "-p", str(port)]
    return command + (["-w", str(workspace)] if workspace.exists()
                      else ["-m", "ml_assets.definitions"])


def watch_status(stop: threading.Event, ui_url: str, log_hint: str,
                 interval: float = 2.0) -> None:
    """Print one line per event that matters (ml_assets.status) until `stop` is set."""
    from dagster import DagsterInstance

    from ml_assets.status import StatusWatcher

    complained = False
    try:
        with DagsterInstance.get() as instance:
            watcher = StatusWatcher(instance, ui_url=ui_url, log_hint=log_hint)
            while not stop.wait(interval):
                try:
                    lines = watcher.poll()
                    complained = False
                except Exception as exc:  # noqa: BLE001 - a busy or migrating store: retry
                    if not complained:
                        print(f"status: cannot read the Dagster instance yet ({exc}); "
                              "retrying", flush=True)
                    complained = True
                    continue
                for line in lines:
                    print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)
    except Exception as exc:  # noqa: BLE001 - the platform keeps running without it
        print(f"status lines stopped: {exc}", file=sys.stderr, flush=True)


def up(host: str, port: int, api_port: int, no_api: bool = False) -> int:
    """Mark runs orphaned by a crash failed, train once if needed, then run the
    prediction API and `dg dev` (webserver + daemon; `dagster dev` without dg) until
    Ctrl-C. A child that dies is restarted (ml_assets.supervision: growing pauses, at
    most ML_UP_MAX_RESTARTS=3 times in 10 minutes); the API keeps answering while
    Dagster restarts. When a child dies once more, everything stops (the API flushes
    its log first) and `up` exits 1 naming it. Their output goes to
    $ML_PLATFORM_HOME/logs/; the terminal gets one line per event that matters
    (ml_assets.status)."""
    from ml_assets.orphans import say_orphans
    from ml_assets.supervision import RestartPolicy, Supervisor, dagster_death

    try:
        policy = RestartPolicy.from_env()
    except ValueError as exc:
        print(f"ml-platform up: {exc}", file=sys.stderr)
        return 2
    say_orphans()
    code = train(if_missing=True)
    if code:
        return code
    settings = PlatformSettings.from_env()
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = dagster_command(host, port)

    def stop(signum, frame):  # SIGTERM stops the children too, like Ctrl-C
        raise KeyboardInterrupt

    def interruptible() -> None:
        # Started in the background (nohup, `&` in a script), a process inherits an
        # ignored SIGINT, and `dagster dev` maps SIGTERM onto SIGINT: the children could
        # then not be stopped at all. They get the default back before they start.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def before_restart(child) -> None:  # runs the dead code server left behind
        if child.name == "Dagster":
            say_orphans()

    def say(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)

    supervisor = Supervisor(policy, say=say, preexec_fn=interruptible,
                            before_restart=before_restart)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ui_url = f"http://{host}:{port}"
    dagster_log, api_log = logs / "dagster.log", logs / "api.log"
    if not no_api:
        supervisor.start(
            "prediction API",
            [sys.executable, "-m", "serving", "--host", host, "--port", str(api_port)],
            api_log)
        print(f"Prediction API on http://{host}:{api_port}  (docs at /docs; log {api_log})")
    supervisor.start("Dagster", command, dagster_log, describe=dagster_death)
    tool = "dg dev" if Path(command[0]).name == "dg" else "dagster dev"
    print(f"Dagster UI on {ui_url}  ({tool}: webserver + daemon; log {dagster_log})")
    print("Ctrl-C stops everything. Status (training, promotion, drift, retrains, "
          "rollouts, failures) follows:", flush=True)
    halt = threading.Event()
    watcher = threading.Thread(target=watch_status, name="ml-platform-status", daemon=True,
                               args=(halt, ui_url, f"Dagster's output in {dagster_log}"))
    watcher.start()
    gave_up = None
    try:
        gave_up = supervisor.watch()
    except KeyboardInterrupt:
        pass
    finally:
        halt.set()
        supervisor.stop_all()
        watcher.join(timeout=5)
    if gave_up is None:
        return 0
    times = "once" if gave_up.deaths == 1 else f"{gave_up.deaths} times"
    print(f"ml-platform up: {gave_up.name} died {times} within "
          f"{policy.window_seconds / 60:g} min, the last time: {gave_up.what}; not "
          "restarting it again: everything is stopped"
          f"{'' if no_api else ' (the prediction API too)'}. Its output: {gave_up.log}",
          file=sys.stderr)
    return 1


def rollback(to_version: str | None, reason: str) -> int:
    """Point `champion` back at the previous champion (or a named version)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml_assets.core.artifacts.loading import check_model
    from ml_assets.core.registry import champion as registry

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
    now = (f"champion is version {change.version} again" if change.action == "rolled back"
           else f"champion is now version {change.version}, which was never champion before")
    print(f"{change.name}: {now} (was {change.previous}); a running API picks it up on its "
          "next poll or POST /admin/reload")
    return 0


def rollout(action: str, mode: str = "canary", version: str | None = None,
            share: float = 0.1, steps: list[float] | None = None, step_minutes: float = 60.0,
            reason: str = "stopped by hand") -> int:
    """Start, show or stop a rollout of a registered version against the champion (the
    API follows the registry on its next poll; `rollout_evaluation` decides it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml_assets.core.artifacts.loading import check_model
    from ml_assets.core.registry import champion as registry
    from ml_assets.core.rollout.plan import end_rollout, read_rollout, start_rollout, step_schedule

    settings = PlatformSettings.from_env()
    client = MlflowClient(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    name = settings.registered_model_name
    state = read_rollout(client, name)
    plan = state.plan if state.active else None
    if action == "status":
        if plan is None:
            last = state.tags.get("rollout.outcome")
            print(f"{name}: no rollout in progress" + (
                f" (last: {last}: {state.tags.get('rollout.reason', '')})" if last else ""))
            return 0
        share_now = (f"canary share now {plan.share_at():.0%}" if plan.mode == "canary"
                     else "every request copied")
        print(f"{name}: {plan.mode} rollout of version {plan.version} against champion "
              f"{plan.champion_version} since {plan.started_at.isoformat(timespec='seconds')}"
              f" ({share_now}); rollout_evaluation decides as labels arrive")
        return 0
    if action == "stop":
        if plan is None:
            print(f"{name}: no rollout in progress", file=sys.stderr)
            return 1
        end_rollout(client, name, plan, "rolled_back", reason)
        print(f"{name}: rollout of version {plan.version} stopped; champion "
              f"{plan.champion_version} answers every request again")
        return 0
    champion = registry.alias_version(client, name, registry.CHAMPION)
    if champion is None:
        print(f"rollout refused: {name} has no champion yet (ml-platform train)",
              file=sys.stderr)
        return 1
    if version is None:
        challenger = registry.alias_version(client, name, registry.CHALLENGER)
        if challenger is None:
            print(f"rollout refused: {name} has no challenger; name one with --version",
                  file=sys.stderr)
            return 1
        version = str(challenger.version)
    try:
        schedule = step_schedule(share, steps or [], step_minutes)
        # What the API would refuse to load is never rolled out.
        check_model(f"models:/{name}/{version}", source=f"version {version}")
        if str(version) == str(champion.version):
            raise ValueError(f"version {version} is already the champion of {name}")
        if plan is not None and plan.version != str(version):
            end_rollout(client, name, plan, "replaced", f"ml-platform rollout start of "
                        f"version {version}")
        started = start_rollout(client, name, mode, version, str(champion.version), schedule)
    except Exception as exc:  # noqa: BLE001 - a clear refusal, no traceback
        print(f"rollout refused: {exc}", file=sys.stderr)
        return 1
    what = (", ".join(f"{s:.0%} from minute {o / 60:g}" for o, s in started.steps)
            if mode == "canary" else "a copy of every request, answers never returned")
    print(f"{name}: version {version} in {mode} against champion {champion.version} "
          f"({what}); the API follows within ML_API_POLL_SECONDS, rollout_evaluation "
          "decides as labels arrive (ml-platform rollout status)")
    return 0


REFUSED_EXIT = 3  # `reexecute`: the new run was refused by a blocking check


def reexecute(run_id: str, verbose: bool = False) -> int:
    """Re-execute failed run `run_id` from its failure (a run left STARTED by a process
    that is gone is marked failed first) and wait for the new run. Exit 0 when it
    succeeds, 3 when blocking checks refuse it (a decision, said in one line), 1 when it
    fails or cannot be re-executed (the reason, never a traceback)."""
    from dagster import DagsterInstance

    from ml_assets.orphans import mark_orphan, orphan_of
    from ml_assets.recovery import RecoveryError, reexecute_from_failure
    from ml_assets.status import refused_checks

    with DagsterInstance.get() as instance:
        parent = instance.get_run_by_id(run_id)
        orphan = orphan_of(instance, parent) if parent is not None else None
        if orphan is not None and mark_orphan(instance, orphan):
            print(f"run {run_id} was left {orphan.status} by process {orphan.pid}, which no "
                  "longer exists: marked failed", flush=True)
        try:
            outcome = reexecute_from_failure(run_id, instance, verbose=verbose)
        except RecoveryError as exc:
            print(f"reexecute refused: {exc}", file=sys.stderr)
            return 1
        new_run = instance.get_run_by_id(outcome.run_id)
        promotion = new_run.tags.get(PROMOTION_TAG) if new_run is not None else None
    run = f"run {outcome.run_id} ({outcome.job_name}, re-execution of {run_id})"
    steps = ", ".join(outcome.steps) or "none"
    if outcome.success:
        decided = ("; the challenger was not promoted (a decision: the champion stays)"
                   if promotion == "refused" else "")
        print(f"{run} succeeded{decided}; steps: {steps}")
        return 0
    refused = refused_checks(outcome.all_events)
    if refused:
        why = " ".join(refused[0].split())
        why = why if len(why) <= 400 else why[:399] + "…"  # the whole text is in the UI
        more = f" (and {len(refused) - 1} more, in the Dagster UI)" if len(refused) > 1 else ""
        print(f"{run} ran and was refused by {why}{more}", file=sys.stderr)
        return REFUSED_EXIT
    print(f"{run} failed; steps: {steps}:\n  " + "\n  ".join(failure_reasons(outcome)),
          file=sys.stderr)
    return 1


def held_out_traffic(settings: PlatformSettings, frame, target: str):
    """The data source's rows the champion never trained on (its recorded held-out
    split, core/data/held_out.py); ValueError naming why they cannot be told apart."""
    import json

    import mlflow
    from mlflow.tracking import MlflowClient

    from ml_assets.core.data.held_out import HELD_OUT_ARTIFACT, unseen_rows
    from ml_assets.core.registry import champion as registry

    name = settings.registered_model_name
    client = MlflowClient(settings.mlflow_tracking_uri)
    champion = registry.alias_version(client, name, registry.CHAMPION)
    if champion is None:
        raise ValueError(f"{name} has no champion yet (ml-platform train), so no held-out "
                         "rows are known")
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=champion.run_id, artifact_path=HELD_OUT_ARTIFACT,
            tracking_uri=settings.mlflow_tracking_uri)
        record = json.loads(Path(local).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - no record: said by unseen_rows
        record = None
    return unseen_rows(frame, target, record)


def simulate(args) -> int:
    """Send realistic (optionally drifted) traffic to the API: rows the champion never
    trained on (its held-out split), or with --rows all every row of the data source."""
    from ml_assets.core.rollout.traffic import simulate as run
    from ml_assets.resources.factory import build_resources

    settings = PlatformSettings.from_env()
    source = build_resources(settings)["data_source"]
    frame = source.load()
    if args.rows == "held-out":
        try:
            chosen = held_out_traffic(settings, frame, source.target_column)
        except ValueError as exc:
            print(f"simulate refused: {exc}; or send every row of the data source, the "
                  "training rows included, with --rows all (live error then looks better "
                  "than it is)", file=sys.stderr)
            return 1
        frame = chosen.rows
        print(f"sending {chosen.note}")
    else:
        print(f"sending all {len(frame)} rows of the data source, the champion's training "
              "rows included")
    result = run(args.url, frame, source.target_column, requests=args.requests,
                 shift_after=args.shift_after, shift=args.shift, concurrency=args.concurrency,
                 labels_dir=None if args.no_labels else settings.labels_dir,
                 api_key=os.environ.get("ML_API_KEY") or None, seed=args.seed,
                 max_seconds=args.max_seconds, client_keys=args.clients)
    print(f"sent {result.sent} requests in {result.seconds:.1f} s: {result.ok} ok, "
          f"{result.failed} failed, {result.shifted} shifted; statuses {result.status_counts};"
          f" model versions {result.model_versions}")
    variants = getattr(result, "variants", None)
    if variants:
        print("variants: " + ", ".join(f"{name} {count}" for name, count in
                                       sorted(variants.items())))
    if result.labels_file:
        print(f"true labels written to {result.labels_file}")
    return 0 if result.ok else 1


def _port(variable: str, default: int) -> int:
    """A port from the environment, or a one-line refusal naming the variable."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    raise SystemExit(f"ml-platform: {variable}={value!r} is not a port number (1-65535)")


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
    up_parser.add_argument("--port", type=int, default=_port("ML_UI_PORT", 3000),
                           help="Dagster UI port (default: ML_UI_PORT or 3000)")
    up_parser.add_argument("--api-port", type=int, default=_port("ML_API_PORT", 8000),
                           help="prediction API port (default: ML_API_PORT or 8000)")
    up_parser.add_argument("--no-api", action="store_true", help="do not start the API")
    rollback_parser = sub.add_parser("rollback", help="restore the previous champion")
    rollback_parser.add_argument("--to", dest="to_version", help="a specific version")
    rollback_parser.add_argument("--reason", default="manual rollback")
    roll = sub.add_parser("rollout", help="start, show or stop a canary/shadow rollout")
    roll.add_argument("action", choices=["start", "status", "stop"])
    roll.add_argument("--mode", choices=["canary", "shadow"], default="canary")
    roll.add_argument("--version", help="the version to roll out (default: the challenger)")
    roll.add_argument("--share", type=float, default=0.1,
                      help="the canary's first share of requests (0-1)")
    roll.add_argument("--steps", type=float, nargs="*", default=[],
                      help="later canary shares, one every --step-minutes")
    roll.add_argument("--step-minutes", type=float, default=60.0)
    roll.add_argument("--reason", default="stopped by hand", help="recorded by `stop`")
    reexec = sub.add_parser("reexecute", help="re-run a failed run from its failure")
    reexec.add_argument("run_id", help="the failed run's id (Dagster UI, `dagster run list`)")
    reexec.add_argument("--verbose", action="store_true",
                        help="print Dagster's event log (every step, stack traces)")
    sim = sub.add_parser("simulate", help="send realistic traffic to the prediction API")
    sim.add_argument("--url", default=f"http://127.0.0.1:{_port('ML_API_PORT', 8000)}")
    sim.add_argument("--requests", type=int, default=300)
    sim.add_argument("--shift-after", type=int, default=None,
                     help="requests after this index are shifted")
    sim.add_argument("--shift", type=float, default=1.5,
                     help="shift in reference standard deviations (with --shift-after)")
    sim.add_argument("--concurrency", type=int, default=4)
    sim.add_argument("--no-labels", action="store_true", help="do not write true labels")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--max-seconds", type=float, default=300.0)
    sim.add_argument("--rows", choices=["held-out", "all"], default="held-out",
                     help="held-out (default): the rows the champion never trained on (its "
                     "recorded held-out split); all: every row of the data source")
    sim.add_argument("--clients", type=int, default=0,
                     help="send each request with one of N stable client keys, so a canary "
                     "rollout assigns clients, not requests (0: no key)")
    args = parser.parse_args(argv)
    if args.command == "simulate" and args.clients < 0:
        parser.error(f"--clients must be 0 or more, got {args.clients}")
    prepare_environment(PlatformSettings.from_env())
    if args.command == "train":
        return train(args.if_missing, args.allow_breaking_change, args.verbose)
    if args.command == "simulate":
        return simulate(args)
    if args.command == "rollback":
        return rollback(args.to_version, args.reason)
    if args.command == "reexecute":
        return reexecute(args.run_id, args.verbose)
    if args.command == "rollout":
        return rollout(args.action, args.mode, args.version, args.share, args.steps,
                       args.step_minutes, args.reason)
    return up(args.host, args.port, args.api_port, args.no_api)


if __name__ == "__main__":
    sys.exit(main())
