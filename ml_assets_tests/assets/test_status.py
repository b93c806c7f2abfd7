"""`ml-platform up`'s status lines (ml_assets.status) from a real, temporary Dagster
instance (SQLite, run-sharded: the embedded default): runs materialize stand-in assets
with the platform's names and metadata, and the watcher turns them into lines."""

from __future__ import annotations

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    DailyPartitionsDefinition,
    Failure,
    MetadataValue,
    Output,
    asset,
    materialize,
)

from ml_assets.status import StatusWatcher, drift_line, materialization_line

UI = "http://127.0.0.1:3000"


def _asset(name: str, metadata: dict, **kwargs):
    @asset(name=name, **kwargs)
    def _made():
        return Output(1, metadata=metadata)

    return _made


def _run(instance, *assets, tags=None, partition_key=None, success=True):
    result = materialize(list(assets), instance=instance, tags=tags, raise_on_error=False,
                         partition_key=partition_key)
    assert result.success is success
    return result.run_id


def test_history_is_not_replayed_and_a_training_run_is_one_line(instance):
    metrics = {"accuracy": MetadataValue.float(0.9649), "f1_weighted": 0.96487,
               "roc_auc": 0.99, "precision_weighted": 0.97, "task": "classification"}
    _run(instance, _asset("model_metrics", metrics))  # before the watcher: history
    watcher = StatusWatcher(instance, ui_url=UI)
    assert watcher.poll() == []
    run_id = _run(instance, _asset("model_metrics", metrics))
    assert watcher.poll() == [f"training run {run_id[:8]} finished: held-out "
                              "f1_weighted=0.9649, accuracy=0.9649, roc_auc=0.9900"]
    assert watcher.poll() == []  # the cursor moved on


def test_promotion_and_rollout_start(instance):
    watcher = StatusWatcher(instance)
    _run(instance, _asset("champion_model", {
        "registered_model": "cancer", "champion_version": "3", "previous_champion": "2",
        "rollout_mode": "immediate"}))
    _run(instance, _asset("champion_model", {
        "registered_model": "cancer", "champion_version": "1", "previous_champion": "None",
        "rollout_mode": "immediate"}))
    _run(instance, _asset("champion_model", {
        "registered_model": "cancer", "champion_version": "3", "rollout_mode": "canary",
        "challenger_version": "4"}))
    assert watcher.poll() == [
        "model promoted: cancer version 3 is champion (was 2)",
        "model promoted: cancer version 1 is champion",
        "rollout started: cancer version 4 (canary) against champion 3; "
        "rollout_evaluation decides on live labelled traffic"]


def _drift_asset(passed: bool, severity: AssetCheckSeverity, share: float, drifted: list):
    @asset(name="drift_scores", partitions_def=DailyPartitionsDefinition("2026-11-01"),
           check_specs=[AssetCheckSpec("drift_within_limits", asset="drift_scores")])
    def drift_scores(context):
        yield Output(1, metadata={"share_drifted": share})
        yield AssetCheckResult(
            check_name="drift_within_limits", passed=passed, severity=severity,
            description=f"{share:.0%} of features drifted ({', '.join(drifted) or 'none'})",
            metadata={"share_drifted": share, "drifted_features": MetadataValue.json(drifted),
                      "partition": context.partition_key, "prediction_drifted": False})

    return drift_scores


def test_drift_verdicts_name_the_partition_and_share(instance):
    watcher = StatusWatcher(instance)
    _run(instance, _drift_asset(False, AssetCheckSeverity.ERROR, 0.6, ["radius", "area"]),
         partition_key="2026-11-21")
    _run(instance, _drift_asset(False, AssetCheckSeverity.WARN, 0.3,
                                ["radius", "area", "texture", "smoothness", "symmetry"]),
         partition_key="2026-11-22")
    _run(instance, _drift_asset(True, AssetCheckSeverity.WARN, 0.0, []),
         partition_key="2026-11-23")
    assert watcher.poll() == [
        "drift scored for 2026-11-21: failed, 60% of features drifted (radius, area)",
        "drift scored for 2026-11-22: warned, 30% of features drifted (radius, area, "
        "texture, +2 more)",
        "drift scored for 2026-11-23: passed, 0% of features drifted"]


def test_a_file_left_out_of_the_evidence_is_said_at_the_terminal(instance):
    from ml_assets.core.data.production_rows import SkippedFile
    from ml_assets.monitoring import evidence_check

    def day_asset(skipped):
        @asset(name="live_performance",
               partitions_def=DailyPartitionsDefinition("2026-11-01"),
               check_specs=[AssetCheckSpec("evidence_files_readable",
                                           asset="live_performance")])
        def live_performance():
            yield Output(1)
            yield evidence_check("evidence_files_readable", skipped, "labels")

        return live_performance

    watcher = StatusWatcher(instance)
    bad = SkippedFile("/home/labels/labels-0.csv", "cannot be read as CSV: not UTF-8 text "
                      "('utf-8' codec can't decode byte 0x87 in position 2)")
    _run(instance, day_asset([bad]), partition_key="2026-11-21")
    _run(instance, day_asset([]), partition_key="2026-11-22")  # read: nothing to say
    (line,) = watcher.poll()
    assert line.startswith("files left out of live_performance")
    assert "/home/labels/labels-0.csv: cannot be read as CSV: not UTF-8" in line


def test_a_drift_retrain_is_announced_once_with_its_partition(instance):
    watcher = StatusWatcher(instance)
    tags = {"ml/trigger": "drift", "ml/drift_partition": "2026-12-01",
            "ml/drifted_features": "radius,area"}
    run_id = _run(instance, _asset("raw_data", {}), tags=tags)
    _run(instance, _asset("raw_data", {}), tags={"ml/trigger": "weekly_schedule"})
    dropped = _run(instance, _asset("raw_data", {}), tags={
        "ml/trigger": "realised_drop", "ml/drift_partition": "2026-12-02"})
    assert watcher.poll() == [
        f"retrain launched by drift in 2026-12-01: asset materialization run {run_id[:8]}",
        "retrain launched by a realised performance drop in 2026-12-02: asset "
        f"materialization run {dropped[:8]}"]


def test_rollout_decisions_and_a_repeated_continue_said_once(instance):
    watcher = StatusWatcher(instance)

    def evaluation(decision, reason):
        return _asset("rollout_evaluation", {
            "decision": decision, "reason": reason, "challenger_version": "4",
            "champion_version": "3", "p_value": MetadataValue.float(0.2)})

    _run(instance, evaluation("none", "no rollout in progress"))
    _run(instance, evaluation("continue", "120 of 200 labelled rows"))
    _run(instance, evaluation("continue", "120 of 200 labelled rows"))
    _run(instance, evaluation("continue", "180 of 200 labelled rows"))
    _run(instance, evaluation("rollback", "challenger worse: accuracy -0.04 (p=0.001)"))
    _run(instance, evaluation("promote", "challenger better: accuracy +0.02 (p=0.01)"))
    assert watcher.poll() == [
        "rollout of version 4 continues: 120 of 200 labelled rows",
        "rollout of version 4 continues: 180 of 200 labelled rows",
        "rollout decided: version 4 rolled back, champion 3 stays: challenger worse: "
        "accuracy -0.04 (p=0.001)",
        "rollout decided: version 4 promoted to champion: challenger better: accuracy "
        "+0.02 (p=0.01)"]


def test_a_failed_run_names_its_job_reason_and_log(instance):
    @asset(name="raw_data")
    def raw_data():
        raise Failure(description="data file /data/x.csv does not exist")

    watcher = StatusWatcher(instance, ui_url=UI, log_hint="output in /h/logs/dagster.log")
    run_id = _run(instance, raw_data, success=False)
    assert watcher.poll() == [
        f"run failed: asset materialization run {run_id[:8]}: raw_data: data file "
        f"/data/x.csv does "
        f"not exist (log: {UI}/runs/{run_id}, output in /h/logs/dagster.log)"]


def test_a_refused_promotion_is_an_outcome_not_a_failure(instance):
    # As champion_comparison/champion_model do: a WARN check, the alias step skipped.
    @asset(name="champion_comparison", check_specs=[AssetCheckSpec(
        "challenger_beats_champion", asset="champion_comparison")])
    def champion_comparison():
        yield Output(1)
        yield AssetCheckResult(check_name="challenger_beats_champion", passed=False,
                               severity=AssetCheckSeverity.WARN,
                               description="gain 0.001 in f1_weighted < margin 0.005")

    @asset(name="champion_model", output_required=False)
    def champion_model(champion_comparison):
        yield from ()

    watcher = StatusWatcher(instance, ui_url=UI)
    run_id = _run(instance, champion_comparison, champion_model, success=True)
    assert watcher.poll() == [f"challenger not promoted (run {run_id[:8]}): gain 0.001 in "
                              "f1_weighted < margin 0.005"]


def test_a_busy_instance_is_caught_up_over_several_polls_without_loss(instance):
    watcher = StatusWatcher(instance, limit=1)  # one status event per type per poll
    runs = [_run(instance, _asset("champion_model", {
        "registered_model": "m", "champion_version": str(v), "rollout_mode": "immediate"}))
        for v in range(1, 4)]
    lines: list[str] = []
    for _ in range(20):
        lines += watcher.poll()
    assert lines == [f"model promoted: m version {v} is champion" for v in range(1, 4)]
    assert len(runs) == 3


def test_the_names_it_watches_are_the_platforms():
    from ml_assets import status
    from ml_assets.automation import TRIGGER_TAG
    from ml_assets.registry import PROMOTION_CHECK
    from ml_assets.shared import DRIFT_CHECK

    assert (status.TRIGGER_TAG, status.DRIFT_CHECK, status.PROMOTION_CHECK) == (
        TRIGGER_TAG, DRIFT_CHECK, PROMOTION_CHECK)
    from ml_assets.shared import EVIDENCE_CHECK

    assert status.EVIDENCE_CHECK == EVIDENCE_CHECK


@pytest.mark.parametrize(("asset_name", "metadata", "expected"), [
    ("model_metrics", {"r2": 0.51, "rmse": 53.2}, "held-out r2=0.5100, rmse=53.2000"),
    ("feature_preprocessor", {}, None),
    ("rollout_evaluation", {"decision": "none"}, None),
])
def test_materialization_lines(asset_name, metadata, expected):
    line = materialization_line(asset_name, metadata, "abcdef0123")
    assert line == expected or (expected and line and line.endswith(expected))


def test_too_few_rows_is_said_on_the_drift_line():
    """No verdict is claimed for a day too small to judge ("passed ... no verdict" said
    two things at once)."""
    line = drift_line(True, "WARN", {"share_drifted": 0.0, "partition": "2026-12-01"},
                      "only 12 rows (< 50): no verdict", None)
    assert line == "drift not judged for 2026-12-01: only 12 rows (< 50): no verdict"
    assert "passed" not in line


def test_batch_and_live_performance_lines():
    batch = materialization_line("batch_predictions", {
        "rows": 1200, "shards": 2, "model_name": "m", "model_version": "3",
        "output_path": "/b/2026-12-01/manifest.json"}, "abcdef0123", "2026-12-01")
    assert batch == ("batch scored for 2026-12-01: 1200 rows in 2 shards by m version 3; "
                     "manifest /b/2026-12-01/manifest.json")
    live = materialization_line("live_performance", {
        "labelled_rows": 40, "champion_version": "3", "accuracy": 0.9, "f1_weighted": 0.88},
        "abcdef0123", "2026-12-01")
    assert live == ("live performance for 2026-12-01: champion version 3 "
                    "f1_weighted=0.8800, accuracy=0.9000 on 40 labelled rows")
    # A day whose labels have not arrived says nothing (every day would).
    assert materialization_line("live_performance", {"labelled_rows": 0}, "abcdef0123",
                                "2026-12-01") is None
