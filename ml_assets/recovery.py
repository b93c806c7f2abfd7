"""Re-execute a failed run from its failure: only the steps that did not succeed run
again, reading the outputs the parent run stored (the Dagster UI's "Re-execute from
failure", from a shell or a script).

The new run executes with the code location's executor (ML_EXECUTOR), so with Celery
its steps go to the workers; this process orchestrates it and waits (it does not go
through the run queue: the UI's re-execution does, when the queue matters).

When the new run fails its events come back with the outcome (`all_events`), so the
caller can tell a refusal (only blocking checks failed) from a breakdown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

REEXECUTION_TAG = "ml/reexecution_of"
JOB_MODULE = "ml_assets.definitions"
DEFINITIONS_ATTRIBUTE = "defs"


class RecoveryError(ValueError):
    """The run cannot be re-executed from failure; the message says why."""


@dataclass(frozen=True)
class Reexecution:
    parent_run_id: str
    run_id: str
    job_name: str
    success: bool
    steps: tuple[str, ...]  # the steps the new run executed
    all_events: tuple = ()  # the new run's DagsterEvents when it failed


def reexecution_tags(parent_tags: dict[str, str], parent_run_id: str) -> dict[str, str]:
    """The parent's tags (partition, trigger, limits, Celery queue) minus those that
    describe its own attempt (failure reason, retry counters, backfill, lineage, its
    promotion outcome `ml/promotion*`), plus `ml/reexecution_of`. The UI's re-execution
    keeps the same ones, the promotion outcome aside."""
    from dagster._core.storage.tags import TAGS_TO_MAYBE_OMIT_ON_RETRY

    lineage = {"dagster/parent_run_id", "dagster/root_run_id"}
    tags = {k: v for k, v in parent_tags.items()
            if k not in TAGS_TO_MAYBE_OMIT_ON_RETRY and k not in lineage
            and not k.startswith("ml/promotion")}
    tags[REEXECUTION_TAG] = parent_run_id
    return tags


def reexecute_from_failure(run_id: str, instance=None, verbose: bool = False) -> Reexecution:
    """Run again what failed (or never finished) in failed or canceled run `run_id`, in
    a new run. Refused while
    another re-execution of it runs or after one succeeded: each would retrain and
    register another model. Dagster's event log goes to the terminal only with
    `verbose` (it is always in the UI)."""
    from dagster import (
        DagsterInstance,
        DagsterRunStatus,
        ReexecutionOptions,
        RunsFilter,
        execute_job,
    )
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    instance = instance or DagsterInstance.get()
    parent = instance.get_run_by_id(run_id)
    if parent is None:
        where = os.environ.get("DAGSTER_HOME") or "the default instance"
        raise RecoveryError(f"run {run_id!r} does not exist in the Dagster instance at "
                            f"{where} (set DAGSTER_HOME to the instance that ran it)")
    if parent.status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        raise RecoveryError(f"run {run_id} is {parent.status.value}; only a failed or "
                            "canceled run can be re-executed from failure")
    for child in instance.get_runs(filters=RunsFilter(tags={REEXECUTION_TAG: run_id})):
        if child.status == DagsterRunStatus.SUCCESS:
            raise RecoveryError(f"run {run_id} was already re-executed successfully by run "
                                f"{child.run_id}; another re-execution would train and "
                                "register another model")
        if not child.is_finished:
            raise RecoveryError(f"run {run_id} is being re-executed by run {child.run_id} "
                                f"({child.status.value})")
    job = ReconstructableRepository.for_module(
        JOB_MODULE, DEFINITIONS_ATTRIBUTE).get_reconstructable_job(parent.job_name)
    run_config = dict(parent.run_config or {})
    if not verbose:  # the outcome is summarised by the caller
        run_config["loggers"] = {**run_config.get("loggers", {}),
                                 "console": {"config": {"log_level": "CRITICAL"}}}
    result = execute_job(job, instance=instance, run_config=run_config,
                         tags=reexecution_tags(dict(parent.tags), run_id),
                         reexecution_options=ReexecutionOptions.from_failure(run_id, instance))
    new_run = instance.get_run_by_id(result.run_id)
    steps = tuple(sorted(new_run.step_keys_to_execute or ())) if new_run else ()
    return Reexecution(parent_run_id=run_id, run_id=result.run_id, job_name=parent.job_name,
                       success=result.success, steps=steps,
                       all_events=() if result.success else tuple(result.all_events))
