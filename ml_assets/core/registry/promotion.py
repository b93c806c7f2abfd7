"""The champion/challenger decision: pure, so every path is unit-tested without MLflow.

A challenger replaces a champion only on evidence: both scored on the same held-out
rows, and the gain in the comparison metric beyond the margin AND beyond the noise of
those rows (`significance`: a seeded paired bootstrap; the margin on the metric's
scale, relative for RMSE, MAE and MAPE). Without a champion the first model is
promoted; a champion that cannot be compared (it cannot be opened in this process, or
scored) keeps its place: nothing is promoted without a comparison, except when the run
allowed a breaking schema change that took the champion's own input columns away."""

from __future__ import annotations

from dataclasses import dataclass, field

from ml_assets.core.data.schema_diff import SchemaDiff
from ml_assets.core.modeling.tasks import DIRECTIONS
from ml_assets.core.registry.significance import (
    GainTest,
    format_gain,
    format_margin,
    improvement,
    metric_scale,
)

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
    # The paired test of the gain on the held-out rows, when both models were scored.
    evidence: GainTest | None = None

    @property
    def scale(self) -> str:
        """How the margin reads: "relative" (a share of the champion's error) or
        "absolute" (a difference of scores)."""
        return metric_scale(self.metric)

    def as_tags(self, prefix: str = "promotion.") -> dict[str, str]:
        tags = {f"{prefix}decision": "promoted" if self.promote else "refused",
                f"{prefix}reason": self.reason, f"{prefix}metric": self.metric,
                f"{prefix}margin": repr(self.margin),
                f"{prefix}margin_scale": self.scale,
                f"{prefix}schema_change": self.schema_change}
        if self.evidence is not None:
            test = self.evidence
            tags.update({f"{prefix}gain": f"{test.observed:.6g}",
                         f"{prefix}gain_interval": f"[{test.low:.6g}, {test.high:.6g}]",
                         f"{prefix}interval_level": f"{test.level:g}",
                         f"{prefix}p_value": f"{test.p_value:.6g}",
                         f"{prefix}alpha": f"{test.alpha:g}",
                         f"{prefix}test": test.method,
                         f"{prefix}test_rows": str(test.rows),
                         f"{prefix}resamples": str(test.resamples),
                         f"{prefix}seed": str(test.seed)})
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
                     allow_breaking_change: bool = False, evidence: GainTest | None = None,
                     champion_inputs_changed: bool = False) -> PromotionDecision:
    """Refuse a challenger whose inputs break the API's clients (`schema_diff.breaking`)
    unless `allow_breaking_change`. Then:

    - no champion (and no `champion_error`): the first model, promoted (it already
      passed the thresholds upstream);
    - `champion_error` (the champion cannot be opened or scored here; the sentence names
      the cause and the fix): refused, nothing is promoted without a comparison; except
      when `champion_inputs_changed` (its input columns are gone) and the run allowed
      that breaking change, which is the operator's word that it goes;
    - otherwise the challenger must beat the champion's `metric` by at least `margin`
      on the same held-out data, in the metric's direction (`tasks.DIRECTIONS`) and on
      its scale (`significance.metric_scale`: relative for RMSE, MAE, MAPE, so 0.005 is
      0.5% less error; a plain difference for scores), and, with `evidence` (the paired
      test on the held-out rows), beyond their noise: the interval's lower end above
      the margin. A tie within the margin or the noise keeps the champion: churn
      without evidence is not progress. Without `evidence` (callers that only have the
      metrics) the point estimates decide.

    `deltas` are challenger minus champion, in the metrics' units."""
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

    def decision(promote: bool, reason: str, compared: bool = True,
                 test: GainTest | None = None) -> PromotionDecision:
        return PromotionDecision(promote, reason, metric, margin, challenger,
                                 champion if compared else None, deltas if compared else {},
                                 schema_change=record, schema_changes=sentences,
                                 breaking_change=breaking,
                                 breaking_change_allowed=allow_breaking_change,
                                 evidence=test)

    if breaking and not allow_breaking_change:
        return decision(False, f"challenger changes the API's inputs: {changed}; "
                        f"{ALLOW_HINT}")
    allowed = (f"breaking change to the API's inputs allowed by the run's config: "
               f"{changed}; " if breaking else "")
    if champion_error is not None:
        if champion_inputs_changed and breaking:
            return decision(True, f"{allowed}champion cannot score the held-out data "
                            f"({champion_error}); challenger passed the thresholds", False)
        return decision(False, f"{allowed}not promoted without a comparison: "
                        f"{champion_error}", False)
    if champion is None:
        return decision(True, f"{allowed}first model: no champion yet and the challenger "
                        "passed the thresholds", False)
    if metric not in champion:
        return decision(False, f"{allowed}not promoted without a comparison: the champion "
                        f"has no {metric} on the held-out data (a model of another task?); "
                        "promote the challenger by hand (`ml-platform rollback --to "
                        "<version>`) if it should replace it", False)
    scale = metric_scale(metric)
    gain = improvement(metric, challenger[metric], champion[metric])
    direction = ("higher is better" if DIRECTIONS.get(metric, "max") == "max"
                 else "lower is better")
    rule = f"{direction}, {scale + ' ' if scale == 'relative' else ''}margin " \
           f"{format_margin(margin, scale)}"
    values = f"challenger {metric} {challenger[metric]:.4f}"
    against = f"champion {champion[metric]:.4f}"
    shown = format_gain(gain, scale)
    noise = f"; {evidence.describe()}" if evidence is not None else ""
    if gain < 0:
        return decision(False, f"{allowed}{values} is worse than {against} ({shown}, "
                        f"{rule}){noise}", test=evidence)
    if gain < margin or gain == 0:
        return decision(False, f"{allowed}{values} does not beat by the margin {against} "
                        f"({shown}, {rule}){noise}", test=evidence)
    if evidence is not None and not evidence.significant:
        return decision(False, f"{allowed}{values} beats {against} by {shown}, but within "
                        f"the noise of the held-out data ({rule}): {evidence.describe()}",
                        test=evidence)
    return decision(True, f"{allowed}{values} beats {against} by {shown} ({rule}){noise}",
                    test=evidence)
