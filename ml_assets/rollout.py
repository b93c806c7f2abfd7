"""Rollout: decide a canary or shadow rollout on live, labelled traffic.

`champion_model` starts a rollout instead of promoting when the run's
`champion_comparison` config says `rollout: canary` or `shadow`; the API follows the
registry's `canary` alias by itself. `rollout_evaluation` (materialized by the
`rollout_on_labels` sensor as labels arrive) promotes the challenger, rolls it back, or
keeps collecting, and writes the evidence to MLflow tags and its metadata.
"""


import json
from datetime import date
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from mlflow.exceptions import MlflowException
from pydantic import Field

from ml_assets.core.prediction_log import PredictionLogError
from ml_assets.core.registry import champion as registry
from ml_assets.core.rollout.decision import (
    CONTINUE,
    PROMOTE,
    RolloutCriteria,
    RolloutDecision,
    evaluate_rollout,
)
from ml_assets.core.rollout.plan import Rollout, end_rollout, read_rollout
from ml_assets.resources import MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.settings import PlatformSettings


def _settings() -> PlatformSettings:
    return PlatformSettings.from_env()


class RolloutEvaluationConfig(Config):
    alpha: float = Field(default_factory=lambda: _settings().rollout_alpha, gt=0, lt=1,
                         description="Error rate of the sequential test (a false promotion "
                         "or a false rollback each at most this often), however often it is "
                         "evaluated. Default ML_ROLLOUT_ALPHA (0.05).")
    min_rows: int = Field(default_factory=lambda: _settings().rollout_min_rows, ge=2,
                          description="Labelled rows each variant needs before any verdict "
                          "on quality. Default ML_ROLLOUT_MIN_ROWS (100).")
    max_hours: float = Field(default_factory=lambda: _settings().rollout_max_hours, gt=0,
                             description="Time limit: a challenger that has not shown it is "
                             "better by then is rolled back. Default ML_ROLLOUT_MAX_HOURS (168).")
    max_rows: int = Field(default=50_000, ge=2, description="Labelled challenger rows after "
                          "which, without a verdict, the challenger is rolled back.")
    mixture_sd: float = Field(default=0.2, gt=0, description="mSPRT mixture width, in "
                              "standard deviations of the per-row loss: the effect size the "
                              "test is most sensitive to.")
    loss: str = Field(default="", description="Per-row loss compared: error or brier "
                      "(classifier), absolute_error or squared_error (regressor); empty: "
                      "error / absolute_error.")
    max_error_rate: float = Field(default=0.02, ge=0, le=1, description="Roll back when the "
                                  "challenger fails on more than this share of its requests.")
    max_latency_ratio: float = Field(default=3.0, gt=1, description="Roll back when the "
                                     "challenger's p95 model time exceeds this multiple of "
                                     "the champion's.")

    def criteria(self) -> RolloutCriteria:
        return RolloutCriteria(alpha=self.alpha, min_rows=self.min_rows,
                               max_seconds=self.max_hours * 3600.0, max_rows=self.max_rows,
                               mixture_sd=self.mixture_sd, loss=self.loss,
                               max_error_rate=self.max_error_rate,
                               max_latency_ratio=self.max_latency_ratio)


def rollout_log_rows(production: ProductionDataResource, since: date) -> pd.DataFrame:
    """The prediction log's rows of every day from `since` to today (UTC), without the
    feature columns (the verdict needs answers, not inputs: they are never decoded)."""
    days = [d for d in production.prediction_days() if d >= since]
    frames = [production.predictions(d.isoformat(), features=False) for d in days]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _variant_table(decision: RolloutDecision) -> str:
    rows = [decision.champion, decision.challenger]
    metrics = sorted({k for v in rows for k in v.metrics})
    header = ("| variant | version | answers | failures | labelled | mean " + decision.loss
              + " | p50 ms | p95 ms | " + " | ".join(metrics) + " |")
    lines = [header, "|" + "---|" * (8 + len(metrics))]
    for v in rows:
        lines.append(f"| {v.variant} | {v.model_version} | {v.answers} | {v.failures} | "
                     f"{v.labelled} | {v.mean_loss:.4f} | {v.latency_p50_ms:.2f} | "
                     f"{v.latency_p95_ms:.2f} | "
                     + " | ".join(f"{v.metrics.get(m, float('nan')):.4f}" for m in metrics)
                     + " |")
    return "\n".join(lines)


def _act(context: AssetExecutionContext, client, name: str, rollout: Rollout,
         decision: RolloutDecision) -> str:
    """Carry out a promote or a rollback; returns what happened ("promoted", ...)."""
    plan = rollout.plan
    assert plan is not None
    evidence = {"evidence": json.dumps(decision.evidence(), default=str)[:5000],
                "dagster_run_id": context.run_id}
    # Another run may have acted since this one read the plan (a newer rollout, an
    # earlier verdict): act only on the rollout this verdict is about.
    now = read_rollout(client, name)
    if not now.active or now.plan is None or (now.plan.version, now.plan.salt) != (
            plan.version, plan.salt):
        context.log.warning("rollout of version %s changed while it was evaluated; this "
                            "verdict (%s) is recorded here only", plan.version,
                            decision.action)
        return "superseded"
    if decision.action == PROMOTE:
        try:
            change = registry.promote(client, name, plan.version, plan.champion_version, {
                "promotion.reason": f"rollout ({plan.mode}): {decision.reason}"[:5000],
                "promotion.dagster_run_id": context.run_id,
                "promotion.decision": "promoted"})
        except registry.RegistryError as exc:  # the champion moved under the rollout
            end_rollout(client, name, plan, "abandoned", str(exc), evidence)
            context.log.warning("rollout of version %s abandoned: %s", plan.version, exc)
            return "abandoned"
        end_rollout(client, name, plan, "promoted", decision.reason, evidence)
        context.log.info("rollout: version %s promoted to champion (was %s): %s",
                         change.version, change.previous, decision.reason)
        return "promoted"
    end_rollout(client, name, plan, "rolled_back", decision.reason, evidence)
    context.log.warning("rollout: version %s rolled back; champion %s stays: %s",
                        plan.version, plan.champion_version, decision.reason)
    return "rolled_back"


@asset(group_name="rollout", kinds={"mlflow", "scipy"}, deps=["champion_model"])
def rollout_evaluation(context: AssetExecutionContext, config: RolloutEvaluationConfig,
                       production: ProductionDataResource,
                       mlflow_tracking: MlflowTracking) -> Output[dict]:
    """The verdict on the rollout in progress: promote, roll back or keep collecting.

    Reads the prediction log since the rollout started (each answer's variant and
    version) and the labels that have arrived, measures both variants on their own
    traffic (canary) or on the same requests (shadow: also their agreement), with
    failure and latency guards, and applies an always-valid sequential test (mSPRT) so
    the verdict stays valid however often this runs. Promote moves `champion`; roll back
    clears the `canary` alias; both are recorded with the evidence in MLflow tags and
    here. With no rollout in progress it records that and changes nothing.
    """
    client = mlflow_tracking.client
    name = mlflow_tracking.registered_model_name
    rollout = read_rollout(client, name)
    if not rollout.active or rollout.plan is None:
        last = rollout.tags.get("rollout.outcome", "none")
        return Output({"decision": "none", "reason": "no rollout in progress"}, metadata={
            "decision": "none", "reason": "no rollout in progress",
            "last_outcome": last, "registered_model": name})
    plan = rollout.plan
    champion = registry.alias_version(client, name, registry.CHAMPION)
    if champion is None or str(champion.version) != plan.champion_version:
        # Promoted, trained or rolled back by someone else meanwhile: nothing to compare.
        now = str(champion.version) if champion else None
        outcome = "promoted" if now == plan.version else "abandoned"
        reason = (f"the champion is version {now} now (the rollout compared version "
                  f"{plan.version} with {plan.champion_version})")
        end_rollout(client, name, plan, outcome, reason)
        context.log.warning("rollout of version %s ended (%s): %s", plan.version, outcome,
                            reason)
        return Output({"decision": "none", "outcome": outcome, "reason": reason}, metadata={
            "decision": "none", "outcome": outcome, "reason": reason,
            "challenger_version": plan.version, "champion_version": str(now)})
    try:
        criteria = config.criteria()
        task = client.get_model_version(name, plan.version).tags.get("task")
        log = rollout_log_rows(production, plan.started_at.date())
        decision = evaluate_rollout(log, production.labels(), plan, criteria,
                                    regression=None if task is None else task == "regression")
    except ValueError as exc:
        raise Failure(description=f"rollout of version {plan.version}: {exc}",
                      allow_retries=False) from None
    except (MlflowException, PredictionLogError) as exc:  # retried by the next tick
        raise Failure(description=f"rollout of version {plan.version} not evaluated: the "
                      f"registry or the prediction log is unavailable: {exc}"[:2000]) from None
    outcome = "collecting" if decision.action == CONTINUE else _act(
        context, client, name, rollout, decision)
    context.log.info("rollout of version %s (%s): %s: %s", plan.version, plan.mode,
                     decision.action, decision.reason)
    test = decision.test
    metadata: dict[str, Any] = {
        "decision": decision.action, "outcome": outcome, "reason": decision.reason,
        "mode": plan.mode, "challenger_version": plan.version,
        "champion_version": plan.champion_version, "share_in_force": plan.share_at(),
        "started_at": plan.started_at.isoformat(timespec="seconds"),
        "elapsed_hours": round(decision.elapsed_seconds / 3600, 3), "loss": decision.loss,
        "labelled_champion": decision.champion.labelled,
        "labelled_challenger": decision.challenger.labelled,
        "p_value": MetadataValue.float(float(test["p_value"])),
        "estimate": MetadataValue.float(float(test["estimate"])),
        "statistic": MetadataValue.float(float(test["statistic"])),
        "alpha": criteria.alpha, "min_rows": criteria.min_rows,
        "variants": MetadataValue.md(_variant_table(decision)),
        "test": "mSPRT (always-valid, normal mixture; "
                + ("paired, shadow" if plan.mode == "shadow" else "two-sample, canary") + ")",
    }
    if decision.agreement is not None:
        metadata["agreement"] = MetadataValue.float(decision.agreement)
        metadata["paired_rows"] = decision.paired_rows
    return Output({**decision.evidence(), "outcome": outcome}, metadata=metadata)
