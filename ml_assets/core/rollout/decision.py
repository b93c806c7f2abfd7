"""Promote, roll back or keep collecting: a rollout judged on live, labelled traffic.

Pure (pandas, numpy): `evaluate_rollout` takes the prediction log's rows since the
rollout started and the labels that have arrived, and returns a `RolloutDecision`
with the evidence. The rule, in order:

1. **Guards** (no labels needed): the challenger's failure rate on its own requests
   above `max_error_rate` (after `min_attempts`), its p95 model time above
   `max_latency_ratio` times the champion's (and at least LATENCY_FLOOR_MS more), or no
   request served by it in NEVER_SERVED_SECONDS while the champion answers: roll back.
2. **Quality**, once both variants have `min_rows` labelled rows: the always-valid
   mSPRT of `ml_assets.core.rollout.sequential` on per-row losses (0/1 error or Brier score
   for a classifier; absolute or squared error for a regressor) of single-row requests.
   Canary: each variant on its own traffic, stratified by the periods of its share's
   steps; a labelled request it failed on is its worst loss, and the champion's fallback
   answer to it is left out. Shadow: both variants on the same rows (paired, so it
   needs far fewer labels). Challenger significantly better: promote; significantly
   worse: roll back. Valid however often it is looked at.
3. **Time limit**: after `max_seconds` (or `max_rows` labelled challenger rows)
   without a verdict the challenger has not shown it is better: roll back.
4. Otherwise keep collecting, and say how far each variant is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from ml_assets.core.modeling.tasks import regression_metrics
from ml_assets.core.rollout import sequential
from ml_assets.core.rollout.plan import CANARY, CHAMPION, SHADOW, RolloutPlan

PROMOTE, ROLLBACK, CONTINUE = "promote", "rollback", "continue"
# The latency guard ignores p95 differences smaller than this (a Pipeline against a
# compiled graph, queueing on a busy host).
LATENCY_FLOOR_MS = 10.0
# A challenger the API has not answered a single request with for this long, while the
# champion answered plenty, is not being served (the API refused it): roll back.
NEVER_SERVED_SECONDS = 600.0
CLASSIFICATION_LOSSES = ("error", "brier")
REGRESSION_LOSSES = ("absolute_error", "squared_error")


@dataclass(frozen=True)
class RolloutCriteria:
    """When a rollout decides (see the module docstring)."""

    alpha: float = 0.05
    min_rows: int = 100
    max_seconds: float = 7 * 86400.0
    max_rows: int = 50_000
    mixture_sd: float = 0.2
    loss: str = ""  # "": error (classifier) or absolute_error (regressor)
    max_error_rate: float = 0.02
    min_attempts: int = 50
    max_latency_ratio: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_rows < 2:
            raise ValueError(f"min_rows must be >= 2, got {self.min_rows}")
        if self.loss and self.loss not in (*CLASSIFICATION_LOSSES, *REGRESSION_LOSSES):
            raise ValueError(f"unknown loss {self.loss!r}; use one of "
                             f"{', '.join((*CLASSIFICATION_LOSSES, *REGRESSION_LOSSES))}")

    def loss_for(self, regression: bool) -> str:
        loss = self.loss or ("absolute_error" if regression else "error")
        allowed = REGRESSION_LOSSES if regression else CLASSIFICATION_LOSSES
        if loss not in allowed:
            kind = "regression" if regression else "classification"
            raise ValueError(f"loss {loss!r} does not apply to a {kind} model; use one of "
                             f"{', '.join(allowed)}")
        return loss


@dataclass(frozen=True)
class VariantStats:
    """One variant's live figures over the rollout."""

    variant: str
    model_version: str
    answers: int  # logged answers (shadow: copies scored)
    failures: int  # requests the challenger failed on (the champion answered them)
    labelled: int
    mean_loss: float
    latency_p50_ms: float
    latency_p95_ms: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        attempts = self.answers + self.failures
        return self.failures / attempts if attempts else 0.0


@dataclass(frozen=True)
class RolloutDecision:
    action: str  # promote | rollback | continue
    reason: str
    mode: str
    loss: str
    champion: VariantStats
    challenger: VariantStats
    test: dict[str, float | int | str]
    elapsed_seconds: float
    agreement: float | None = None  # shadow: share of copies answered as the champion did
    paired_rows: int = 0

    def evidence(self) -> dict[str, object]:
        """Everything the decision rests on, JSON-ready (stored in MLflow tags)."""
        return {"action": self.action, "reason": self.reason, "mode": self.mode,
                "loss": self.loss, "test": self.test, "elapsed_seconds":
                round(self.elapsed_seconds, 1), "agreement": self.agreement,
                "paired_rows": self.paired_rows,
                "champion": asdict(self.champion), "challenger": asdict(self.challenger)}


def _is_regression(rows: pd.DataFrame) -> bool:
    return rows["probabilities"].map(lambda p: not p).all() if len(rows) else False


def _losses(frame: pd.DataFrame, loss: str, regression: bool) -> np.ndarray:
    """Per-row losses of labelled rows (columns prediction, label, probabilities)."""
    if regression:
        error = (pd.to_numeric(frame["prediction"], errors="coerce").to_numpy(float)
                 - pd.to_numeric(frame["label"], errors="coerce").to_numpy(float))
        return np.abs(error) if loss == "absolute_error" else error ** 2
    truth = frame["label"].astype(str).to_numpy()
    if loss == "error":
        return (frame["prediction"].astype(str).to_numpy() != truth).astype(float)
    scores = []  # Brier: sum over classes of (p - 1{class is the truth})^2
    for probabilities, label in zip(frame["probabilities"], truth, strict=True):
        p = probabilities or {}
        scores.append(sum((float(v) - (1.0 if str(k) == label else 0.0)) ** 2
                          for k, v in p.items()) + (0.0 if label in p else 1.0))
    return np.asarray(scores, dtype=float)


def _metrics(frame: pd.DataFrame, regression: bool) -> dict[str, float]:
    if not len(frame):
        return {}
    if regression:
        return regression_metrics(pd.to_numeric(frame["label"], errors="coerce").to_numpy(float),
                                  pd.to_numeric(frame["prediction"], errors="coerce")
                                  .to_numpy(float))
    truth = frame["label"].astype(str).to_numpy()
    return {"accuracy": float(np.mean(frame["prediction"].astype(str).to_numpy() == truth))}


def _latency(rows: pd.DataFrame, quantile: float) -> float:
    if "latency_ms" not in rows or not len(rows):
        return float("nan")
    values = pd.to_numeric(rows["latency_ms"], errors="coerce").dropna()
    return float(values.quantile(quantile)) if len(values) else float("nan")


def _single_row(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of one-row requests: labels name a request, so a label cannot say which row of
    a batch request it is for (and a batch's rows are no independent samples)."""
    if not len(rows):
        return rows
    sizes = rows.groupby("request_id")["request_id"].transform("size")
    return rows[sizes.to_numpy() == 1]


def _worst_loss(loss: str, *observed: np.ndarray) -> float:
    if loss == "error":
        return 1.0
    if loss == "brier":
        return 2.0
    seen = [float(np.max(o)) for o in observed if len(o)]
    return max(seen, default=0.0)


def _strata(plan: RolloutPlan, champion: pd.DataFrame, challenger: pd.DataFrame,
            failed: pd.DataFrame, champion_losses: np.ndarray, challenger_losses: np.ndarray,
            failed_losses: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(champion, challenger) losses per period of one canary share (the rows' log time
    against the plan's steps): one stratum when the share never changed."""
    offsets = [offset for offset, _ in plan.steps]

    def period(frame: pd.DataFrame) -> np.ndarray:
        if not len(frame):
            return np.zeros(0, dtype=int)
        stamps = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        seconds = (stamps - pd.Timestamp(plan.started_at)).dt.total_seconds().to_numpy()
        return np.searchsorted(offsets, seconds, side="right") - 1

    at_c, at_h, at_f = period(champion), period(challenger), period(failed)
    challenger_all = np.concatenate([challenger_losses, failed_losses])
    at_all = np.concatenate([at_h, at_f])
    periods = sorted(set(at_c.tolist()) | set(at_all.tolist())) or [0]
    return [(champion_losses[at_c == k], challenger_all[at_all == k]) for k in periods]


def _labelled(rows: pd.DataFrame, labels: pd.DataFrame, regression: bool) -> pd.DataFrame:
    if not len(rows) or not len(labels):
        return rows.iloc[0:0].assign(label=pd.Series(dtype=str))
    joined = rows.merge(labels[["request_id", "label"]], on="request_id", how="inner")
    if regression:
        usable = np.isfinite(pd.to_numeric(joined["label"], errors="coerce").to_numpy(float))
        joined = joined[usable]
    return joined


def _stats(variant: str, version: str, answered: pd.DataFrame, failures: int,
           labelled: pd.DataFrame, losses: np.ndarray, regression: bool) -> VariantStats:
    return VariantStats(variant, version, len(answered), failures, len(labelled),
                        float(losses.mean()) if len(losses) else float("nan"),
                        _latency(answered, 0.5), _latency(answered, 0.95),
                        {k: float(v) for k, v in _metrics(labelled, regression).items()
                         if np.isfinite(v)})


_ROW_COLUMNS = ("timestamp", "request_id", "row_index", "model_version", "prediction",
                "probabilities", "variant", "latency_ms", "error")


def rollout_rows(log: pd.DataFrame, plan: RolloutPlan) -> pd.DataFrame:
    """The log rows that belong to `plan`: logged at or after its start, by its champion
    (variant champion) or its challenger (variant canary or shadow)."""
    if not len(log):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _ROW_COLUMNS})
    rows = log
    if "variant" not in rows:
        rows = rows.assign(variant=CHAMPION)
    stamps = pd.to_datetime(rows["timestamp"], utc=True, format="ISO8601")
    started = pd.Timestamp(plan.started_at).tz_convert(timezone.utc) \
        if pd.Timestamp(plan.started_at).tzinfo else pd.Timestamp(plan.started_at, tz="UTC")
    version = rows["model_version"].astype(str)
    variant = rows["variant"].fillna(CHAMPION).astype(str)
    mine = (stamps >= started) & (
        ((variant == CHAMPION) & (version == plan.champion_version))
        | (variant.isin([CANARY, SHADOW]) & (version == plan.version)))
    kept = rows[mine.to_numpy()].assign(variant=variant[mine.to_numpy()])
    # A client's retry with the same X-Request-ID is one answer, not two samples.
    return kept.drop_duplicates(["request_id", "row_index", "variant"], keep="first")


def evaluate_rollout(log: pd.DataFrame, labels: pd.DataFrame, plan: RolloutPlan,
                     criteria: RolloutCriteria, regression: bool | None = None,
                     now: datetime | None = None) -> RolloutDecision:
    """Decide `plan` from the prediction log rows (`log`: read_day frames, any days;
    rows outside the plan are ignored) and the labels so far (request_id, label).
    `regression`: the challenger's task (None: read from the rows: no probabilities)."""
    rows = rollout_rows(log, plan)
    challenger_variant = SHADOW if plan.mode == SHADOW else CANARY
    error = rows["error"].fillna("").astype(str) if "error" in rows else pd.Series(
        "", index=rows.index)
    failed = rows[error != ""]
    rows = rows[error == ""]
    # A request the canary failed on was answered by the champion: that answer is no
    # sample of the champion's own traffic (it would drop the challenger's hard rows).
    fallback = set(failed["request_id"].astype(str)) if plan.mode == CANARY else set()
    champion_rows = rows[(rows["variant"] == CHAMPION)
                         & ~rows["request_id"].astype(str).isin(fallback)]
    challenger_rows = rows[rows["variant"] == challenger_variant]
    if regression is None:
        regression = _is_regression(rows)
    loss = criteria.loss_for(regression)
    champion_labelled = _labelled(_single_row(champion_rows), labels, regression)
    challenger_labelled = _labelled(_single_row(challenger_rows), labels, regression)
    failed_labelled = _labelled(_single_row(failed), labels, regression)
    elapsed = plan.elapsed_seconds(now)
    agreement, paired_rows = None, 0
    if plan.mode == SHADOW:
        keys = ["request_id", "row_index"]
        both = champion_rows[[*keys, "prediction"]].merge(
            challenger_rows[[*keys, "prediction"]], on=keys, suffixes=("_champion", "_shadow"))
        if len(both):
            if regression:
                a = pd.to_numeric(both["prediction_champion"], errors="coerce").to_numpy(float)
                b = pd.to_numeric(both["prediction_shadow"], errors="coerce").to_numpy(float)
                agreement = float(np.mean(np.isclose(a, b, rtol=1e-3, atol=1e-9)))
            else:
                agreement = float(np.mean(both["prediction_champion"].astype(str)
                                          == both["prediction_shadow"].astype(str)))
        paired = champion_labelled[[*keys, "prediction", "label", "probabilities"]].merge(
            challenger_labelled[[*keys, "prediction", "probabilities"]], on=keys,
            suffixes=("", "_shadow"))
        paired_rows = len(paired)
        champion_losses = _losses(paired, loss, regression)
        challenger_losses = _losses(paired.assign(
            prediction=paired["prediction_shadow"], probabilities=paired["probabilities_shadow"]),
            loss, regression)
        result = sequential.paired(champion_losses, challenger_losses, criteria.alpha,
                                   criteria.mixture_sd)
    else:
        champion_losses = _losses(champion_labelled, loss, regression)
        challenger_losses = _losses(challenger_labelled, loss, regression)
        # A labelled request the canary failed on counts as its worst answer.
        worst = _worst_loss(loss, champion_losses, challenger_losses)
        failed_losses = np.full(len(failed_labelled), worst)
        strata = _strata(plan, champion_labelled, challenger_labelled, failed_labelled,
                         champion_losses, challenger_losses, failed_losses)
        result = sequential.stratified(strata, criteria.alpha, criteria.mixture_sd)
    champion = _stats(CHAMPION, plan.champion_version, champion_rows, 0, champion_labelled,
                      _losses(champion_labelled, loss, regression), regression)
    challenger = _stats(challenger_variant, plan.version, challenger_rows, len(failed),
                        challenger_labelled, _losses(challenger_labelled, loss, regression),
                        regression)

    def decided(action: str, reason: str) -> RolloutDecision:
        return RolloutDecision(action, reason, plan.mode, loss, champion, challenger,
                               result.as_dict(), elapsed, agreement, paired_rows)

    attempts = challenger.answers + challenger.failures
    if attempts >= criteria.min_attempts and challenger.failure_rate > criteria.max_error_rate:
        return decided(ROLLBACK, f"challenger version {plan.version} failed on "
                       f"{challenger.failures} of {attempts} requests "
                       f"({challenger.failure_rate:.1%} > {criteria.max_error_rate:.1%})")
    if (attempts == 0 and champion.answers >= criteria.min_attempts
            and elapsed >= NEVER_SERVED_SECONDS):
        return decided(ROLLBACK, f"the API never served version {plan.version} in "
                       f"{elapsed / 60:.0f} min while the champion answered "
                       f"{champion.answers} requests (refused at load? see GET /model and "
                       "ml_api_model_load_failures_total)")
    slow = (champion.answers >= criteria.min_rows and challenger.answers >= criteria.min_rows
            and np.isfinite(champion.latency_p95_ms) and np.isfinite(challenger.latency_p95_ms)
            and challenger.latency_p95_ms > criteria.max_latency_ratio * champion.latency_p95_ms
            and challenger.latency_p95_ms > champion.latency_p95_ms + LATENCY_FLOOR_MS)
    if slow:
        return decided(ROLLBACK, f"challenger p95 model time {challenger.latency_p95_ms:.1f} ms "
                       f"is over {criteria.max_latency_ratio:g}x the champion's "
                       f"{champion.latency_p95_ms:.1f} ms")
    counts = ((paired_rows, paired_rows) if plan.mode == SHADOW
              else (champion.labelled, challenger.labelled))
    enough = min(counts) >= criteria.min_rows
    if min(counts) == 0:  # no mean, no test yet: say so rather than "nan" and "p = 1"
        waiting = " and ".join(side for side, count in (("challenger", counts[1]),
                                                         ("champion", counts[0])) if not count)
        summary = f"no labelled rows yet for the {waiting}, so no {loss} to compare"
    else:
        summary = (f"{loss} {challenger.mean_loss:.4f} (challenger, {counts[1]} labelled "
                   f"rows) vs {champion.mean_loss:.4f} (champion, {counts[0]}); always-valid "
                   f"p = {result.p_value:.4g}, alpha {criteria.alpha:g}")
    if enough and result.decision == "challenger_better":
        return decided(PROMOTE, f"challenger version {plan.version} is better: {summary}")
    if enough and result.decision == "challenger_worse":
        return decided(ROLLBACK, f"challenger version {plan.version} is worse: {summary}")
    if elapsed >= criteria.max_seconds:
        return decided(ROLLBACK, f"time limit ({criteria.max_seconds / 3600:g} h) reached "
                       f"without evidence that version {plan.version} is better; the champion "
                       f"stays: {summary}")
    if counts[1] >= criteria.max_rows:
        return decided(ROLLBACK, f"{counts[1]} labelled challenger rows (max_rows "
                       f"{criteria.max_rows}) without evidence that version {plan.version} "
                       f"is better; the champion stays: {summary}")
    if not enough:
        return decided(CONTINUE, f"collecting: {min(counts)} of {criteria.min_rows} labelled "
                       f"rows per variant before a verdict; {summary}")
    return decided(CONTINUE, f"no verdict yet: {summary}")
