"""The always-valid mSPRT (ml_assets.core.rollout.sequential): false decisions under repeated
peeking (A/A simulations, against a naive peeked t-test that fails), power and rows
to a decision, the vectorised core against the public functions, and edge cases.

Simulations are seeded and vectorised: per run, running sums of the losses after each
batch give every look's moments at once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from ml_assets.core.rollout import sequential
from ml_assets.core.rollout.sequential import (
    CHALLENGER_BETTER,
    CHALLENGER_WORSE,
    NO_DIFFERENCE_YET,
    SequentialResult,
    paired,
    two_sample,
)

ALPHA = 0.05
RUNS = 400  # per A/A scenario (>= 200)
BATCHES = 40  # looks: one after every batch
MIN_ROWS = 100  # per variant before any decision


# --- simulation harness -------------------------------------------------------------


def _running(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, sample variance) after each batch; x is (runs, batches, rows per batch)."""
    per_batch = x.shape[2]
    n = per_batch * np.arange(1, x.shape[1] + 1, dtype=float)
    s = np.cumsum(x.sum(axis=2), axis=1)
    ss = np.cumsum(np.square(x).sum(axis=2), axis=1)
    mean = s / n
    var = np.maximum((ss - s * mean) / (n - 1), 0.0)
    return np.broadcast_to(n, s.shape), mean, var


@dataclass
class Looks:
    """Every look of every run: (runs, batches) arrays."""

    log_lr: np.ndarray
    estimate: np.ndarray
    naive_p: np.ndarray  # fixed-horizon t-test p-value, as if each look were the only one
    n_champion: np.ndarray
    n_challenger: np.ndarray

    def _ready(self) -> np.ndarray:
        return (self.n_champion >= MIN_ROWS) & (self.n_challenger >= MIN_ROWS)

    def rejected(self) -> np.ndarray:
        return self._ready() & (self.log_lr >= math.log(1 / ALPHA))

    def naive_rejected(self) -> np.ndarray:
        return self._ready() & (self.naive_p < ALPHA)

    def rates(self) -> dict[str, float]:
        """Share of runs EVER deciding: promotion (challenger better) and any decision."""
        better = self.estimate < 0
        msprt, naive = self.rejected(), self.naive_rejected()
        return {
            "msprt_promotion": float(np.mean(np.any(msprt & better, axis=1))),
            "msprt_any": float(np.mean(np.any(msprt, axis=1))),
            "naive_promotion": float(np.mean(np.any(naive & better, axis=1))),
            "naive_any": float(np.mean(np.any(naive, axis=1))),
        }

    def rows_to(self, decision: str) -> np.ndarray:
        """Challenger rows at each run's first decision (inf: none, or the wrong way)."""
        rejected = self.rejected()
        first = np.argmax(rejected, axis=1)
        runs = np.arange(rejected.shape[0])
        decided = rejected[runs, first]
        sign_ok = (self.estimate[runs, first] < 0) == (decision == CHALLENGER_BETTER)
        rows = self.n_challenger[runs, first]
        return np.where(decided & sign_ok, rows, np.inf)


def _two_sample_looks(champ: np.ndarray, chal: np.ndarray, binary: bool) -> Looks:
    n_c, m_c, s_c = _running(champ)
    n_h, m_h, s_h = _running(chal)
    v_c, v_h = s_c, s_h
    if binary:
        v_c = sequential.binary_variance(np.rint(m_c * n_c), n_c)
        v_h = sequential.binary_variance(np.rint(m_h * n_h), n_h)
    log_lr, d, _ = sequential.two_sample_from_moments(n_c, m_c, v_c, n_h, m_h, v_h)
    # Welch's t-test on the sample variances (what a dashboard would run at each look).
    a, b = s_c / n_c, s_h / n_h
    se2 = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se2 > 0, d / np.sqrt(se2), 0.0)
        df = np.where(se2 > 0, se2**2 / (a**2 / (n_c - 1) + b**2 / (n_h - 1)), 1.0)
    naive_p = 2 * stats.t.sf(np.abs(t), np.nan_to_num(df, nan=1.0))
    return Looks(log_lr, d, naive_p, n_c, n_h)


def _paired_looks(champ: np.ndarray, chal: np.ndarray) -> Looks:
    n, m_c, v_c = _running(champ)
    _, m_h, v_h = _running(chal)
    _, m_d, v_d = _running(chal - champ)
    log_lr, d, _ = sequential.paired_from_moments(n, m_d, v_d, m_c, v_c, m_h, v_h)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(v_d > 0, m_d / np.sqrt(v_d / n), 0.0)
    naive_p = 2 * stats.t.sf(np.abs(t), n - 1)
    return Looks(log_lr, d, naive_p, n, n)


def _batches(draw, runs: int, batches: int, per_batch: int) -> np.ndarray:
    return draw((runs, batches, per_batch)).astype(float)


def _canary_binary(seed: int, p_champ: float, p_chal: float, runs: int = RUNS,
                   batches: int = BATCHES, champ_rows: int = 35, chal_rows: int = 15) -> Looks:
    """0/1 losses, canary allocation 70/30 of each batch of 50 rows."""
    rng = np.random.default_rng(seed)
    champ = _batches(lambda s: rng.random(s) < p_champ, runs, batches, champ_rows)
    chal = _batches(lambda s: rng.random(s) < p_chal, runs, batches, chal_rows)
    return _two_sample_looks(champ, chal, binary=True)


def _assert_valid(rates: dict[str, float]) -> None:
    assert rates["msprt_promotion"] < ALPHA, rates
    assert rates["msprt_any"] < ALPHA, rates
    # The same looks with a fixed-horizon t-test: peeking inflates its error far past alpha.
    assert rates["naive_any"] > 2 * ALPHA, rates
    assert rates["naive_promotion"] > ALPHA, rates


# --- A/A: false decisions under repeated peeking ------------------------------------


@pytest.mark.parametrize("p, seed", [(0.1, 11), (0.3, 12)])
def test_aa_binary_canary_30_70_never_promotes_more_than_alpha(p, seed):
    looks = _canary_binary(seed, p, p)
    assert looks.n_challenger[0, -1] == 600 and looks.n_champion[0, -1] == 1400
    _assert_valid(looks.rates())


@pytest.mark.parametrize("kind, seed", [("abs_normal", 21), ("exponential", 22)])
def test_aa_continuous_two_sample(kind, seed):
    rng = np.random.default_rng(seed)
    shape = (RUNS, BATCHES, 25)
    if kind == "abs_normal":
        champ, chal = np.abs(rng.normal(0, 2.0, shape)), np.abs(rng.normal(0, 2.0, shape))
    else:  # skewed losses
        champ, chal = rng.exponential(1.0, shape), rng.exponential(1.0, shape)
    _assert_valid(_two_sample_looks(champ, chal, binary=False).rates())


def test_aa_paired_correlated_continuous():
    rng = np.random.default_rng(31)
    shape = (RUNS, BATCHES, 25)
    shared = rng.normal(0, 1.0, shape)  # the row's difficulty, seen by both models
    champ = np.abs(shared + 0.4 * rng.normal(size=shape))
    chal = np.abs(shared + 0.4 * rng.normal(size=shape))
    assert np.corrcoef(champ.ravel(), chal.ravel())[0, 1] > 0.7
    _assert_valid(_paired_looks(champ, chal).rates())


def test_aa_paired_binary_10_percent_disagreement():
    rng = np.random.default_rng(32)
    shape = (RUNS, BATCHES, 25)
    both = (rng.random(shape) < 0.2).astype(float)  # the error where the models agree
    u = rng.random(shape)  # they disagree on 10% of rows, either way equally often
    champ = np.where(u < 0.05, 1.0, np.where(u < 0.1, 0.0, both))
    chal = np.where(u < 0.05, 0.0, np.where(u < 0.1, 1.0, both))
    assert np.mean(champ != chal) == pytest.approx(0.1, abs=0.002)
    assert abs(chal.mean() - champ.mean()) < 0.002
    _assert_valid(_paired_looks(champ, chal).rates())


# --- power: rows to a decision -----------------------------------------------------

POWER_RUNS = 200
ROW_BOUND = 300  # challenger rows by which >= 95% of clear-cut runs have decided
# (measured: 95th percentile 175 balanced, 105 in a 30/70 canary; 100 is the minimum)


def test_clearly_better_challenger_is_promoted_quickly():
    rng = np.random.default_rng(41)
    shape = (POWER_RUNS, BATCHES, 25)
    champ = (rng.random(shape) < 0.3).astype(float)
    chal = (rng.random(shape) < 0.1).astype(float)
    rows = _two_sample_looks(champ, chal, binary=True).rows_to(CHALLENGER_BETTER)
    assert np.mean(rows <= ROW_BOUND) >= 0.95, np.percentile(rows, [50, 95])
    assert np.median(rows) <= 200


def test_clearly_worse_challenger_is_rolled_back_quickly():
    rng = np.random.default_rng(42)
    shape = (POWER_RUNS, BATCHES, 25)
    champ = (rng.random(shape) < 0.1).astype(float)
    chal = (rng.random(shape) < 0.3).astype(float)
    rows = _two_sample_looks(champ, chal, binary=True).rows_to(CHALLENGER_WORSE)
    assert np.mean(rows <= ROW_BOUND) >= 0.95, np.percentile(rows, [50, 95])


def test_canary_30_70_better_challenger_decides_within_bound():
    looks = _canary_binary(43, 0.3, 0.1, runs=POWER_RUNS)
    rows = looks.rows_to(CHALLENGER_BETTER)  # challenger rows; the champion has 7/3 as many
    assert np.mean(rows <= ROW_BOUND) >= 0.95, np.percentile(rows, [50, 95])


def _shadow_vs_canary(seed: int, batches: int = 100):
    """Champion error 0.3; the models disagree on 10% of rows, the challenger right on 80%
    of those (error 0.24). Shadow pairs the rows; the canary sees independent rows."""
    rng = np.random.default_rng(seed)
    shape = (POWER_RUNS, batches, 25)
    champ = (rng.random(shape) < 0.3).astype(float)
    disagree = rng.random(shape) < 0.1
    challenger_right = rng.random(shape) < 0.8
    chal = np.where(disagree, np.where(challenger_right, 0.0, 1.0), champ)
    # On disagreements the champion is the opposite of the challenger.
    champ = np.where(disagree, 1.0 - chal, champ)
    shadow = _paired_looks(champ, chal).rows_to(CHALLENGER_BETTER)
    ind_champ = (rng.random(shape) < champ.mean()).astype(float)
    ind_chal = (rng.random(shape) < chal.mean()).astype(float)
    canary = _two_sample_looks(ind_champ, ind_chal, binary=True).rows_to(CHALLENGER_BETTER)
    return shadow, canary, float(champ.mean()), float(chal.mean())


def test_paired_shadow_with_10_percent_disagreement_decides_faster():
    shadow, canary, err_champ, err_chal = _shadow_vs_canary(44)
    assert err_champ - err_chal == pytest.approx(0.06, abs=0.005)
    assert np.mean(np.isfinite(shadow)) >= 0.95
    assert np.mean(shadow <= 600) >= 0.95, np.percentile(shadow, [50, 95])
    assert np.median(shadow) * 2.5 < np.median(canary), (np.median(shadow), np.median(canary))


def _median_rows(p_champ: float, p_chal: float, mixture_sd: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    shape = (POWER_RUNS, 100, 20)
    champ = (rng.random(shape) < p_champ).astype(float)
    chal = (rng.random(shape) < p_chal).astype(float)
    n_c, m_c, _ = _running(champ)
    n_h, m_h, _ = _running(chal)
    log_lr, d, _ = sequential.two_sample_from_moments(
        n_c, m_c, sequential.binary_variance(np.rint(m_c * n_c), n_c),
        n_h, m_h, sequential.binary_variance(np.rint(m_h * n_h), n_h), mixture_sd=mixture_sd)
    better = (log_lr >= math.log(1 / ALPHA)) & (d < 0)
    rows = np.where(better.any(axis=1), n_h[:, 0] * (np.argmax(better, axis=1) + 1), np.inf)
    return float(np.median(rows))


def test_mixture_sd_trades_early_for_late_power():
    # Large effect (0.3 -> 0.1): a narrow mixture discounts early evidence.
    big = {sd: _median_rows(0.3, 0.1, sd, seed=45) for sd in (0.02, 0.2)}
    assert big[0.02] > 2 * big[0.2], big
    # Small effect (0.3 -> 0.25, ~0.1 sd): a wide mixture pays a penalty.
    small = {sd: _median_rows(0.3, 0.25, sd, seed=46) for sd in (0.2, 1.0)}
    assert small[1.0] > small[0.2], small


# --- the vectorised core is the public functions' core --------------------------------


def test_vectorised_core_matches_public_two_sample_and_paired():
    rng = np.random.default_rng(51)
    champ_b = rng.exponential(1.0, (3, 10, 20))
    chal_b = rng.exponential(0.8, (3, 10, 20))
    looks_two = _two_sample_looks(champ_b, chal_b, binary=False)
    looks_pair = _paired_looks(champ_b, chal_b)
    for run, batch in [(0, 1), (1, 4), (2, 9)]:
        champ = champ_b[run, : batch + 1].ravel()
        chal = chal_b[run, : batch + 1].ravel()
        two, pair = two_sample(champ, chal), paired(champ, chal)
        assert math.log(two.statistic) == pytest.approx(looks_two.log_lr[run, batch], rel=1e-9)
        assert math.log(pair.statistic) == pytest.approx(looks_pair.log_lr[run, batch],
                                                         rel=1e-9)
        assert two.estimate == pytest.approx(chal.mean() - champ.mean(), rel=1e-12)
        assert pair.estimate == pytest.approx(two.estimate, rel=1e-12)


def test_statistic_is_the_published_formula():
    rng = np.random.default_rng(52)
    champ, chal = rng.normal(1.0, 1.0, 150), rng.normal(0.8, 1.0, 90)
    d = chal.mean() - champ.mean()
    v = champ.var(ddof=1) / 150 + chal.var(ddof=1) / 90
    pooled = (149 * champ.var(ddof=1) + 89 * chal.var(ddof=1)) / 238
    tau2 = 0.3**2 * pooled
    expected = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d**2 / (2 * v * (v + tau2)))
    result = two_sample(champ, chal, mixture_sd=0.3)
    assert result.statistic == pytest.approx(expected, rel=1e-10)
    assert result.p_value == pytest.approx(min(1.0, 1 / expected), rel=1e-10)
    assert result.std_error == pytest.approx(math.sqrt(v), rel=1e-12)
    assert (result.n_champion, result.n_challenger) == (150, 90)


def test_binary_uses_smoothed_bernoulli_variance():
    champ = np.array([1.0] * 30 + [0.0] * 70)
    chal = np.array([1.0] * 10 + [0.0] * 90)
    auto, forced = two_sample(champ, chal), two_sample(champ, chal, binary=True)
    assert auto == forced
    p_c, p_h = 30.5 / 101, 10.5 / 101
    assert auto.std_error == pytest.approx(math.sqrt(p_c * (1 - p_c) / 100
                                                     + p_h * (1 - p_h) / 100))
    assert two_sample(champ, chal, binary=False).std_error != auto.std_error
    with pytest.raises(ValueError, match="not all 0 or 1"):
        two_sample(champ, chal + 0.5, binary=True)


def test_decision_follows_threshold_and_sign():
    rng = np.random.default_rng(53)
    champ = (rng.random(400) < 0.3).astype(float)
    chal = (rng.random(400) < 0.1).astype(float)
    better, worse = two_sample(champ, chal), two_sample(chal, champ)
    assert better.decision == CHALLENGER_BETTER and better.estimate < 0
    assert worse.decision == CHALLENGER_WORSE and worse.estimate > 0
    assert better.statistic >= 1 / ALPHA and better.p_value <= ALPHA
    assert better.statistic == pytest.approx(worse.statistic)
    # A stricter alpha needs more evidence than this.
    strict = 1 / better.statistic / 2
    assert two_sample(champ, chal, alpha=strict).decision == NO_DIFFERENCE_YET
    assert sequential.decide(math.log(20), -0.1, 0.05) == CHALLENGER_BETTER
    assert sequential.decide(math.log(19.9), -0.1, 0.05) == NO_DIFFERENCE_YET


def test_as_dict_round_trips():
    result = two_sample([0.1, 0.2, 0.3], [0.2, 0.3, 0.5])
    d = result.as_dict()
    assert set(d) == {"statistic", "p_value", "estimate", "std_error", "n_champion",
                      "n_challenger", "alpha", "decision"}
    assert SequentialResult(**d) == result


# --- edge cases ---------------------------------------------------------------------


@pytest.mark.parametrize("fn, champ, chal", [
    (two_sample, [], []), (two_sample, [1.0], [0.0]), (two_sample, [], [0.0, 1.0]),
    (two_sample, [1.0, 0.0], [0.0]), (paired, [], []), (paired, [1.0], [0.0]),
])
def test_fewer_than_two_rows_is_no_evidence(fn, champ, chal):
    result = fn(champ, chal)
    assert (result.statistic, result.p_value, result.decision) == (1.0, 1.0, NO_DIFFERENCE_YET)
    assert math.isnan(result.std_error)
    if champ and chal:
        assert result.estimate == pytest.approx(chal[0] - np.mean(champ))
    else:
        assert math.isnan(result.estimate)


def test_one_row_against_many_is_no_evidence():
    result = two_sample(np.ones(1000), [0.0])
    assert (result.statistic, result.decision) == (1.0, NO_DIFFERENCE_YET)
    assert (result.n_champion, result.n_challenger) == (1000, 1)


@pytest.mark.parametrize("binary", [None, False])
def test_all_zero_losses_give_no_decision(binary):
    result = two_sample(np.zeros(500), np.zeros(300), binary=binary)
    assert result.decision == NO_DIFFERENCE_YET and result.p_value == 1.0
    assert result.estimate == 0.0 and result.statistic <= 1.0
    assert paired(np.zeros(500), np.zeros(500)).statistic == 1.0


def test_all_wrong_against_all_right_is_decisive_and_finite():
    result = two_sample(np.ones(100), np.zeros(100))
    assert result.decision == CHALLENGER_BETTER
    assert math.isfinite(result.statistic) and math.isfinite(result.std_error)
    assert result.std_error > 0  # the smoothed variance never gives V = 0
    assert two_sample(np.zeros(100), np.ones(100)).decision == CHALLENGER_WORSE


def test_identical_samples_are_no_evidence():
    rng = np.random.default_rng(61)
    x = rng.exponential(1.0, 500)
    same = paired(x, x.copy())
    assert (same.statistic, same.p_value, same.estimate) == (1.0, 1.0, 0.0)
    assert same.decision == NO_DIFFERENCE_YET
    two = two_sample(x, x.copy())
    assert two.estimate == 0.0 and two.statistic < 1.0 and two.p_value == 1.0
    constant = two_sample(np.full(50, 0.7), np.full(80, 0.7))
    assert (constant.statistic, constant.decision) == (1.0, NO_DIFFERENCE_YET)


def test_paired_constant_shift_is_decisive_but_finite():
    rng = np.random.default_rng(62)
    x = rng.exponential(1.0, 200) + 1.0
    result = paired(x, x - 0.1)  # var(D) = 0 (up to rounding), d != 0
    assert result.decision == CHALLENGER_BETTER
    assert math.isfinite(result.statistic) and result.statistic >= 1 / ALPHA
    assert result.estimate == pytest.approx(-0.1)
    assert paired(x, x + 0.1).decision == CHALLENGER_WORSE
    # Constant losses on both sides, different values: floored, still decisive.
    assert paired(np.ones(50), np.zeros(50)).decision == CHALLENGER_BETTER
    assert two_sample(np.full(50, 2.0), np.full(50, 1.5)).decision == CHALLENGER_BETTER


@pytest.mark.parametrize("fn", [two_sample, paired])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_are_an_error(fn, bad):
    good = [0.2, 0.4, 0.1, 0.3]
    with pytest.raises(ValueError, match=r"challenger_losses has 1 non-finite .* row 2"):
        fn(good, [0.2, 0.4, bad, 0.3])
    with pytest.raises(ValueError, match="champion_losses has 1 non-finite"):
        fn([bad, 0.4, 0.1, 0.3], good)


def test_bad_shapes_and_lengths_are_errors():
    with pytest.raises(ValueError, match="same length"):
        paired([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        two_sample([[0.1, 0.2], [0.3, 0.4]], [0.1, 0.2])
    with pytest.raises(ValueError, match="scalar"):
        two_sample(0.3, [0.1, 0.2])
    with pytest.raises(ValueError, match="numeric"):
        two_sample(["a", "b"], [0.1, 0.2])


@pytest.mark.parametrize("scale", [1e-300, 1e150, 1e300])
def test_huge_and_tiny_values_do_not_overflow(scale):
    rng = np.random.default_rng(63)
    champ, chal = rng.exponential(1.0, 300), rng.exponential(0.7, 300)
    base_two, base_pair = two_sample(champ, chal), paired(champ, chal)
    two, pair = two_sample(champ * scale, chal * scale), paired(champ * scale, chal * scale)
    for scaled, base in [(two, base_two), (pair, base_pair)]:
        assert math.isfinite(scaled.statistic) and math.isfinite(scaled.estimate)
        assert scaled.statistic == pytest.approx(base.statistic, rel=1e-9)
        assert scaled.estimate == pytest.approx(base.estimate * scale, rel=1e-9)
        assert scaled.std_error == pytest.approx(base.std_error * scale, rel=1e-9)
        assert scaled.decision == base.decision


def test_overwhelming_evidence_caps_the_statistic():
    rng = np.random.default_rng(64)
    champ, chal = rng.normal(10.0, 0.01, 10_000), rng.normal(1.0, 0.01, 10_000)
    result = two_sample(champ, chal)
    assert result.statistic == np.finfo(float).max and result.p_value == 0.0
    assert result.decision == CHALLENGER_BETTER
    log_lr = sequential.log_mixture_likelihood_ratio(-9.0, 2e-8, 1e-3)
    assert np.isfinite(log_lr) and log_lr > 1e8


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
@pytest.mark.parametrize("fn", [two_sample, paired])
def test_alpha_outside_unit_interval_is_an_error(fn, alpha):
    with pytest.raises(ValueError, match="alpha"):
        fn([0.1, 0.2, 0.3], [0.1, 0.2, 0.4], alpha=alpha)


@pytest.mark.parametrize("mixture_sd", [0.0, -0.2, math.nan, math.inf])
def test_mixture_sd_must_be_positive(mixture_sd):
    with pytest.raises(ValueError, match="mixture_sd"):
        two_sample([0.1, 0.2, 0.3], [0.1, 0.2, 0.4], mixture_sd=mixture_sd)
