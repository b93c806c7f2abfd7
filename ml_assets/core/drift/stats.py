"""Two-sample drift statistics on pre-sorted, pre-counted data (numpy/scipy only).

Each function reproduces a scipy reference (to 1e-9) from the compact form a
`ReferenceProfile` stores, so the reference sample is never re-read or re-sorted:

- `ks_numerator` + `ks_pvalue`     -> scipy.stats.ks_2samp (two-sided, same method selection)
- `wasserstein`                   -> scipy.stats.wasserstein_distance
- `chi2_homogeneity`              -> scipy.stats.chi2_contingency (2 x K table)
- `jensenshannon`                 -> scipy.spatial.distance.jensenshannon (natural log)
- `psi`                           -> population stability index on given bins

and what calibrated verdicts need (see docs/drift.md, "Calibrated verdicts"):

- `ks_critical`                   the KS critical value at a level (exact or asymptotic)
- `*_batch`                       the same statistics on B resampled count tables at once
- `chi2_merged`                   chi-squared with sparse categories merged (Cochran)
- `resample_counts` / `split_counts`   B multinomial / conditional (permutation) draws
- `bridge_batch`                  the Brownian-bridge limit of KS / Wasserstein, discrete
- `resampled_pvalue` / `resampled_critical`   Monte Carlo p-value and critical value
- `missing_rate_pvalue`           Fisher's exact test of two missing rates
- `holm` / `bonferroni`           family-wise adjusted p-values
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

try:  # scipy's compiled kernel for the exact two-sided p-value when n1 != n2
    from scipy.stats._stats_pythran import (
        _compute_outer_prob_inside_method as _scipy_outer_prob,
    )
except ImportError:  # pragma: no cover - other scipy builds
    _scipy_outer_prob = None

KS_MAX_AUTO_N = 10_000  # scipy's ks_2samp: method='auto' is exact up to this size
KS_METHODS = ("auto", "exact", "asymp")
PSI_EPSILON = 1e-4  # share given to an empty bin, so PSI stays finite
# Above n*D^2 = 14.2, both scipy's kstwo.sf and the Kolmogorov limit are < 1e-12
# (Dvoretzky-Kiefer-Wolfowitz-Massart: sf <= 2 exp(-2 n D^2)), so the limit is used:
# scipy's exact Smirnov sum costs up to 0.5 s there for large n.
_KS_TAIL_CUTOFF = 0.5 * math.log(2e12)


def ks_numerator(ref_values: np.ndarray, ref_counts: np.ndarray, cur_sorted: np.ndarray) -> int:
    """max |F_ref - F_cur| * N * m, exactly, for a counted reference and a sorted sample.

    `ref_values` is sorted with integer multiplicities `ref_counts` (total N > 0);
    `cur_sorted` holds m > 0 values. F_ref is constant between consecutive reference
    values, so the supremum is at one end of each such interval: 2K binary searches
    into the sample, no pass over it.
    """
    n_ref, m = int(ref_counts.sum()), cur_sorted.size
    upto = np.cumsum(ref_counts, dtype=np.int64)
    at_or_below = np.searchsorted(cur_sorted, ref_values, side="right").astype(np.int64)
    # Sample values equal to a stored one sit just before at_or_below; only there does
    # the left search differ (one binary search, not two, for continuous data).
    below = at_or_below.copy()
    tied = np.flatnonzero(at_or_below > 0)
    tied = tied[cur_sorted[at_or_below[tied] - 1] == ref_values[tied]]
    if tied.size:
        below[tied] = np.searchsorted(cur_sorted, ref_values[tied], side="left")
    at_start = np.abs(upto * m - at_or_below * n_ref).max()  # F_cur at each ref value
    before = np.abs(np.r_[0, upto[:-1]] * m - below * n_ref).max()  # just before it
    return int(max(at_start, before))


def wasserstein(ref_values: np.ndarray, ref_counts: np.ndarray,
                cur_sorted: np.ndarray) -> float:
    """Wasserstein-1 distance between a counted reference and a sorted sample.

    W1 is the integral of |Q_ref(t) - Q_cur(t)| over t in (0, 1]. On the grid of
    1/(N m), current rank j covers (jN, (j+1)N] and reference value i covers
    (C_{i-1} m, C_i m] (C: cumulative counts). Each rank is paired with the reference
    value at its start (one pass over the sample); the K reference boundaries that
    fall strictly inside a rank's interval are then corrected for.
    """
    n_ref, m = int(ref_counts.sum()), cur_sorted.size
    bounds = np.cumsum(ref_counts, dtype=np.int64) * m
    ranks_per_value = np.diff(-(-bounds // n_ref), prepend=0)  # ceil(C_i m / N) steps
    paired = np.repeat(ref_values, ranks_per_value)
    np.subtract(paired, cur_sorted, out=paired)  # in place: one m-sized buffer in all
    main = np.abs(paired, out=paired).sum() * n_ref
    inner = bounds[:-1]
    rank = inner // n_ref
    crossing = inner % n_ref != 0
    if not crossing.any():
        return float(main / (n_ref * m))
    idx = np.flatnonzero(crossing)
    rank = rank[idx]
    rank_end = (rank + 1) * n_ref
    length = np.minimum(bounds[idx + 1], rank_end) - inner[idx]
    counted_as = np.searchsorted(bounds, rank * n_ref, side="right")
    cur = cur_sorted[rank]
    fix = length * (np.abs(ref_values[idx + 1] - cur) - np.abs(ref_values[counted_as] - cur))
    return float((main + fix.sum()) / (n_ref * m))


def ks_pvalue(numerator: int, n1: int, n2: int, method: str = "auto") -> tuple[float, float]:
    """(D, p-value) of the two-sided two-sample KS test, as scipy.stats.ks_2samp computes
    (see `ks_pvalue_mode`, which also says which null was used)."""
    d, p, _ = ks_pvalue_mode(numerator, n1, n2, method)
    return d, p


def ks_pvalue_mode(numerator: int, n1: int, n2: int,
                   method: str = "auto") -> tuple[float, float, str]:
    """(D, p-value, 'exact' | 'asymptotic') of the two-sided two-sample KS test, as
    scipy.stats.ks_2samp computes.

    `numerator` is max|F1 - F2| * n1 * n2 (from `ks_numerator`). The method selection
    mirrors scipy 1.17: 'auto' is exact when max(n1, n2) <= 10,000; 'exact' falls back
    to the asymptotic distribution when lcm(n1, n2) overflows int32 or the exact
    computation fails.
    """
    if method not in KS_METHODS:
        raise ValueError(f"ks method must be one of {KS_METHODS}, got {method!r}")
    g = math.gcd(n1, n2)
    d = numerator / (n1 * n2)
    mode = method
    if mode == "auto":
        mode = "exact" if max(n1, n2) <= KS_MAX_AUTO_N else "asymp"
    elif mode == "exact" and n1 // g >= np.iinfo(np.int32).max / (n2 // g):
        mode = "asymp"
    if mode == "exact":
        lcm = (n1 // g) * n2
        h = numerator // g  # == round(D * lcm), exactly
        ok, prob = _exact_two_sided(n1, n2, g, h)
        if ok:
            return h / lcm, float(np.clip(prob, 0, 1)), "exact"
    return d, float(np.clip(_kstwo_sf(d, _ks_n_eff(n1, n2)), 0, 1)), "asymptotic"


def _ks_n_eff(n1: int, n2: int) -> float:
    big, small = sorted([float(n1), float(n2)], reverse=True)
    return float(np.round(big * small / (big + small)))


def _kstwo_sf(d: float, n: float) -> float:
    """scipy.stats.kstwo.sf(d, n), with the Kolmogorov limit where both are < 1e-12."""
    if n < 1:  # scipy gives nan here (one value per sample, asymptotic method)
        return math.nan
    if n * d * d >= _KS_TAIL_CUTOFF:
        return float(special.kolmogorov(d * math.sqrt(n)))
    return float(stats.kstwo.sf(d, n))


def _exact_two_sided(n1: int, n2: int, g: int, h: int) -> tuple[bool, float]:
    """scipy's _attempt_exact_2kssamp for alternative='two-sided': (success, p)."""
    if h == 0:
        return True, 1.0
    try:
        with np.errstate(invalid="raise", over="raise"):
            if n1 == n2:
                prob = _prob_outside_square(n1, h)
            else:
                prob = _outer_prob_inside(n1, n2, g, h)
    except (FloatingPointError, OverflowError):
        return False, math.nan
    return (0 <= prob <= 1), prob


def _prob_outside_square(n: int, h: int) -> float:
    """Pr(D_{n,n} >= h/n); the same Horner-like recursion as scipy."""
    prob = 0.0
    k = int(np.floor(n / h))
    while k >= 0:
        p1 = 1.0
        for j in range(h):
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1)
        prob = p1 * (1.0 - prob)
        k -= 1
    return 2 * prob


def _outer_prob_inside(m: int, n: int, g: int, h: int) -> float:
    """Proportion of lattice paths leaving |x/m - y/n| < h/lcm (scipy's kernel)."""
    if _scipy_outer_prob is not None:
        return float(_scipy_outer_prob(m, n, g, h))
    return _outer_prob_inside_python(m, n, g, h)  # pragma: no cover


def _outer_prob_inside_python(m: int, n: int, g: int, h: int) -> float:
    """Pure-Python port of scipy's compiled `_compute_outer_prob_inside_method`."""
    if m < n:
        m, n = n, m
    mg, ng = m // g, n // g
    minj, maxj = 0, min(int(np.ceil(h / mg)), n + 1)
    curlen = maxj - minj
    column = np.ones(min(2 * maxj + 2, n + 1), dtype=np.float64)
    column[minj:maxj] = 0.0
    for i in range(1, m + 1):
        lastminj, lastlen = minj, curlen
        minj = min(max(int(np.floor((ng * i - h) / mg)) + 1, 0), n)
        maxj = min(int(np.ceil((ng * i + h) / mg)), n + 1)
        if maxj <= minj:
            return 1.0
        val = 0.0 if minj == 0 else 1.0
        for jj in range(maxj - minj):
            j = jj + minj
            val = (column[jj + minj - lastminj] * i + val * j) / (i + j)
            column[jj] = val
        curlen = maxj - minj
        if lastlen > curlen:
            column[maxj - minj:maxj - minj + (lastlen - curlen)] = 1
    return float(column[maxj - minj - 1])


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of scipy.stats.chi2_contingency([ref_counts, cur_counts]).

    Categories seen in neither sample are dropped (scipy rejects zero expected
    frequencies); categories seen in only one sample are what the test is about.
    Yates' continuity correction applies when there are two categories, as in scipy.
    Both samples must be non-empty.
    """
    observed = np.vstack([ref_counts, cur_counts]).astype(np.float64)
    observed = observed[:, observed.sum(axis=0) > 0]
    expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True)
    expected = expected / observed.sum()
    dof = observed.shape[1] - 1
    if dof == 0:
        return 0.0, 1.0
    if dof == 1:
        diff = expected - observed
        observed = observed + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, float(special.chdtrc(dof, statistic))


def chi2_merged(ref_counts: np.ndarray, cur_counts: np.ndarray,
                min_expected: float = 5.0) -> tuple[float, float, int]:
    """(statistic, p-value, bins) of the chi-squared homogeneity test after merging sparse
    categories, so that every expected count is >= `min_expected` (Cochran's rule) and
    the chi-squared null holds.

    Categories are merged by their pooled count T = ref + cur (needed: T min(m, n) / N >=
    min_expected): the smallest ones into one bucket, enlarged with the next smallest
    until it is large enough itself. The merge depends on the pooled counts only, which
    carry no information on the split under the null, so the test keeps its level;
    categories seen in one sample only (unseen in the reference, rare ones) land in the
    bucket unless frequent enough to stand alone. One bin left: (0, 1, 1), no test.
    """
    total = ref_counts + cur_counts
    filled = total > 0
    ref_counts, cur_counts, total = ref_counts[filled], cur_counts[filled], total[filled]
    m, n = int(ref_counts.sum()), int(cur_counts.sum())
    need = min_expected * (m + n) / max(min(m, n), 1)
    order = np.argsort(total, kind="stable")
    merged = int(np.searchsorted(total[order], need, side="left"))  # the ones too small
    if merged:
        reach = int(np.searchsorted(np.cumsum(total[order]), need, side="left")) + 1
        merged = min(max(merged, reach), total.size)
    bucket, alone = order[:merged], order[merged:]
    ref_bins = np.r_[ref_counts[alone], ref_counts[bucket].sum()] if merged else ref_counts
    cur_bins = np.r_[cur_counts[alone], cur_counts[bucket].sum()] if merged else cur_counts
    statistic, p_value = chi2_homogeneity(ref_bins, cur_bins)
    return statistic, p_value, int(ref_bins.size)


def jensenshannon(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log, in [0, sqrt(ln 2)]) between two count vectors."""
    p = ref_counts / np.sum(ref_counts, dtype=np.float64)
    q = cur_counts / np.sum(cur_counts, dtype=np.float64)
    mid = (p + q) / 2.0
    js = np.sum(special.rel_entr(p, mid)) + np.sum(special.rel_entr(q, mid))
    return float(np.sqrt(js / 2.0))


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index sum((q - p) * ln(q / p)) over bins.

    p, q are the reference and current shares per bin; an empty bin counts as
    `epsilon` (1e-4) so the index stays finite.
    """
    p = ref_counts / np.sum(ref_counts, dtype=np.float64)
    q = cur_counts / np.sum(cur_counts, dtype=np.float64)
    p = np.where(p == 0, epsilon, p)
    q = np.where(q == 0, epsilon, q)
    return float(np.sum((q - p) * np.log(q / p)))



# -- calibrated verdicts: critical values, resampled nulls, multiple testing -------------

def ks_critical(n1: int, n2: int, alpha: float, mode: str) -> float:
    """The smallest D with KS p-value <= alpha for sample sizes n1, n2, under the 'exact'
    null (searched on the lattice of attainable D, h / lcm(n1, n2), from the asymptotic
    value: a bracket, then bisection) or the 'asymptotic' one (scipy.stats.kstwo at
    n1 n2 / (n1 + n2)). D >= it is significant."""
    n_eff = _ks_n_eff(n1, n2)
    if mode != "exact":
        return float(stats.kstwo.isf(alpha, n_eff)) if n_eff >= 1 else math.nan
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2

    def pvalue(h: int) -> float:
        ok, prob = _exact_two_sided(n1, n2, g, h)
        if not ok:
            raise FloatingPointError
        return prob

    # Start from the Kolmogorov limit with Stephens' small-sample correction, take two
    # Newton steps on log p (d log p / dD ~ -4 n_eff D), then bracket and bisect.
    root = math.sqrt(max(n_eff, 1.0))
    d = float(special.kolmogi(alpha)) / (root + 0.12 + 0.11 / root)
    try:
        guess = min(max(math.ceil(d * lcm), 1), lcm)
        for _ in range(2):
            prob = pvalue(guess)
            if not 0 < prob < 1:
                break
            d = guess / lcm
            move = (math.log(prob) - math.log(alpha)) / (4 * n_eff * d)
            guess = min(max(math.ceil((d + move) * lcm), 1), lcm)
        step = max(1, guess // 4096)
        if pvalue(guess) <= alpha:  # bracket: low not significant, high significant
            high, low = guess, max(guess - step, 0)
            while low > 0 and pvalue(low) <= alpha:
                high, step = low, step * 2
                low = max(high - step, 0)
        else:
            low, high = guess, min(guess + step, lcm)
            while high < lcm and pvalue(high) > alpha:
                low, step = high, step * 2
                high = min(low + step, lcm)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if pvalue(mid) <= alpha else (mid, high)
    except FloatingPointError:
        return ks_critical(n1, n2, alpha, "asymptotic")
    return high / lcm


def resample_counts(rng: np.random.Generator, total: int, probs: np.ndarray,
                    rows: int) -> np.ndarray:
    """`rows` multinomial(total, probs) count vectors (rows x K, int64). For totals small
    against K, drawing the values and counting them is cheaper than K binomials a row."""
    k = probs.size
    if total < k // 4:
        edges = np.cumsum(probs)
        edges /= edges[-1]
        picks = np.searchsorted(edges, rng.random((rows, total)), side="right")
        np.minimum(picks, k - 1, out=picks)
        picks += (np.arange(rows) * k)[:, None]
        return np.bincount(picks.ravel(), minlength=rows * k).reshape(rows, k)
    return rng.multinomial(total, probs / probs.sum(), size=rows)


def split_counts(rng: np.random.Generator, ref_counts: np.ndarray, cur_counts: np.ndarray,
                 rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` random splits of the pooled counts into a reference of m and a batch of n
    rows, as a permutation of the pooled rows would give (multivariate hypergeometric):
    the conditional null of any two-sample statistic, exact whatever the population."""
    total = ref_counts + cur_counts
    m, n = int(ref_counts.sum()), int(cur_counts.sum())
    size = min(m, n)
    # numpy's two algorithms, chosen by cost: ~0.1 us a drawn row plus a pass over all
    # pooled rows ('count') against ~0.35 us a category ('marginals').
    if size < 3.5 * total.size and m + n <= 2_000_000:
        drawn = rng.multivariate_hypergeometric(total, size, size=rows, method="count")
    else:
        drawn = rng.multivariate_hypergeometric(total, size, size=rows, method="marginals")
    rest = total - drawn
    return (drawn, rest) if size == m else (rest, drawn)


def bridge_batch(rng: np.random.Generator, shares: np.ndarray, rows: int,
                 values: np.ndarray | None = None) -> np.ndarray:
    """The large-sample limit of sqrt(n m / (n + m)) times KS D (`values` None) or
    Wasserstein-1 (on the sorted support `values`) between two samples of a discrete
    distribution with these shares: max |B(F_k)| or sum |B(F_k)| (v_k+1 - v_k), B a
    Brownian bridge at the cumulative shares F_k. Free of n and m: one set of draws
    serves every batch size."""
    # float32: half the cost; a quantile of B draws needs nothing like 7 digits.
    steps = rng.standard_normal((rows, shares.size), dtype=np.float32)
    steps *= np.sqrt(shares).astype(np.float32)
    walk = np.cumsum(steps, axis=1)
    cumulative = np.cumsum(shares).astype(np.float32)
    bridge = np.abs(walk - cumulative * walk[:, -1:])[:, :-1]
    if values is None:
        return bridge.max(axis=1, initial=0.0).astype(np.float64)
    return bridge.astype(np.float64) @ np.diff(values)


def ks_batch(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """KS D per row of two (B x K) count tables on the same sorted support."""
    m, n = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    gap = np.abs(np.cumsum(ref, axis=1) * n - np.cumsum(cur, axis=1) * m).max(axis=1)
    return gap / (m[:, 0] * n[:, 0])


def wasserstein_batch(ref: np.ndarray, cur: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Wasserstein-1 per row of two (B x K) count tables on the sorted support `values`."""
    m, n = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    gap = np.abs(np.cumsum(ref, axis=1)[:, :-1] / m - np.cumsum(cur, axis=1)[:, :-1] / n)
    return gap @ np.diff(values)


def chi2_batch(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """`chi2_homogeneity`'s statistic per row of two (B x K) count tables: empty columns
    dropped, Yates' correction where a row has exactly two non-empty columns."""
    ref, cur = ref.astype(np.float64), cur.astype(np.float64)
    m, n = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    total = ref + cur
    filled = total > 0
    gap = np.abs(ref * n - cur * m)  # every cell is gap / N away from its expectation
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(filled, gap**2 / (m * n * total), 0.0)
    statistic = terms.sum(axis=1)
    two = np.flatnonzero(filled.sum(axis=1) == 2)
    if two.size:  # 2 x 2 tables: Yates moves each cell 0.5 (at most) towards expected
        first = filled[two].argmax(axis=1)
        size = (m + n)[two, 0]
        pooled = total[two, first]
        deviation = np.maximum(gap[two, first] / size - 0.5, 0.0)
        statistic[two] = deviation**2 * size**2 / (m[two, 0] * n[two, 0]) * (
            1 / pooled + 1 / (size - pooled))
    return statistic


def jensenshannon_batch(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """`jensenshannon` per row of two (B x K) count tables."""
    p = ref / ref.sum(axis=1, keepdims=True)
    q = cur / cur.sum(axis=1, keepdims=True)
    mid = (p + q) / 2.0
    js = special.rel_entr(p, mid).sum(axis=1) + special.rel_entr(q, mid).sum(axis=1)
    return np.sqrt(np.maximum(js / 2.0, 0.0))


def psi_batch(ref: np.ndarray, cur: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """`psi` per row of two (B x K) count tables."""
    p = ref / ref.sum(axis=1, keepdims=True)
    q = cur / cur.sum(axis=1, keepdims=True)
    p = np.where(p == 0, epsilon, p)
    q = np.where(q == 0, epsilon, q)
    return np.sum((q - p) * np.log(q / p), axis=1)


# Statistics computed by two code paths (one value vs a batch) may differ in the last
# bits; a null draw this close to the observed value counts as equal (as large).
_TIE_TOLERANCE = 1e-9


def resampled_pvalue(null_sorted: np.ndarray, statistic: float) -> float:
    """(1 + #{null >= statistic}) / (B + 1): a Monte Carlo p-value (never 0)."""
    if not math.isfinite(statistic):
        return math.nan
    below = np.searchsorted(null_sorted, statistic - _TIE_TOLERANCE * max(abs(statistic), 1.0),
                            side="left")
    return float((1 + null_sorted.size - below) / (null_sorted.size + 1))


def resampled_critical(null_sorted: np.ndarray, alpha: float) -> float:
    """The statistic value that must be exceeded for `resampled_pvalue` <= alpha
    (inf when B is too small for alpha: 1 / (B + 1) > alpha)."""
    allowed = math.floor(alpha * (null_sorted.size + 1) + 1e-9) - 1  # null draws >= stat
    if allowed < 0:
        return math.inf
    return float(null_sorted[null_sorted.size - allowed - 1])


def missing_rate_pvalue(ref_missing: int, ref_rows: int, cur_missing: int,
                        cur_rows: int) -> float:
    """Two-sided Fisher exact test that two missing rates are equal (NaN when neither
    sample has a missing value: nothing to test)."""
    total = ref_missing + cur_missing
    if total == 0:
        return math.nan
    rows = ref_rows + cur_rows
    # Hypergeometric: cur_missing of the `total` missing rows fall in the batch. Same
    # two-sided rule as scipy.stats.fisher_exact (outcomes no likelier than the one seen,
    # with its relative tolerance 1e-7), on the log scale over the whole support.
    support = np.arange(max(0, total - ref_rows), min(total, cur_rows) + 1)
    log_pmf = (_log_choose(total, support) + _log_choose(rows - total, cur_rows - support)
               - _log_choose(rows, cur_rows))
    seen = log_pmf[cur_missing - support[0]]
    pvalue = np.exp(log_pmf[log_pmf <= seen + math.log1p(1e-7)]).sum()
    return float(min(1.0, pvalue))


def _log_choose(n: int | np.ndarray, k: int | np.ndarray) -> np.ndarray:
    return special.gammaln(np.add(n, 1)) - special.gammaln(np.add(k, 1)) - special.gammaln(
        np.subtract(n, k) + 1)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (valid under any dependence): a hypothesis is
    rejected at family-wise level alpha when its adjusted p-value <= alpha."""
    p = np.asarray(pvalues, dtype=np.float64)
    k = p.size
    if k == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (k - np.arange(k)) * p[order])
    adjusted = np.empty(k)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def bonferroni(pvalues: np.ndarray) -> np.ndarray:
    """Bonferroni adjusted p-values: min(1, K p)."""
    p = np.asarray(pvalues, dtype=np.float64)
    return np.minimum(1.0, p.size * p)
