"""The champion/challenger decision: pure, so every path is unit-tested without MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger becomes champion, and why (all figures kept for the record)."""

    promote: bool
    reason: str
    metric: str
    margin: float
    challenger: dict[str, float]
    champion: dict[str, float] | None
    deltas: dict[str, float] = field(default_factory=dict)

    def as_tags(self, prefix: str = "promotion.") -> dict[str, str]:
        tags = {f"{prefix}decision": "promoted" if self.promote else "refused",
                f"{prefix}reason": self.reason, f"{prefix}metric": self.metric,
                f"{prefix}margin": repr(self.margin)}
        tags.update({f"{prefix}challenger.{k}": f"{v:.6f}" for k, v in self.challenger.items()})
        for k, v in (self.champion or {}).items():
            tags[f"{prefix}champion.{k}"] = f"{v:.6f}"
        return tags


def decide_promotion(challenger: dict[str, float], champion: dict[str, float] | None,
                     metric: str = "f1_weighted", margin: float = 0.005,
                     champion_error: str | None = None) -> PromotionDecision:
    """Promote when there is no champion (the challenger already passed the thresholds
    upstream), when the champion cannot score today's held-out data, or when the
    challenger beats the champion's `metric` by at least `margin` on the same data.
    A tie within the margin keeps the champion: churn without evidence is not progress."""
    if metric not in challenger:
        raise ValueError(f"comparison metric {metric!r} is not among {sorted(challenger)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if champion_error is not None:
        return PromotionDecision(True, f"champion cannot score the held-out data "
                                 f"({champion_error}); challenger passed the thresholds",
                                 metric, margin, challenger, None)
    if champion is None:
        return PromotionDecision(True, "first model: no champion yet and the challenger "
                                 "passed the thresholds", metric, margin, challenger, None)
    deltas = {k: challenger[k] - champion[k] for k in challenger if k in champion}
    delta = deltas[metric]
    if delta >= margin:
        reason = (f"challenger {metric} {challenger[metric]:.4f} beats champion "
                  f"{champion[metric]:.4f} by {delta:+.4f} (margin {margin})")
        return PromotionDecision(True, reason, metric, margin, challenger, champion, deltas)
    verdict = "is worse than" if delta < 0 else "does not beat by the margin"
    reason = (f"challenger {metric} {challenger[metric]:.4f} {verdict} champion "
              f"{champion[metric]:.4f} ({delta:+.4f}, margin {margin})")
    return PromotionDecision(False, reason, metric, margin, challenger, champion, deltas)
