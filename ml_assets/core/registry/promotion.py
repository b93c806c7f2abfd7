"""The champion/challenger decision: pure, so every path is unit-tested without MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

from ml_assets.core.data.schema_diff import SchemaDiff
from ml_assets.core.modeling.tasks import DIRECTIONS, better

ALLOW_HINT = ("set allow_breaking_change: true in the champion_comparison config (or "
              "ML_ALLOW_BREAKING_SCHEMA_CHANGE=true) to promote it anyway")


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger becomes champion, and why (all figures kept for the record).

    `schema_change` is the one-line record of what the challenger changes for API
    clients: "none", "compatible: ...", "breaking, refused: ...", "breaking, allowed: ..."
    or "unknown: ..." (the champion carries no feature schema)."""

    promote: bool
    reason: str
    metric: str
    margin: float
    challenger: dict[str, float]
    champion: dict[str, float] | None
    deltas: dict[str, float] = field(default_factory=dict)
    schema_change: str = "none"
    schema_changes: tuple[str, ...] = ()
    breaking_change: bool = False
    breaking_change_allowed: bool = False

    def as_tags(self, prefix: str = "promotion.") -> dict[str, str]:
        tags = {f"{prefix}decision": "promoted" if self.promote else "refused",
                f"{prefix}reason": self.reason, f"{prefix}metric": self.metric,
                f"{prefix}margin": repr(self.margin),
                f"{prefix}schema_change": self.schema_change}
        tags.update({f"{prefix}challenger.{k}": f"{v:.6f}" for k, v in self.challenger.items()})
        for k, v in (self.champion or {}).items():
            tags[f"{prefix}champion.{k}"] = f"{v:.6f}"
        return tags


def schema_change_record(diff: SchemaDiff | None, allow_breaking_change: bool) -> str:
    """The `promotion.schema_change` value for `diff`."""
    if diff is None:
        return "none"
    if not diff.known and not diff.breaking:
        return f"unknown: {diff.note}"
    if not diff.changes:
        return "none"
    if not diff.breaking:
        return f"compatible: {SchemaDiff.describe(diff.compatible_changes)}"
    record = (f"breaking, {'allowed' if allow_breaking_change else 'refused'}: "
              f"{SchemaDiff.describe(diff.breaking_changes)}")
    if diff.compatible_changes:
        record += f"; also compatible: {SchemaDiff.describe(diff.compatible_changes)}"
    return record


def decide_promotion(challenger: dict[str, float], champion: dict[str, float] | None,
                     metric: str = "f1_weighted", margin: float = 0.005,
                     champion_error: str | None = None, schema_diff: SchemaDiff | None = None,
                     allow_breaking_change: bool = False) -> PromotionDecision:
    """Refuse a challenger whose inputs break the API's clients (`schema_diff.breaking`)
    unless `allow_breaking_change`; then promote when there is no champion (the
    challenger already passed the thresholds upstream), when the champion cannot score
    today's held-out data, or when the challenger beats the champion's `metric` by at
    least `margin` on the same data, in the metric's direction (`tasks.DIRECTIONS`:
    higher is better for F1 or R², lower for RMSE, MAE, MAPE). A tie within the margin
    keeps the champion: churn without evidence is not progress.

    `deltas` are challenger minus champion; the decision uses the improvement."""
    if metric not in challenger:
        raise ValueError(f"comparison metric {metric!r} is not among {sorted(challenger)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    breaking = schema_diff is not None and schema_diff.breaking
    changed = SchemaDiff.describe(schema_diff.breaking_changes) if schema_diff else ""
    deltas = ({k: challenger[k] - champion[k] for k in challenger if k in champion}
              if champion is not None else {})
    record = schema_change_record(schema_diff, allow_breaking_change)
    sentences = tuple(schema_diff.sentences) if schema_diff else ()

    def decision(promote: bool, reason: str, compared: bool = True) -> PromotionDecision:
        return PromotionDecision(promote, reason, metric, margin, challenger,
                                 champion if compared else None, deltas if compared else {},
                                 schema_change=record, schema_changes=sentences,
                                 breaking_change=breaking,
                                 breaking_change_allowed=allow_breaking_change)

    if breaking and not allow_breaking_change:
        return decision(False, f"challenger changes the API's inputs: {changed}; "
                        f"{ALLOW_HINT}")
    allowed = (f"breaking change to the API's inputs allowed by the run's config: "
               f"{changed}; " if breaking else "")
    if champion_error is not None:
        return decision(True, f"{allowed}champion cannot score the held-out data "
                        f"({champion_error}); challenger passed the thresholds", False)
    if champion is None:
        return decision(True, f"{allowed}first model: no champion yet and the challenger "
                        "passed the thresholds", False)
    if metric not in champion:
        return decision(True, f"{allowed}champion has no {metric} on the held-out data "
                        "(another task?); challenger passed the thresholds", False)
    gain = better(metric, challenger[metric], champion[metric])
    direction = ("higher is better" if DIRECTIONS.get(metric, "max") == "max"
                 else "lower is better")
    if gain >= margin:
        return decision(True, f"{allowed}challenger {metric} {challenger[metric]:.4f} beats "
                        f"champion {champion[metric]:.4f} by {gain:+.4f} ({direction}, "
                        f"margin {margin})")
    verdict = "is worse than" if gain < 0 else "does not beat by the margin"
    return decision(False, f"{allowed}challenger {metric} {challenger[metric]:.4f} {verdict} "
                    f"champion {champion[metric]:.4f} ({gain:+.4f}, {direction}, "
                    f"margin {margin})")
