"""What `ml-platform up` tells a person at the terminal: one short line per event that
matters, read from the Dagster instance (the same one the UI shows).

`StatusWatcher.poll()` turns what happened in the instance since its cursor into lines:

- a training run finished (its held-out metrics),
- a model promoted (`champion_model` materialized: the version), or a rollout started
  instead (`champion_model` with `rollout_mode` canary or shadow),
- a challenger refused (the promotion check failed: why),
- drift scored (the `drift_within_limits` check: passed, warned or failed, the share of
  drifted features, the partition),
- a labels or landing file left out of the evidence (the `evidence_files_readable`
  check warned: the file and why),
- a retrain launched by drift or a realised performance drop (a run tagged
  `ml/trigger=drift` or `realised_drop`),
- a rollout decided (`rollout_evaluation` materialized: promote, rollback or continue),
- a day scored in batch (`batch_predictions`: rows, shards, model version, manifest),
- a day's live performance once labels arrived (`live_performance`: the champion's
  realised metrics on its labelled rows; days without labels say nothing),
- a run failed or was canceled (job, first reason, where its log is).

The cursor is a storage id of the instance's run status events (RUN_ENQUEUED, RUN_START,
RUN_SUCCESS, RUN_FAILURE, RUN_CANCELED), which every event log storage keeps in one
cross-run table, SQLite's run-sharded one included. A run's own events are read once it
has ended, so a line never misses an event still being written. Each poll reads at most
`limit` status events per type: a busy instance is caught up over several polls.

Also here: `failure_reasons`, one sentence per failed step or check of a run, used by
`ml-platform train` and by the run-failed line, and `refused_checks`, which tells a run
refused by blocking checks from a broken one (`ml-platform reexecute`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagster import AssetKey, DagsterEventType, DagsterInstance, RunStatusChangeRecordsFilter

if TYPE_CHECKING:
    from dagster._core.event_api import EventLogRecord, RunStatusChangeEventType

PROMOTION_CHECK = "challenger_beats_champion"  # ml_assets.registry.PROMOTION_CHECK
DRIFT_CHECK = "drift_within_limits"  # ml_assets.monitoring.DRIFT_CHECK
EVIDENCE_CHECK = "evidence_files_readable"  # ml_assets.shared.EVIDENCE_CHECK
TRIGGER_TAG = "ml/trigger"  # ml_assets.automation.TRIGGER_TAG
# retrain_on_drift's triggers (ml_assets.automation._evidence_tags) as said on a line.
_RETRAIN_CAUSES = {"drift": "drift", "realised_drop": "a realised performance drop"}

_LAUNCHED: tuple[RunStatusChangeEventType, ...] = (DagsterEventType.RUN_ENQUEUED,
                                                   DagsterEventType.RUN_START)
_ENDED: tuple[RunStatusChangeEventType, ...] = (
    DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)
_RUN_EVENTS = _LAUNCHED + _ENDED
_STEP_EVENTS = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION,
                DagsterEventType.STEP_FAILURE}
# Held-out metrics named on the training line, in this order, at most three.
_HEADLINE_METRICS = ("f1_weighted", "accuracy", "roc_auc", "r2", "rmse", "mae")
MAX_REASON = 160


# ---------------------------------------------------------------------------------------
# Failure reasons (a run's failed steps and checks as sentences)
# ---------------------------------------------------------------------------------------

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
    class names left out). `result`: anything with `all_events` (DagsterEvents), such as
    an ExecuteInProcessResult."""
    return _reasons(result.all_events)


def failures_beyond_refusal(reasons: list[str]) -> list[str]:
    """`reasons` without the promotion refusal, which is a decision (a WARN check in a
    run that succeeds), not a cause of failure."""
    kept = [r for r in reasons if not r.startswith(f"check {PROMOTION_CHECK} ")]
    return kept or ["run failed; see the Dagster UI for its logs"]


def _reasons(events: Iterable[Any]) -> list[str]:
    reasons = []
    for event in events:
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


def refused_checks(events: Sequence[Any]) -> list[str]:
    """The failed checks' sentences when every failed step of a run failed on a blocking
    check (the run was refused, a decision), else [] (it broke, or did not fail)."""
    failures = [e for e in events if e.is_step_failure]
    if not failures or any(e.step_failure_data.error is None
                           or e.step_failure_data.error.cls_name
                           != "DagsterAssetCheckFailedError" for e in failures):
        return []
    return [r for r in _reasons(events) if r.startswith("check ")]


# ---------------------------------------------------------------------------------------
# Status lines
# ---------------------------------------------------------------------------------------

def _short(text: Any, limit: int = MAX_REASON) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _values(metadata: dict[str, Any]) -> dict[str, Any]:
    """Raw values of a metadata dict (MetadataValue.value where there is one)."""
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def _share(value: Any) -> str:
    try:
        return f"{float(value):.0%}"
    except (TypeError, ValueError):
        return "?"


def materialization_line(asset: str, metadata: dict[str, Any], run_id: str,
                         partition: str | None = None) -> str | None:
    """The status line of one materialization of `asset` (of `partition`, for the daily
    assets), or None when it does not matter."""
    meta = _values(metadata)
    run = run_id[:8]
    day = partition or str(meta.get("partition") or "?")
    if asset == "batch_predictions":
        shards = meta.get("shards")
        return (f"batch scored for {day}: {meta.get('rows', '?')} rows in {shards} "
                f"shard{'' if shards == 1 else 's'} by {meta.get('model_name', 'model')} "
                f"version {meta.get('model_version', '?')}; manifest "
                f"{meta.get('output_path', '?')}")
    if asset == "live_performance":
        labelled = meta.get("labelled_rows")
        if not isinstance(labelled, (int, float)) or labelled <= 0:
            return None  # no labels yet: every day would say so
        shown = [f"{k}={float(meta[k]):.4f}" for k in _HEADLINE_METRICS
                 if isinstance(meta.get(k), (int, float))][:3]
        return (f"live performance for {day}: champion version "
                f"{meta.get('champion_version', '?')} {', '.join(shown) or 'scored'} on "
                f"{int(labelled)} labelled rows")
    if asset == "model_metrics":
        shown = [f"{k}={float(meta[k]):.4f}" for k in _HEADLINE_METRICS
                 if isinstance(meta.get(k), (int, float))][:3]
        return f"training run {run} finished: held-out {', '.join(shown) or 'metrics recorded'}"
    if asset == "champion_model":
        mode = str(meta.get("rollout_mode", "immediate"))
        name = meta.get("registered_model", "model")
        if mode in ("canary", "shadow"):
            return (f"rollout started: {name} version {meta.get('challenger_version')} "
                    f"({mode}) against champion {meta.get('champion_version')}; "
                    "rollout_evaluation decides on live labelled traffic")
        previous = meta.get("previous_champion")
        was = f" (was {previous})" if previous not in (None, "", "None") else ""
        return f"model promoted: {name} version {meta.get('champion_version')} is champion{was}"
    if asset == "rollout_evaluation":
        decision = str(meta.get("decision", "none"))
        version, champion = meta.get("challenger_version"), meta.get("champion_version")
        reason = _short(meta.get("reason", ""))
        if decision == "promote":
            return f"rollout decided: version {version} promoted to champion: {reason}"
        if decision == "rollback":
            return (f"rollout decided: version {version} rolled back, champion {champion} "
                    f"stays: {reason}")
        if decision == "continue":
            return f"rollout of version {version} continues: {reason}"
    return None


def drift_line(passed: bool, severity: str, metadata: dict[str, Any],
               description: str | None, partition: str | None) -> str:
    """The status line of one `drift_within_limits` evaluation."""
    meta = _values(metadata)
    partition = meta.get("partition") or partition or "unpartitioned"
    if passed and description and description.startswith("only "):
        # Too few rows to judge: no verdict, so none is claimed ("passed" would be one).
        return f"drift not judged for {partition}: {_short(description, 120)}"
    verdict = "passed" if passed else ("warned" if severity == "WARN" else "failed")
    line = (f"drift scored for {partition}: {verdict}, {_share(meta.get('share_drifted'))} "
            "of features drifted")
    if meta.get("prediction_drifted"):
        line += ", predictions drifted"
    if not passed:
        drifted = meta.get("drifted_features")
        if isinstance(drifted, list) and drifted:
            names = ", ".join(_short(name, 40) for name in map(str, drifted[:3]))
            more = f", +{len(drifted) - 3} more" if len(drifted) > 3 else ""
            line += f" ({names}{more})"
    return line


@dataclass
class StatusWatcher:
    """Reads `instance` from `cursor` on; `poll()` returns the new lines.

    `ui_url` (http://host:port of the Dagster UI) makes a failed run's line point at its
    page; `log_hint` is appended to it too (where the process output is written).
    Without `cursor` the watcher starts at the instance's present: history is not
    replayed."""

    instance: DagsterInstance
    ui_url: str | None = None
    log_hint: str | None = None
    cursor: int | None = None
    limit: int = 100
    _announced: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)
    _rollout_reasons: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.cursor is None:
            self.cursor = latest_cursor(self.instance)

    def poll(self) -> list[str]:
        records: list[EventLogRecord] = []
        horizon: int | None = None
        for event_type in _RUN_EVENTS:
            result = self.instance.fetch_run_status_changes(
                RunStatusChangeRecordsFilter(event_type, after_storage_id=self.cursor),
                limit=self.limit, ascending=True)
            records.extend(result.records)
            if len(result.records) >= self.limit:  # more to read: stop where this type did
                last = result.records[-1].storage_id
                horizon = last if horizon is None else min(horizon, last)
        if horizon is not None:
            records = [r for r in records if r.storage_id <= horizon]
        records.sort(key=lambda r: r.storage_id)
        lines: list[str] = []
        for record in records:
            lines.extend(self._lines_for(record))
            self.cursor = record.storage_id
        return lines

    # A run's lines -------------------------------------------------------------------

    def _lines_for(self, record) -> list[str]:
        entry = record.event_log_entry
        event_type = entry.dagster_event.event_type
        run = self.instance.get_run_by_id(entry.run_id)
        if run is None:
            return []
        if event_type in _LAUNCHED:
            cause = _RETRAIN_CAUSES.get(run.tags.get(TRIGGER_TAG, ""))
            if cause is None or not self._first(run.run_id):
                return []
            partition = run.tags.get("ml/drift_partition", "?")
            return [f"retrain launched by {cause} in {partition}: {job_label(run)} run "
                    f"{run.run_id[:8]}"]
        events = [r.event_log_entry for r in self.instance.get_records_for_run(
            run.run_id, of_type=_STEP_EVENTS, limit=2000).records]
        lines = self._step_lines(run.run_id, events)
        dagster_events = [e.dagster_event for e in events if e.dagster_event is not None]
        if event_type == DagsterEventType.RUN_FAILURE:
            lines.extend(self._failure_lines(run, dagster_events))
        elif event_type == DagsterEventType.RUN_CANCELED:
            lines.append(f"run canceled: {job_label(run)} run {run.run_id[:8]}")
        return lines

    def _first(self, run_id: str) -> bool:
        """True the first time `run_id` is announced (a bounded memory of run ids)."""
        if run_id in self._announced:
            return False
        self._announced[run_id] = None
        while len(self._announced) > 1000:
            self._announced.popitem(last=False)
        return True

    def _step_lines(self, run_id: str, events: Sequence[Any]) -> list[str]:
        lines = []
        for entry in events:
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.event_specific_data.materialization
                asset = materialization.asset_key.to_user_string()
                line = materialization_line(asset, materialization.metadata, run_id,
                                            materialization.partition)
                if asset == "rollout_evaluation" and line and " continues: " in line:
                    # "continue" is decided on every evaluation: said again only when new.
                    version = str(_values(materialization.metadata).get("challenger_version"))
                    if self._rollout_reasons.get(version) == line:
                        continue
                    self._rollout_reasons[version] = line
                if line:
                    lines.append(line)
            elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                evaluation = event.event_specific_data
                if evaluation.check_name == DRIFT_CHECK \
                        and evaluation.asset_key == AssetKey("drift_scores"):
                    lines.append(drift_line(
                        evaluation.passed, evaluation.severity.value, evaluation.metadata,
                        evaluation.description, getattr(evaluation, "partition", None)))
                elif evaluation.check_name == PROMOTION_CHECK and not evaluation.passed:
                    # A decision, in a run that succeeds: said once, with its reason.
                    lines.append(f"challenger not promoted (run {run_id[:8]}): "
                                 f"{_short(evaluation.description or '')}")
                elif evaluation.check_name == EVIDENCE_CHECK and not evaluation.passed:
                    where = evaluation.asset_key.to_user_string()
                    partition = getattr(evaluation, "partition", None)
                    lines.append(f"files left out of {where}"
                                 f"{f' {partition}' if partition else ''}: "
                                 f"{_short(evaluation.description or '', 400)}")
        return lines

    def _failure_lines(self, run, events: Sequence[Any]) -> list[str]:
        reasons = failures_beyond_refusal(_reasons(events))  # a refusal: _step_lines
        where = f"{self.ui_url.rstrip('/')}/runs/{run.run_id}" if self.ui_url else \
            f"run {run.run_id} in the Dagster UI"
        if self.log_hint:
            where += f", {self.log_hint}"
        return [f"run failed: {job_label(run)} run {run.run_id[:8]}: {_short(reasons[0])} "
                f"(log: {where})"]


def job_label(run) -> str:
    """A run's job name; for an ad-hoc asset run (`__ASSET_JOB`, launched with
    Materialize or `dg launch --assets`) the assets it selected."""
    if not run.job_name.startswith("__"):
        return run.job_name
    keys = sorted(key.to_user_string() for key in (run.asset_selection or ()))
    if not keys:
        return "asset materialization"
    more = f" (+{len(keys) - 2})" if len(keys) > 2 else ""
    return f"{', '.join(keys[:2])}{more} materialization"


def latest_cursor(instance: DagsterInstance) -> int:
    """The newest storage id among the run status events: the instance's present."""
    newest = -1
    for event_type in _RUN_EVENTS:
        result = instance.fetch_run_status_changes(event_type, limit=1, ascending=False)
        if result.records:
            newest = max(newest, result.records[0].storage_id)
    return newest
