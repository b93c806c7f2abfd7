"""Snapshot of every asset, group, check, job, sensor and schedule: a rename is a choice,
not an accident. Regenerate with
UPDATE_SNAPSHOTS=1 pytest ml_assets_tests/assets/test_definitions.py
(The workspace loaded by the `dagster` CLI: ml_assets_tests/e2e/test_dg_cli.py.)"""

import json
import os
from pathlib import Path

from dagster import GraphDefinition

from ml_assets.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def _retries(node) -> bool | dict[str, bool]:
    """An op-backed asset: whether its op retries; a graph-backed one (batch_predictions:
    a step per shard): the same per op of the graph."""
    if isinstance(node, GraphDefinition):
        return {op.name: bool(op.retry_policy) for op in node.iterate_op_defs()}
    return bool(node.retry_policy)


def describe(definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(d.to_user_string() for d in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
            "retry": _retries(definitions.get_assets_def(key).node_def),
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.path, k.name)):
        spec = graph.get_check_spec(check_key)
        checks[f"{check_key.asset_key.to_user_string()}:{check_key.name}"] = {
            "blocking": spec.blocking}
    repository = definitions.get_repository_def()
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(j.name for j in repository.get_all_jobs()
                       if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in repository.sensor_defs),
        "schedules": sorted(s.name for s in repository.schedule_defs),
        "resources": sorted(definitions.resources or {}),
    }


def test_definitions_snapshot():
    current = describe(defs)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no snapshot: run with UPDATE_SNAPSHOTS=1 and review the diff"
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_asset_has_a_docstring_for_the_ui():
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        description = defs.get_assets_def(key).descriptions_by_key.get(key)
        assert description and len(description) > 40, key


def test_live_performance_runs_after_the_days_estimate_in_score_drift():
    """In one score_drift run the day's estimate is made before live_performance compares
    it with the realised values (an upstream edge, not luck in the step order)."""
    from dagster._core.execution.api import create_execution_plan

    plan = create_execution_plan(defs.resolve_job_def("score_drift"),
                                 tags={"dagster/partition": "2026-11-03"})
    level = {step.key: number for number, steps in
             enumerate(plan.get_steps_to_execute_by_level()) for step in steps}
    assert level["production_data"] < level["estimated_performance"] < level[
        "live_performance"], level
