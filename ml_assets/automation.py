"""Automation: jobs, sensors, schedules and freshness policies, written once here.

Everything is on by default, so `dagster dev` (webserver + daemon) closes the loop:
new production data is materialized as it arrives, drift is scored and performance
estimated after it (automation condition) and daily (schedule), a failed drift check
with an estimated (or realised) performance drop retrains once per episode, the
champion is retrained weekly, and failed runs raise an alert.
"""

import hashlib
import json
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    FreshnessPolicy,
    RunFailureSensorContext,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    run_failure_sensor,
    schedule,
    sensor,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ml_assets.core.data.production_rows import read_label_files
from ml_assets.core.estimation import evidence
from ml_assets.core.registry import champion as registry
from ml_assets.core.rollout.plan import read_rollout
from ml_assets.resources import MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.settings import PlatformSettings
from ml_assets.shared import (
    DRIFT_CHECK,
    ESTIMATE_CHECK,
    check_evaluation,
    daily_partitions,
)

SETTINGS = PlatformSettings.from_env()
TRIGGER_TAG = "ml/trigger"

train_model_job = define_asset_job(
    "train_model",
    selection=AssetSelection.groups("training", "registry")
    | AssetSelection.assets("reference_profile"),
    description="The whole training graph: raw data, validation, features, training, the "
    "metrics gate, registration, champion/challenger promotion and the reference profile.",
)

score_drift_job = define_asset_job(
    "score_drift",
    selection=AssetSelection.assets("production_data", "drift_scores", "live_performance",
                                    "estimated_performance"),
    partitions_def=daily_partitions,
    description="One day of production data, its drift scores, estimated performance "
    "and live performance.",
)

def previous_day(when: datetime) -> str:
    """The UTC day before `when` (YYYY-MM-DD): the last complete day at 00:30 UTC."""
    utc = when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return (utc.date() - timedelta(days=1)).isoformat()


@schedule(name="daily_drift_scoring", cron_schedule="30 0 * * *", job=score_drift_job,
          execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
          description="Scores yesterday's partition (the complete previous UTC day) every "
          "day at 00:30 UTC.")
def daily_drift_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    """At 00:30 UTC the newest partition is the day that just began (the partitions
    reach one day ahead, end_offset=1, so the API's rows of today are scored as they
    arrive); the end-of-day verdict belongs to yesterday, which is complete."""
    when = context.scheduled_execution_time or datetime.now(timezone.utc)
    day = previous_day(when)
    if day not in set(daily_partitions.get_partition_keys(current_time=when)):
        return SkipReason(f"{day} is not a partition (before ML_MONITORING_START_DATE)")
    return RunRequest(run_key=f"daily_drift_scoring:{day}", partition_key=day,
                      tags={TRIGGER_TAG: "daily_schedule"})

weekly_retrain_schedule = ScheduleDefinition(
    name="weekly_retrain", job=train_model_job, cron_schedule="0 3 * * 1",
    execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    tags={TRIGGER_TAG: "weekly_schedule"},
    description="Retrains every Monday 03:00 UTC on the data of the week so far; "
    "the challenger is promoted only if it beats the champion.")

monitoring_automation = AutomationConditionSensorDefinition(
    "monitoring_automation", target=AssetSelection.groups("monitoring"),
    default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Evaluates automation conditions: a day's production_data after its batch "
    "scoring, live_performance and drift_scores after new production data (blocking "
    "checks upstream are respected).")


@sensor(name="production_data_sensor", minimum_interval_seconds=60,
        asset_selection=AssetSelection.assets("production_data"),
        default_status=DefaultSensorStatus.RUNNING)
def production_data_sensor(context: SensorEvaluationContext,
                           production: ProductionDataResource) -> SensorResult:
    """Materializes a `production_data` partition when its day in the prediction log
    or the landing directory grew since the last request (cursor: row-count and
    file-time signatures per day)."""
    seen = json.loads(context.cursor or "{}")
    signatures = {day.isoformat(): f"log:{production.row_count(day.isoformat())}"
                  for day in production.prediction_days()}
    for day, mtime in production.landing_days().items():
        signatures[day] = signatures.get(day, "") + f"|landing:{mtime:.0f}"
    valid = set(daily_partitions.get_partition_keys())
    requests = [RunRequest(run_key=f"production_data:{day}:{signature}", partition_key=day,
                           tags={TRIGGER_TAG: "new_production_data"})
                for day, signature in sorted(signatures.items())
                if day in valid and seen.get(day) != signature]
    if not requests:
        return SensorResult(skip_reason=SkipReason("no new production data"),
                            cursor=context.cursor)
    return SensorResult(run_requests=requests, cursor=json.dumps(signatures))


def label_files(labels_dir: str | Path) -> dict[str, str]:
    """file name -> "mtime_ns:size" for every labels file (<dir>/*.csv)."""
    root = Path(labels_dir)
    if not root.is_dir():
        return {}
    signatures = {}
    for path in sorted(root.glob("*.csv")):
        try:
            stat = path.stat()
        except OSError:  # removed meanwhile
            continue
        signatures[path.name] = f"{stat.st_mtime_ns}:{stat.st_size}"
    return signatures


def _request_ids(path: Path) -> tuple[set[str], str | None]:
    """The request ids a labels file names, or none and why it cannot be read."""
    files = read_label_files([path])
    if files.skipped:
        return set(), files.skipped[0].reason
    return set(files.labels["request_id"].dropna().astype(str)), None


@sensor(name="live_performance_on_labels", minimum_interval_seconds=30,
        asset_selection=AssetSelection.assets("production_data", "live_performance"),
        default_status=DefaultSensorStatus.RUNNING)
def live_performance_on_labels(context: SensorEvaluationContext,
                               production: ProductionDataResource) -> SensorResult:
    """Materializes `live_performance` for the days whose predictions just got labels
    (new or changed files in ML_LABELS_DIR, matched to the prediction log by request_id
    over the last ML_LABEL_LOOKBACK_DAYS days), with that day's `production_data`
    rebuilt first in the same run (it may predate the labelled predictions). No waiting
    for the daily schedule. A file that cannot be read is named in the log and the skip
    reason; the other files still count."""
    seen = json.loads(context.cursor or "{}")
    files = label_files(production.labels_dir)
    changed = [name for name, signature in files.items() if seen.get(name) != signature]
    if not changed:
        return SensorResult(skip_reason=SkipReason("no new labels"), cursor=context.cursor)
    wanted: set[str] = set()
    skipped: dict[str, str] = {}
    for name in changed:
        ids, problem = _request_ids(Path(production.labels_dir) / name)
        wanted |= ids
        if problem:
            skipped[name] = problem
    valid = set(daily_partitions.get_partition_keys())
    days = sorted((d.isoformat() for d in production.prediction_days()), reverse=True)
    days = [d for d in days if d in valid][: SETTINGS.label_lookback_days]
    # The log's request-id index finds the labelled requests: no day is decoded whole.
    found = production.predictions_of(wanted, features=False) if wanted else None
    found_days = (set() if found is None or not len(found)
                  else set(found["timestamp"].dt.strftime("%Y-%m-%d")))
    labelled_days = [day for day in days if day in found_days]
    stamp = hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    # production_data is rebuilt in the same run, before live_performance: a day's
    # materialization may predate the very predictions these labels are for.
    requests = [RunRequest(
        run_key=f"live-performance:{day}:{stamp}", partition_key=day,
        asset_selection=[AssetKey("production_data"), AssetKey("live_performance")],
        tags={TRIGGER_TAG: "new_labels"}) for day in sorted(labelled_days)]
    cursor = json.dumps(files)
    unreadable = "; ".join(f"{name} ({why})" for name, why in skipped.items())
    if unreadable:
        context.log.warning(f"labels file(s) left out: {unreadable}")
    if not requests:
        return SensorResult(skip_reason=SkipReason(
            f"{len(changed)} new labels file(s) match no prediction of the last "
            f"{SETTINGS.label_lookback_days} days"
            + (f"; left out: {unreadable}"[:1500] if unreadable else "")), cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)


@sensor(name="rollout_on_labels", minimum_interval_seconds=30,
        asset_selection=AssetSelection.assets("rollout_evaluation", "reference_profile"),
        default_status=DefaultSensorStatus.RUNNING)
def rollout_on_labels(context: SensorEvaluationContext, production: ProductionDataResource,
                      mlflow_tracking: MlflowTracking) -> SensorResult:
    """While a canary or shadow rollout runs, materializes `rollout_evaluation` when
    labels arrive (and once an hour regardless, for the time limit and the failure
    guards); when the champion moved outside training (a rollout's promotion, a
    rollback), rebuilds `reference_profile` for it so drift is scored against what it
    was trained on."""
    state = json.loads(context.cursor or "{}")
    try:
        rollout = read_rollout(mlflow_tracking.client, mlflow_tracking.registered_model_name)
        stale = _profiled_champion(context, mlflow_tracking)
    except Exception as exc:  # noqa: BLE001 - registry down: try again next tick
        return SensorResult(skip_reason=SkipReason(f"registry unavailable: {exc}"[:300]),
                            cursor=context.cursor)
    requests = []
    if stale is not None:  # the champion moved outside a training run (a rollout's verdict)
        requests.append(RunRequest(
            run_key=f"profile-for-champion:{stale}",
            asset_selection=[AssetKey("reference_profile")],
            tags={TRIGGER_TAG: "champion_changed"}))
    if rollout.active and rollout.plan is not None:
        plan = rollout.plan
        hour = int(plan.elapsed_seconds() // 3600)
        signature = hashlib.sha1(json.dumps([label_files(production.labels_dir), hour],
                                            sort_keys=True).encode()).hexdigest()[:12]
        key = f"{plan.version}:{plan.started_at.isoformat()}"
        if state.get("rollout") != [key, signature]:
            requests.append(RunRequest(
                run_key=f"rollout:{plan.version}:{plan.salt}:{signature}",
                asset_selection=[AssetKey("rollout_evaluation")],
                tags={TRIGGER_TAG: "rollout_labels", "ml/rollout_version": plan.version,
                      "ml/rollout_mode": plan.mode}))
            state["rollout"] = [key, signature]
    if not requests:
        why = "rollout: no new labels" if rollout.active else "no rollout in progress"
        return SensorResult(skip_reason=SkipReason(why), cursor=json.dumps(state))
    return SensorResult(run_requests=requests, cursor=json.dumps(state))


@sensor(name="batch_input_sensor", minimum_interval_seconds=60,
        asset_selection=AssetSelection.assets("batch_predictions"),
        default_status=DefaultSensorStatus.RUNNING)
def batch_input_sensor(context: SensorEvaluationContext,
                       production: ProductionDataResource) -> SensorResult:
    """Scores a day in batch (`batch_predictions`) when files land in, or change in, its
    ML_BATCH_INPUT_DIR/<YYYY-MM-DD>/ directory; the day's production data and drift
    follow by their automation conditions."""
    seen = json.loads(context.cursor or "{}")
    days = {day: f"{mtime:.3f}" for day, mtime in production.batch_input_days().items()}
    valid = set(daily_partitions.get_partition_keys())
    requests = [RunRequest(run_key=f"batch:{day}:{stamp}", partition_key=day,
                           tags={TRIGGER_TAG: "batch_input"})
                for day, stamp in sorted(days.items())
                if day in valid and seen.get(day) != stamp]
    if not requests:
        return SensorResult(skip_reason=SkipReason("no new batch input"),
                            cursor=context.cursor)
    return SensorResult(run_requests=requests, cursor=json.dumps(days))


def _profiled_champion(context: SensorEvaluationContext,
                       mlflow_tracking: MlflowTracking) -> str | None:
    """The champion's version when `reference_profile` was last built for another one
    (it must be rebuilt so drift is scored against what the champion was trained on);
    None when it is current or was never built (training builds it)."""
    event = context.instance.get_latest_materialization_event(AssetKey("reference_profile"))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("champion_version")
    champion = registry.alias_version(mlflow_tracking.client,
                                      mlflow_tracking.registered_model_name, registry.CHAMPION)
    if champion is None or value is None or str(value.value) == str(champion.version):
        return None
    return str(champion.version)


DRIFT_CHECK_KEY = AssetCheckKey(AssetKey("drift_scores"), DRIFT_CHECK)
ESTIMATE_CHECK_KEY = AssetCheckKey(AssetKey("estimated_performance"), ESTIMATE_CHECK)
_HISTORY = 200  # check evaluations and materializations read per tick
_REMEMBERED_DAYS = 120  # decided days kept in the cursor


@sensor(name="retrain_on_drift", job=train_model_job, minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING)
def retrain_on_drift(context: SensorEvaluationContext) -> SensorResult:
    """Launches `train_model` when a day's evidence says the model is or will be worse
    (ml_assets/core/estimation/evidence.py): its drift check failed (ERROR) AND its
    estimated performance lies below the metrics gate (the estimate check failed), or
    its labels show a realised drop (live_performance). A drift the estimate does not
    follow is a warning (logged, and in the skip reason), not a retrain;
    ML_RETRAIN_ON_ANY_DRIFT=true restores retraining on any failed drift check. One
    episode (days asking for a retrain, not interrupted by one that does not) retrains
    once, launches are at least ML_RETRAIN_COOLDOWN_SECONDS apart, and the run's tags
    carry the evidence: the day, the drift check and its drifted features, the
    estimate."""
    state = json.loads(context.cursor or "{}")
    days = _day_evidence(context.instance)
    if state and "seen" not in state:  # the former cursor: its history was decided then
        cursor = json.dumps({"seen": {day: item[1] for day, item in days.items()},
                             "launched": [], "in_episode": state.get("in_episode", False),
                             "last_launch": state.get("last_launch", 0.0)})
        return SensorResult(skip_reason=SkipReason(
            f"cursor upgraded: {len(days)} earlier day(s) taken as decided"), cursor=cursor)
    seen: dict[str, str] = state.get("seen", {})
    launched: set[str] = set(state.get("launched", []))
    fresh = {day: item for day, item in days.items() if seen.get(day) != item[1]}
    if not fresh:
        return SensorResult(skip_reason=SkipReason("no new drift or performance evidence"),
                            cursor=context.cursor)
    newest_decided = max(seen, default="")
    in_episode = state.get("in_episode", False)
    last_launch = state.get("last_launch", 0.0)
    cooldown = SETTINGS.retrain_cooldown_seconds
    requests, notes = [], []
    for day in sorted(fresh):
        evidence_of_day, signature = fresh[day]
        decision = evidence.decide(evidence_of_day, SETTINGS.retrain_on_any_drift)
        if decision.action == "wait":
            notes.append(decision.reason)  # decided on a later tick, once the estimate is in
            continue
        seen[day] = signature
        # An older day decided again (late labels rebuilt its evidence) neither ends the
        # current episode nor retrains a day already retrained for.
        revisited = day <= newest_decided
        if decision.action != "retrain":
            if decision.action == "warn":
                context.log.warning(decision.reason)
                notes.append(f"warning: {decision.reason}")
            if not revisited:
                in_episode = False  # a day that asks for no retrain ends the episode
            continue
        if day in launched:
            notes.append(f"{day}: already retrained for this day")
            continue
        if in_episode:
            notes.append(f"{day}: same episode, already retrained")
            continue
        now = time.time()
        if now - last_launch < cooldown:
            notes.append(f"{day}: in cooldown for {cooldown - (now - last_launch):.0f} s more")
            in_episode = True
            continue
        requests.append(RunRequest(run_key=f"retrain-on-evidence:{day}:{signature}",
                                   tags=_evidence_tags(evidence_of_day, decision)))
        launched.add(day)
        in_episode, last_launch = True, now
    recent = dict(sorted(seen.items())[-_REMEMBERED_DAYS:])
    cursor = json.dumps({"seen": recent, "launched": sorted(launched)[-_REMEMBERED_DAYS:],
                         "in_episode": in_episode, "last_launch": last_launch})
    if requests:
        return SensorResult(run_requests=requests, cursor=cursor)
    return SensorResult(skip_reason=SkipReason("; ".join(notes)[:2000] or "no retrain asked "
                                               "for"), cursor=cursor)


def _evidence_tags(day: evidence.DayEvidence, decision: evidence.Decision) -> dict[str, str]:
    """The run's tags: which day, which check, which estimate (Dagster caps a tag's value,
    so long details are cut)."""
    return {TRIGGER_TAG: "drift" if day.drift_failed else "realised_drop",
            "ml/evidence": decision.evidence, "ml/evidence_days": day.partition,
            "ml/drift_partition": day.partition,
            "ml/drift_check": DRIFT_CHECK if day.drift_failed else "-",
            "ml/drifted_features": (day.drift_detail if len(day.drift_detail) <= 200
                                    else day.drift_detail[:197] + "...") or "-",
            "ml/estimate_check": ESTIMATE_CHECK if day.estimate_verdict else "-",
            "ml/estimate": (day.estimate_detail or day.estimate_verdict or "-")[:250],
            "ml/realised": day.realised_detail[:250] or "-"}


def _latest_checks(instance, key: AssetCheckKey) -> dict[str, tuple[int, AssetCheckEvaluation]]:
    """partition -> (record id, evaluation) of the latest evaluation of check `key`."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=_HISTORY, status={AssetCheckExecutionRecordStatus.SUCCEEDED,
                                     AssetCheckExecutionRecordStatus.FAILED})
    latest: dict[str, tuple[int, AssetCheckEvaluation]] = {}
    for record in records:  # newest first
        evaluation = _check_evaluation(record.event)
        if evaluation is None:
            continue
        partition = record.partition or _metadata_value(evaluation, "partition")
        if partition is not None and str(partition) not in latest:
            latest[str(partition)] = (record.id, evaluation)
    return latest


def _realised(instance, minimums: dict[str, float]) -> dict[str, tuple[int, bool | None, str]]:
    """partition -> (storage id, realised drop?, detail) from live_performance."""
    result = instance.fetch_materializations(AssetKey("live_performance"), limit=_HISTORY)
    found: dict[str, tuple[int, bool | None, str]] = {}
    for record in result.records:  # newest first
        partition = record.partition_key
        if partition is None or partition in found or record.asset_materialization is None:
            continue
        metadata = record.asset_materialization.metadata
        rows = metadata.get("labelled_rows")
        accuracy = metadata.get("accuracy")
        drop, detail = evidence.realised_drop(
            float(accuracy.value) if accuracy is not None else None,
            int(rows.value) if rows is not None else 0,
            minimums.get(partition, SETTINGS.metric_threshold))
        found[partition] = (record.storage_id, drop, detail)
    return found


def _day_evidence(instance) -> dict[str, tuple[evidence.DayEvidence, str]]:
    """partition -> (its evidence, a signature that changes with any new record of it)."""
    drift = _latest_checks(instance, DRIFT_CHECK_KEY)
    estimates = _latest_checks(instance, ESTIMATE_CHECK_KEY)
    minimums = {}
    for day, (_, evaluation) in estimates.items():
        thresholds = _metadata_value(evaluation, "thresholds")
        if isinstance(thresholds, dict) and "accuracy" in thresholds:
            minimums[day] = float(thresholds["accuracy"])
    realised = _realised(instance, minimums)
    days = {}
    for day in set(drift) | set(estimates) | set(realised):
        drift_id, drift_eval = drift.get(day, (0, None))
        estimate_id, estimate_eval = estimates.get(day, (0, None))
        realised_id, drop, realised_detail = realised.get(day, (0, None, ""))
        failed = (None if drift_eval is None else
                  not drift_eval.passed and drift_eval.severity.value == "ERROR")
        features = names_within(_drifted_features(drift_eval)) if drift_eval else ""
        verdict = _metadata_value(estimate_eval, "verdict") if estimate_eval else None
        days[day] = (evidence.DayEvidence(
            day, failed, features or (drift_eval.description or "" if drift_eval else ""),
            str(verdict) if verdict is not None else None,
            (estimate_eval.description or "") if estimate_eval else "", drop,
            realised_detail), f"{drift_id}:{estimate_id}:{realised_id}")
    return days


_check_evaluation = check_evaluation


def _metadata_value(evaluation: AssetCheckEvaluation, key: str) -> object:
    value = evaluation.metadata.get(key)
    return value.value if value is not None else None


def _drifted_features(evaluation: AssetCheckEvaluation) -> list[str]:
    """What failed the drift check: the features of its calibrated dataset verdict and the
    drifted prediction columns; the per-feature list for the fixed rule. [] if none."""
    names: list[str] = []
    for key in ("dataset_drifted_features", "prediction_drifted_columns"):
        found = _metadata_value(evaluation, key)
        names += [str(name) for name in found] if isinstance(found, list) else []
    if not names:
        found = _metadata_value(evaluation, "drifted_features")
        names = [str(name) for name in found] if isinstance(found, list) else []
    return names


def names_within(names: list[str], limit: int = 200) -> str:
    """Names joined by commas within `limit` characters, never cut mid-name: the rest
    counted ("a,b,+3 more")."""
    shown: list[str] = []
    for i, name in enumerate(names):
        rest = len(names) - i - 1
        candidate = ",".join([*shown, name]) + (f",+{rest} more" if rest else "")
        if len(candidate) > limit:
            return ",".join([*shown, f"+{len(names) - i} more"])
        shown.append(name)
    return ",".join(shown)


@run_failure_sensor(name="alert_on_run_failure", default_status=DefaultSensorStatus.RUNNING,
                    monitor_all_code_locations=False)
def alert_on_run_failure(context: RunFailureSensorContext) -> None:
    """Records every failed run in $ML_PLATFORM_HOME/alerts.jsonl and posts it to
    ML_ALERT_WEBHOOK_URL when set. A refused promotion is a decision, not a failed run
    (champion_comparison's check warns; the run succeeds): it is never paged."""
    run = context.dagster_run
    message = context.failure_event.message or ""
    alert = {"run_id": run.run_id, "job": run.job_name, "tags": dict(run.tags),
             "message": message[:2000], "kind": "failure",
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = SETTINGS.home / "alerts.jsonl"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(alert) + "\n")
    if SETTINGS.alert_webhook_url:
        request = urllib.request.Request(SETTINGS.alert_webhook_url,
                                         data=json.dumps(alert).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as exc:
            context.log.warning("alert webhook %s failed: %s", SETTINGS.alert_webhook_url, exc)


def freshness_policies() -> dict[str, FreshnessPolicy]:
    """The champion must be retrained within ML_RETRAIN_WINDOW_DAYS (default 7);
    drift must be scored daily. Overdue assets show as failing freshness in the UI."""
    window = timedelta(days=SETTINGS.retrain_window_days)
    retrain = FreshnessPolicy.time_window(fail_window=window,
                                          warn_window=window * 6 / 7)
    return {"trained_model": retrain, "champion_model": retrain,
            "drift_scores": FreshnessPolicy.time_window(fail_window=timedelta(hours=26),
                                                        warn_window=timedelta(hours=24))}


jobs = [train_model_job, score_drift_job]
schedules = [daily_drift_schedule, weekly_retrain_schedule]
sensors = [production_data_sensor, retrain_on_drift, alert_on_run_failure,
           monitoring_automation, live_performance_on_labels, rollout_on_labels,
           batch_input_sensor]


_Loaded = TypeVar("_Loaded")


def with_freshness(assets: Sequence[_Loaded]) -> list[_Loaded | AssetsDefinition]:
    """Attach the freshness policies to the assets they name (policy lives here, once).
    Only an AssetsDefinition can map its specs; anything else passes through as is."""
    policies = freshness_policies()

    def attach(spec: AssetSpec) -> AssetSpec:
        policy = policies.get(spec.key.to_user_string())
        return spec.replace_attributes(freshness_policy=policy) if policy else spec

    return [a.map_asset_specs(attach) if isinstance(a, AssetsDefinition) else a for a in assets]
