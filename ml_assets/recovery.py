"""Re-execute a failed run from its failure: only the steps that did not succeed run
again, reading the outputs the parent run stored (the Dagster UI's "Re-execute from
failure", from a shell or a script).

The new run executes with the code location's executor (ML_EXECUTOR), so with Celery
its steps go to the workers; this process orchestrates and waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def reexecute_from_failure(run_id: str, instance=None) -> Reexecution:
    """Run again what failed (or never finished) in run `run_id`, in a new run."""
    from dagster import DagsterInstance, DagsterRunStatus, ReexecutionOptions, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    instance = instance or DagsterInstance.get()
    parent = instance.get_run_by_id(run_id)
    if parent is None:
        raise RecoveryError(f"run {run_id!r} does not exist in this Dagster instance")
    if parent.status != DagsterRunStatus.FAILURE:
        raise RecoveryError(f"run {run_id} is {parent.status.value}; only a failed run can "
                            "be re-executed from failure")
    job = ReconstructableRepository.for_module(
        JOB_MODULE, DEFINITIONS_ATTRIBUTE).get_reconstructable_job(parent.job_name)
    result = execute_job(job, instance=instance, run_config=parent.run_config,
                         tags={"ml/reexecution_of": run_id},
                         reexecution_options=ReexecutionOptions.from_failure(run_id, instance))
    new_run = instance.get_run_by_id(result.run_id)
    steps = tuple(sorted(new_run.step_keys_to_execute or ())) if new_run else ()
    return Reexecution(parent_run_id=run_id, run_id=result.run_id, job_name=parent.job_name,
                       success=result.success, steps=steps)
