"""Whether a day's evidence asks for a retrain: a failed drift verdict with an estimated
drop below the gate, or a realised drop once labels exist.

Pure: the retrain sensor gathers one `DayEvidence` per daily partition from the Dagster
instance and `decide` says what to do with it:
- `retrain` when the labels say the model is worse (a realised drop), or when the day's
  drift verdict failed AND the estimated performance lies below the gate beyond the
  day's noise (`cbpe.verdict` "below": Bonferroni over the gated metrics);
- `retrain` also when drift failed and the day could not be estimated (a regressor, no
  calibrator, a day too quiet for the estimate): the calibrated drift verdict decides;
- `warn` when drift failed but the estimate stays within the gate (the model does not
  care about this drift): shown, never retrained;
- `wait` when drift failed and the day's estimate is not there yet;
- `quiet` otherwise.
`any_drift=True` (ML_RETRAIN_ON_ANY_DRIFT) restores the former rule: a failed drift
verdict retrains on its own.

A realised drop (`realised_drop`) is judged on accuracy with a one-sided Wilson bound: the
day's labelled accuracy is below the gate's minimum beyond the noise of its labelled rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

# estimated_performance's verdicts (its check metadata "verdict")
BELOW, POSSIBLY_BELOW, WITHIN = "below", "possibly_below", "within"
NOT_ESTIMATED, TOO_FEW_ROWS = "not_estimated", "too_few_rows"
REALISED_CONFIDENCE = 0.975  # one-sided


@dataclass(frozen=True)
class DayEvidence:
    """What the instance holds about one day. None: no record yet."""

    partition: str
    drift_failed: bool | None = None
    drift_detail: str = ""
    estimate_verdict: str | None = None
    estimate_detail: str = ""
    realised_below: bool | None = None
    realised_detail: str = ""


@dataclass(frozen=True)
class Decision:
    action: str  # retrain, warn, wait, quiet
    reason: str
    evidence: str = ""  # drift, estimate, realised, any_drift: what carried a retrain


def decide(day: DayEvidence, any_drift: bool = False) -> Decision:
    """What `day`'s evidence asks for (see the module's rule)."""
    if day.realised_below:
        return Decision("retrain", f"{day.partition}: realised drop ({day.realised_detail})",
                        "realised")
    if not day.drift_failed:
        return Decision("quiet", f"{day.partition}: drift verdict passed or absent")
    drift = f"drift ({day.drift_detail or 'check failed'})"
    if any_drift:
        return Decision("retrain", f"{day.partition}: {drift}; ML_RETRAIN_ON_ANY_DRIFT is "
                        "set", "any_drift")
    verdict = day.estimate_verdict
    if verdict == BELOW:
        return Decision("retrain", f"{day.partition}: {drift} and estimated performance "
                        f"below the gate ({day.estimate_detail})", "estimate")
    if verdict is None:
        return Decision("wait", f"{day.partition}: {drift}; waiting for its "
                        "estimated_performance")
    if verdict in (NOT_ESTIMATED, TOO_FEW_ROWS):
        # Nothing to weigh the drift against (a regressor, no calibrator, a day too quiet
        # to estimate while drift pooled it with earlier days): the calibrated drift
        # verdict decides alone, as it did before estimation existed.
        return Decision("retrain", f"{day.partition}: {drift}; performance not estimated "
                        f"({day.estimate_detail or verdict}), so the calibrated drift "
                        "verdict decides alone", "drift_unestimated")
    return Decision("warn", f"{day.partition}: {drift} did not move the estimated "
                    f"performance below the gate ({verdict}"
                    f"{': ' + day.estimate_detail if day.estimate_detail else ''}): "
                    "no retrain")


def wilson_upper(successes: int, trials: int, confidence: float = REALISED_CONFIDENCE
                 ) -> float:
    """One-sided upper Wilson bound of a proportion."""
    if trials <= 0:
        raise ValueError("a proportion needs at least one trial")
    z = float(norm.ppf(confidence))
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return min(1.0, (centre + spread) / (1 + z * z / trials))


def realised_drop(accuracy: float | None, labelled_rows: int, minimum: float | None
                  ) -> tuple[bool | None, str]:
    """Whether a day's labelled accuracy is below `minimum` beyond its noise (its upper
    Wilson bound under the minimum); None when there is nothing to judge."""
    if accuracy is None or minimum is None or labelled_rows <= 0 or not math.isfinite(
            accuracy):
        return None, ""
    upper = wilson_upper(round(accuracy * labelled_rows), labelled_rows)
    detail = (f"accuracy {accuracy:.4f} on {labelled_rows} labelled rows, upper "
              f"{REALISED_CONFIDENCE:.1%} bound {upper:.4f} vs minimum {minimum:.4f}")
    return upper < minimum, detail
