"""Always-valid champion/challenger comparison on per-row losses (numpy only).

Which test
----------
The mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and Walsh,
"Always valid inference: continuous monitoring of A/B tests" (2017; Operations
Research 2022), in the normal-mixture form Optimizely's Stats Engine uses. It compares
the mean per-row LOSS of a challenger with the champion's (lower is better): 0/1
error or the Brier score for classification, absolute or squared error for
regression. `two_sample` is for a canary (each variant answers its own share of the
traffic); `paired` is for shadow mode (both variants scored the same rows).

Why this test
-------------
A gradual rollout looks at the comparison after every batch of labels and stops as
soon as it is convinced. A fixed-horizon t-test is only valid when it is looked at
once, at a sample size fixed in advance: peeked at after every batch, its chance of
ever "finding" a difference between two identical models grows far beyond alpha
(with ~40 looks, four to five times alpha). A group-sequential design (Pocock,
O'Brien-Fleming) fixes that but needs the number and timing of the looks and the
maximum sample size in advance. The mSPRT needs neither: its mixture likelihood
ratio Lambda_n is a martingale under "no difference", so by Ville's inequality the
probability that it EVER reaches 1/alpha is at most alpha, however often and
whenever it is looked at, and the test may run without a planned end. The price is
power: at a fixed sample size it needs somewhat more data than a fixed-horizon test
(which in turn is only valid if it is not peeked at).

How to use it
-------------
Recompute the result on all labelled rows so far after every batch and stop at the
first decision ("challenger_better": promote; "challenger_worse": roll back); until
then the answer is "no_difference_yet" (keep collecting, or give up at a budget of
rows: stopping for futility never inflates the false-positive rate). `p_value` is
1/Lambda_n for the rows given; the always-valid p-value of the whole monitoring run
is the running minimum of these over the looks. Waiting for a minimum number of rows
per variant before acting (e.g. 100) is recommended: it keeps the normal
approximation honest and costs nothing in validity.

The statistic
-------------
With d the challenger's mean loss minus the champion's and V its estimated variance
(two-sample: s_c^2/n_c + s_h^2/n_h; paired: var(D)/n of the row differences D), the
effect theta is given a N(0, tau^2) mixture and

    Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2))),

computed in log space. tau = mixture_sd * (pooled standard deviation of the losses),
so the mixture is in loss units and `mixture_sd` is an effect size in standard
deviations of a row's loss. H0 "no difference" is rejected when Lambda_n >= 1/alpha;
the sign of d says which way. The test is two-sided: alpha bounds the chance of
either false decision (false promotion plus false rollback), not each.

Choosing mixture_sd
-------------------
The mixture puts its weight on effects of about mixture_sd standard deviations, and
it only counts evidence at full weight once V has shrunk below tau^2 (in a balanced
two-sample test, after about 2 / mixture_sd^2 rows per variant: 50 at the default).
A larger value lets large effects stop the test sooner but adds a penalty of about
log(mixture_sd x sqrt(n)) that small effects must overcome, so they need more rows;
a smaller value is efficient for small effects late in the test but discounts early
evidence, so even a large effect cannot stop it early. Simulated (balanced, 0/1
errors, a look every 10 rows per variant, no minimum, at most 2000), the median rows
per variant to a decision:

    mixture_sd            0.02   0.05   0.1    0.2    0.5    1.0
    error 0.30 -> 0.10     500    220   130     90     70     80
    error 0.30 -> 0.25       -   1440  1150   1130   1400   1535   (- : most never decide)

The default 0.2 is a good compromise for effects of roughly 0.1 to 0.5 standard
deviations. Validity holds for any value fixed in advance: do not tune it on the
data being tested.

Assumptions
-----------
- Rows are independent (within and between variants); a user or session repeating
  across rows breaks this, and correlated rows make the test anti-conservative.
- The normal approximation of the mean loss holds (the variances are estimated from
  the data, a plug-in as in Optimizely's implementation): fine after ~100 rows per
  variant even for 0/1 or skewed losses, doubtful for very heavy tails or for 0/1
  losses with only a handful of errors. Where the approximation errs, with a small
  canary share and rare errors, it errs towards the smaller sample looking better
  (its estimated variance is small exactly when it has few errors): false decisions
  then lean towards promotion, still well under alpha in the tests (about 2% of A/A
  runs at alpha = 0.05, error rate 0.1, 30% canary, 40 looks).
- The allocation ratio between the variants is roughly stable over the run (the
  normal-mixture likelihood treats d as a scaled random walk); a canary whose share
  steps up is fine when the steps are modest, a share jumping from 1% to 50% is not.
- The losses' distribution is stationary: the test compares the variants on the
  traffic mix seen so far, not on a population that drifts under it.

Inputs and edge cases
---------------------
Losses are finite real numbers; NaN or inf is a ValueError naming the sample (drop
unlabelled or unscored rows before calling: silently dropping them here would hide a
logging problem and, in `paired`, would break the pairing). With fewer than 2 rows in
a sample the result is "no_difference_yet" with statistic 1 and p-value 1. For 0/1
losses (`binary`, detected when every loss is 0 or 1) each variance is the smoothed
Bernoulli p~(1-p~), p~ = (k + 0.5)/(n + 1), so all-0 or all-1 samples never give V = 0.
Otherwise a variance is floored at (1e-6 x the loss scale)^2: samples with no spread
but different means give a decisive, finite statistic; identical constant samples give
no evidence (statistic 1). The statistic is capped at the largest float; p-values that
small are reported as 0. Losses are rescaled internally, so huge values do not overflow.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

CHALLENGER_BETTER = "challenger_better"
CHALLENGER_WORSE = "challenger_worse"
NO_DIFFERENCE_YET = "no_difference_yet"
DECISIONS = (CHALLENGER_BETTER, CHALLENGER_WORSE, NO_DIFFERENCE_YET)

DEFAULT_ALPHA = 0.05
DEFAULT_MIXTURE_SD = 0.2
MIN_ROWS = 2  # per sample, below which there is no variance and no evidence
# A standard deviation is floored at this fraction of the loss scale (the larger mean
# loss): only samples without spread ever reach it.
SD_FLOOR_RELATIVE = 1e-6
_LOG_FLOAT_MAX = math.log(sys.float_info.max)


@dataclass(frozen=True)
class SequentialResult:
    """One look at a champion/challenger comparison (see the module docstring)."""

    statistic: float  # mixture likelihood ratio Lambda_n (>= 1/alpha: reject H0 "no difference")
    p_value: float  # always-valid p-value for these rows, min(1, 1/Lambda_n)
    estimate: float  # challenger mean loss minus champion mean loss (negative: challenger better)
    std_error: float  # of the estimate (NaN with fewer than 2 rows)
    n_champion: int
    n_challenger: int
    alpha: float
    decision: str  # "challenger_better" | "challenger_worse" | "no_difference_yet"

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


# --- vectorised core (arrays broadcast; also usable on running sums) ----------------


def binary_variance(errors: npt.ArrayLike, n: npt.ArrayLike) -> np.ndarray:
    """Smoothed Bernoulli variance p~(1 - p~), p~ = (k + 0.5) / (n + 1), of 0/1 losses."""
    p = (np.asarray(errors, dtype=float) + 0.5) / (np.asarray(n, dtype=float) + 1.0)
    return p * (1.0 - p)


def log_mixture_likelihood_ratio(
    estimate: npt.ArrayLike, variance: npt.ArrayLike, tau2: npt.ArrayLike
) -> np.ndarray:
    """log Lambda = -log(1 + tau^2/V)/2 + (d^2/V) (tau^2/(V + tau^2))/2, elementwise.

    Where V <= 0 or tau^2 <= 0 there is no evidence either way: log Lambda = 0.
    """
    d, v, t2 = np.broadcast_arrays(
        np.asarray(estimate, dtype=float),
        np.asarray(variance, dtype=float),
        np.asarray(tau2, dtype=float),
    )
    out = np.zeros(d.shape)
    ok = (v > 0) & (t2 > 0)
    if np.any(ok):
        dv, vv, tv = d[ok], v[ok], t2[ok]
        penalty = 0.5 * np.logaddexp(0.0, np.log(tv) - np.log(vv))  # log(1 + t2/v) / 2
        z2 = np.square(dv / np.sqrt(vv))
        out[ok] = 0.5 * z2 * (tv / (vv + tv)) - penalty
    return out


def _floor2(*means: npt.ArrayLike) -> np.ndarray:
    scale = np.max(np.abs(np.broadcast_arrays(*[np.asarray(m, dtype=float) for m in means])),
                   axis=0)
    return np.square(SD_FLOOR_RELATIVE * scale)


def two_sample_from_moments(
    n_champion: npt.ArrayLike,
    mean_champion: npt.ArrayLike,
    var_champion: npt.ArrayLike,
    n_challenger: npt.ArrayLike,
    mean_challenger: npt.ArrayLike,
    var_challenger: npt.ArrayLike,
    *,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log Lambda, estimate d, variance V of d) from each sample's count, mean, variance.

    The variances are the per-row loss variances (sample variance, or `binary_variance`
    for 0/1 losses). Elementwise, so a simulation or a streaming evaluator can pass
    running sums' moments for many looks at once. V is returned unfloored.
    """
    n_c = np.asarray(n_champion, dtype=float)
    n_h = np.asarray(n_challenger, dtype=float)
    m_c = np.asarray(mean_champion, dtype=float)
    m_h = np.asarray(mean_challenger, dtype=float)
    v_c = np.asarray(var_champion, dtype=float)
    v_h = np.asarray(var_challenger, dtype=float)
    enough = (n_c >= MIN_ROWS) & (n_h >= MIN_ROWS)
    nc, nh = np.where(enough, n_c, MIN_ROWS), np.where(enough, n_h, MIN_ROWS)
    d = m_h - m_c
    floor2 = _floor2(m_c, m_h, d)
    fv_c, fv_h = np.maximum(v_c, floor2), np.maximum(v_h, floor2)
    variance = fv_c / nc + fv_h / nh
    pooled = ((nc - 1.0) * fv_c + (nh - 1.0) * fv_h) / (nc + nh - 2.0)
    log_lr = log_mixture_likelihood_ratio(d, variance, mixture_sd**2 * pooled)
    no_evidence = ~enough | ((v_c == 0) & (v_h == 0) & (d == 0))
    log_lr = np.where(no_evidence, 0.0, log_lr)
    return log_lr, d, v_c / nc + v_h / nh


def paired_from_moments(
    n: npt.ArrayLike,
    mean_diff: npt.ArrayLike,
    var_diff: npt.ArrayLike,
    mean_champion: npt.ArrayLike,
    var_champion: npt.ArrayLike,
    mean_challenger: npt.ArrayLike,
    var_challenger: npt.ArrayLike,
    *,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log Lambda, estimate d, variance V of d) for n paired rows, elementwise.

    `mean_diff`/`var_diff` are the mean and sample variance of D = challenger - champion
    per row; tau comes from the losses' variances (their average), not from var(D).
    """
    nn = np.asarray(n, dtype=float)
    d = np.asarray(mean_diff, dtype=float)
    v_d = np.asarray(var_diff, dtype=float)
    m_c = np.asarray(mean_champion, dtype=float)
    m_h = np.asarray(mean_challenger, dtype=float)
    loss_var = 0.5 * (np.asarray(var_champion, dtype=float) + np.asarray(var_challenger,
                                                                         dtype=float))
    enough = nn >= MIN_ROWS
    n_safe = np.where(enough, nn, MIN_ROWS)
    floor2 = _floor2(m_c, m_h, d)
    variance = np.maximum(v_d, floor2) / n_safe
    tau2 = mixture_sd**2 * np.maximum(loss_var, floor2)
    log_lr = log_mixture_likelihood_ratio(d, variance, tau2)
    no_evidence = ~enough | ((v_d == 0) & (d == 0))
    log_lr = np.where(no_evidence, 0.0, log_lr)
    return log_lr, d, v_d / n_safe


# --- public API on per-row losses ---------------------------------------------------


def two_sample(
    champion_losses: npt.ArrayLike,
    challenger_losses: npt.ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
    binary: bool | None = None,
) -> SequentialResult:
    """mSPRT on independent samples (canary: each variant's own traffic).

    `binary`: the losses are 0/1 errors, whose variances are smoothed Bernoulli ones
    (None: detected, when every loss in both samples is 0 or 1; True on other values is
    a ValueError). Non-finite losses are a ValueError.
    """
    _check_params(alpha, mixture_sd)
    champ = _losses(champion_losses, "champion_losses")
    chal = _losses(challenger_losses, "challenger_losses")
    zero_one = _is_zero_one(champ) and _is_zero_one(chal)
    if binary is None:
        binary = zero_one
    elif binary and not zero_one:
        raise ValueError("binary=True but the losses are not all 0 or 1")
    n_c, n_h = int(champ.size), int(chal.size)
    scale = 1.0 if binary else _scale(champ, chal)
    champ, chal = champ / scale, chal / scale
    if n_c < MIN_ROWS or n_h < MIN_ROWS:
        estimate = float(chal.mean() - champ.mean()) * scale if n_c and n_h else math.nan
        return _result(0.0, estimate, math.nan, n_c, n_h, alpha)
    mean_c, mean_h = float(champ.mean()), float(chal.mean())
    if binary:
        var_c = float(binary_variance(champ.sum(), n_c))
        var_h = float(binary_variance(chal.sum(), n_h))
    else:
        var_c, var_h = float(champ.var(ddof=1)), float(chal.var(ddof=1))
    log_lr, d, v = two_sample_from_moments(
        n_c, mean_c, var_c, n_h, mean_h, var_h, mixture_sd=mixture_sd
    )
    return _result(float(log_lr), float(d) * scale, math.sqrt(float(v)) * scale, n_c, n_h,
                   alpha)


def paired(
    champion_losses: npt.ArrayLike,
    challenger_losses: npt.ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> SequentialResult:
    """mSPRT on paired rows (shadow: both variants scored the SAME rows, in the same order).

    Row i of one sample pairs with row i of the other; unequal lengths and non-finite
    losses are ValueErrors. Uses D_i = challenger_i - champion_i: d = mean(D),
    V = var(D)/n, so the variation the rows share cancels and it decides faster than
    `two_sample` on the same amount of traffic.
    """
    _check_params(alpha, mixture_sd)
    champ = _losses(champion_losses, "champion_losses")
    chal = _losses(challenger_losses, "challenger_losses")
    if champ.size != chal.size:
        raise ValueError(
            f"paired samples must have the same length: champion_losses has {champ.size} "
            f"rows, challenger_losses {chal.size}"
        )
    n = int(champ.size)
    scale = _scale(champ, chal)
    champ, chal = champ / scale, chal / scale
    diff = chal - champ
    if n < MIN_ROWS:
        estimate = float(diff.mean()) * scale if n else math.nan
        return _result(0.0, estimate, math.nan, n, n, alpha)
    log_lr, d, v = paired_from_moments(
        n, float(diff.mean()), float(diff.var(ddof=1)),
        float(champ.mean()), float(champ.var(ddof=1)),
        float(chal.mean()), float(chal.var(ddof=1)),
        mixture_sd=mixture_sd,
    )
    return _result(float(log_lr), float(d) * scale, math.sqrt(float(v)) * scale, n, n, alpha)


def stratified(
    strata: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    alpha: float = DEFAULT_ALPHA,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> SequentialResult:
    """`two_sample` over strata (champion losses, challenger losses) pooled as one
    estimate: d = sum_k w_k d_k, V = sum_k w_k^2 V_k with w_k the stratum's share of the
    rows. For a canary whose share steps up: each step's period is a stratum, so rows
    the canary answered late (after a step) are compared with the champion's rows of the
    same period, not with its early ones (a loss that drifts over time would otherwise
    look like a difference). A stratum with fewer than 2 rows in an arm is left out."""
    _check_params(alpha, mixture_sd)
    parts = [(_losses(c, "champion_losses"), _losses(h, "challenger_losses"))
             for c, h in strata]
    used = [(c, h) for c, h in parts if c.size >= MIN_ROWS and h.size >= MIN_ROWS]
    n_c = sum(int(c.size) for c, _ in parts)
    n_h = sum(int(h.size) for _, h in parts)
    if not used:
        return _result(0.0, math.nan, math.nan, n_c, n_h, alpha)
    if len(used) == 1:
        return two_sample(used[0][0], used[0][1], alpha, mixture_sd)
    everything = np.concatenate([x for pair in used for x in pair])
    binary = _is_zero_one(everything)
    scale = 1.0 if binary else _scale(everything)
    total = sum(c.size + h.size for c, h in used)
    estimate, variance = 0.0, 0.0
    for c, h in used:
        c, h = c / scale, h / scale
        if binary:
            var_c = float(binary_variance(c.sum(), c.size))
            var_h = float(binary_variance(h.sum(), h.size))
        else:
            var_c, var_h = float(c.var(ddof=1)), float(h.var(ddof=1))
        weight = (c.size + h.size) / total
        estimate += weight * float(h.mean() - c.mean())
        variance += weight ** 2 * (var_c / c.size + var_h / h.size)
    scaled = everything / scale
    loss_var = (float(binary_variance(scaled.sum(), scaled.size)) if binary
                else float(scaled.var(ddof=1)))
    floor2 = float(_floor2(float(scaled.mean()))) if variance <= 0 else 0.0
    tau2 = mixture_sd ** 2 * max(loss_var, floor2, 1e-300)
    log_lr = float(log_mixture_likelihood_ratio(estimate, max(variance, floor2), tau2))
    if variance <= 0 and estimate == 0:
        log_lr = 0.0
    return _result(log_lr, estimate * scale, math.sqrt(variance) * scale, n_c, n_h, alpha)


def decide(log_statistic: float, estimate: float, alpha: float) -> str:
    """The decision for log Lambda: reject H0 when Lambda >= 1/alpha, sign of the estimate."""
    if log_statistic >= -math.log(alpha) and estimate != 0:
        return CHALLENGER_BETTER if estimate < 0 else CHALLENGER_WORSE
    return NO_DIFFERENCE_YET


# --- helpers ------------------------------------------------------------------------


def _result(log_lr: float, estimate: float, std_error: float, n_champion: int,
            n_challenger: int, alpha: float) -> SequentialResult:
    statistic = math.exp(log_lr) if log_lr < _LOG_FLOAT_MAX else sys.float_info.max
    p_value = min(1.0, math.exp(-log_lr)) if log_lr > -_LOG_FLOAT_MAX else 1.0
    return SequentialResult(
        statistic=statistic,
        p_value=p_value,
        estimate=estimate,
        std_error=std_error,
        n_champion=n_champion,
        n_challenger=n_challenger,
        alpha=float(alpha),
        decision=decide(log_lr, estimate, alpha),
    )


def _check_params(alpha: float, mixture_sd: float) -> None:
    if not (isinstance(alpha, numbers.Real) and 0 < float(alpha) < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(mixture_sd, numbers.Real) and 0 < float(mixture_sd) < math.inf):
        raise ValueError(f"mixture_sd must be a positive finite number, got {mixture_sd!r}")


def _losses(values: npt.ArrayLike, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric losses: {exc}") from exc
    if array.ndim == 0:
        raise ValueError(f"{name} must be a 1-D sequence of per-row losses, got a scalar")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D per-row losses, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf), first at row "
            f"{int(np.argmax(bad))}; losses must be finite (drop unlabelled rows first)"
        )
    return array


def _is_zero_one(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def _scale(*samples: np.ndarray) -> float:
    """Largest |loss| (1 when there is none or all are 0): dividing by it avoids overflow."""
    biggest = max((float(np.max(np.abs(s))) for s in samples if s.size), default=0.0)
    return biggest if biggest > 0 else 1.0
