"""Drift of a window judged from its merged sketch (ml_assets/core/drift/sketch.py), with
the calibrated verdicts `score_drift` gives on the window's rows: the same tests, nulls,
effect sizes, Holm family and report, the statistics read from the sketch instead of
the rows. KS, PSI, chi-squared, Jensen-Shannon and missing rates are exact; the
Wasserstein-1 effect size is the midpoint of exact bounds, its half-width reported per
column as `effect_error` (0 when exact), so a verdict can differ from the single-pass
one only when the effect threshold lies within that error of the effect size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ml_assets.core.drift.columns import (
    _categorical_value_test,
    _discrete,
    _psi_bins,
)
from ml_assets.core.drift.config import (
    EFFECT_OF_TEST,
    KS_EXACT_MAX_PRODUCT,
    WASSERSTEIN_MIN_NORM,
    DriftConfig,
)
from ml_assets.core.drift.nulls import (
    NULL_CACHE,
    NullCache,
    _counts_null,
    _fingerprint,
    _from_draws,
    _ks_critical_cached,
    _resampled,
    _support_test,
)
from ml_assets.core.drift.profile import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
)
from ml_assets.core.drift.scoring import DriftReport, _check_overrides, _report
from ml_assets.core.drift.sketch import (
    CategoricalSketch,
    ColumnEntry,
    DriftSketch,
    NumericSketch,
)
from ml_assets.core.drift.stats import (
    bonferroni,
    holm,
    ks_pvalue_mode,
    missing_rate_pvalue,
    psi,
    psi_batch,
)


def _cumulative(sketch: NumericSketch) -> tuple[np.ndarray, np.ndarray]:
    """(#values <= g_j, #values < g_j) per grid point."""
    at_or_below = np.cumsum(sketch.between[:-1]) + np.cumsum(sketch.at)
    return at_or_below, at_or_below - sketch.at


def _grid_index(sketch: NumericSketch, points: np.ndarray) -> np.ndarray:
    index = np.searchsorted(sketch.grid, points)
    if points.size and (np.any(index >= sketch.grid.size)
                        or np.any(sketch.grid[np.minimum(index, sketch.grid.size - 1)]
                                  != points)):
        raise ValueError("the sketch's grid lacks points of the profile (a sketch built "
                         "against another profile, or without these PSI bins)")
    return index


def ks_numerator_sketch(ref: NumericProfile, sketch: NumericSketch) -> int:
    """`stats.ks_numerator` of the reference and the sketched values, exactly."""
    n_ref, m = int(ref.counts.sum()), sketch.n_valid
    at_or_below, below = _cumulative(sketch)
    index = _grid_index(sketch, ref.values)
    upto = np.cumsum(ref.counts, dtype=np.int64)
    at_start = np.abs(upto * m - at_or_below[index] * n_ref).max()
    before = np.abs(np.r_[0, upto[:-1]] * m - below[index] * n_ref).max()
    return int(max(at_start, before))


def bin_counts_sketch(edges: np.ndarray, sketch: NumericSketch) -> np.ndarray:
    """`profile.bin_counts_sorted` of the sketched values on bins (-inf, e1], ..."""
    at_or_below, _ = _cumulative(sketch)
    upto = at_or_below[_grid_index(sketch, edges)]
    return np.diff(upto, prepend=0, append=sketch.n_valid).astype(np.int64)


def wasserstein_sketch(ref: NumericProfile, sketch: NumericSketch) -> tuple[float, float]:
    """(W1 estimate, its largest error) between the reference and the sketched values:
    the integral of |F_ref - F_cur| interval by interval. Exact below and above the grid,
    on empty intervals and where F_cur stays on one side of F_ref inside an interval; an
    interval where it crosses contributes between |signed integral| and a bound from its
    values' spread, and counts as their midpoint."""
    grid, n = sketch.grid, sketch.n_valid
    n_ref = int(ref.counts.sum())
    k = grid.size
    between, distance = sketch.between, sketch.distance
    total = (distance[0] + distance[k]) / n
    if k < 2:
        return float(total), 0.0
    ref_upto = np.r_[0, np.cumsum(ref.counts)][np.searchsorted(ref.values, grid,
                                                                side="right")]
    at_or_below, _ = _cumulative(sketch)
    j = np.arange(1, k)  # interior intervals (g_{j-1}, g_j)
    width = grid[j] - grid[j - 1]
    r_int, l_int, count = ref_upto[j - 1], at_or_below[j - 1], between[j]
    c, p = r_int / n_ref, l_int / n
    empty = count == 0
    gap = np.where(empty, width * np.abs(p - c), 0.0)
    low = np.where(empty, grid[j - 1], sketch.low[j])
    high = np.where(empty, grid[j - 1], sketch.high[j])
    spread = high - low
    left = (low - grid[j - 1]) * np.abs(p - c)
    right = (grid[j] - high) * np.abs(p + count / n - c)
    # signed integral of F_cur - c over [low, high]: F_cur = p + i/n after the i-th value
    signed = (p - c) * spread + (count * (high - grid[j - 1]) - distance[j]) / n
    # integers decide the side: c <= p + 1/n, c >= p + (count-1)/n
    above = r_int * n <= (l_int + 1) * n_ref
    below = r_int * n >= (l_int + count - 1) * n_ref
    lower = np.abs(signed)
    upper = np.minimum(signed + 2 * (c - p - 1 / n) * spread,
                       -signed + 2 * (p + (count - 1) / n - c) * spread)
    crossing = ~empty & ~above & ~below
    middle = np.where(above, signed, np.where(below, -signed, (lower + upper) / 2))
    middle = np.where(empty, 0.0, middle)
    error = np.where(crossing, (upper - lower) / 2, 0.0)
    total += float((gap + np.where(empty, 0.0, left + right + middle)).sum())
    return float(total), float(error.sum())


def _numeric_value_test(name: str, ref: NumericProfile, sketch: NumericSketch, test: str,
                        config: DriftConfig, profile_bins: int, level: float, draws: int,
                        cache: NullCache) -> dict[str, Any]:
    """`columns._numeric_value_test` with the sample's statistics read from the sketch."""
    n, m = sketch.n_valid, ref.n_valid
    norm = max(ref.std, WASSERSTEIN_MIN_NORM)
    w1, error = wasserstein_sketch(ref, sketch)
    w1, error = w1 / norm, error / norm
    out: dict[str, Any] = {"exact": ref.exact, "effect_size": w1, "effect_error": error}
    if test == "ks":
        numerator = ks_numerator_sketch(ref, sketch)
        if _discrete(ref, config):
            d = numerator / (m * n)
            return {**out, "statistic": d, **_support_test(ref, d, n, "ks", 1.0, level,
                                                           draws, config, cache)}
        method = config.ks_method
        if method == "auto":
            method = "exact" if n * m <= KS_EXACT_MAX_PRODUCT else "asymp"
        d, p, source = ks_pvalue_mode(numerator, m, n, method)
        return {**out, "statistic": d, "p_value": p, "null": source,
                "threshold": _ks_critical_cached(m, n, level, source)}
    if test == "wasserstein":
        return {**out, "statistic": w1, **_support_test(ref, w1, n, "wasserstein", norm,
                                                        level, draws, config, cache)}
    edges, ref_counts, exact = _psi_bins(ref, config.psi_bins, profile_bins)
    statistic = psi(ref_counts, bin_counts_sketch(edges, sketch))
    null = _resampled(cache, ("psi", n, draws, config.seed, _fingerprint(ref_counts)),
                      lambda rng: _counts_null(rng, ref_counts / ref_counts.sum(), m, n,
                                               draws, psi_batch))
    return {"exact": exact, "statistic": statistic, "effect_size": statistic,
            "effect_error": 0.0, **_from_draws(null, statistic, level)}


def _score_column(name: str, ref: ColumnProfile, entry: ColumnEntry, n_rows: int,
                  config: DriftConfig, profile_bins: int, draws: int,
                  cache: NullCache) -> dict[str, Any]:
    """`columns._score_column` on a sketched column (same fields, plus effect_error)."""
    test = config.test_for(name, ref.kind, ref.n_valid)
    measure = EFFECT_OF_TEST[test]
    row: dict[str, Any] = {
        "feature": name, "kind": ref.kind, "test": test, "statistic": math.nan,
        "p_value": math.nan, "threshold": math.nan, "drifted": False,
        "missing_rate_ref": ref.missing_rate, "missing_rate_cur": math.nan,
        "missing_drifted": False, "unseen_rate": math.nan, "n_ref": ref.n_valid,
        "n_cur": 0, "exact": True, "status": "ok", "null": None, "alpha": config.alpha,
        "significant": False, "effect_measure": measure, "effect_size": math.nan,
        "effect_threshold": config.effect_threshold_for(name, measure), "material": False,
        "p_missing": math.nan, "p_drift": math.nan, "p_adjusted": math.nan,
        "dataset_drifted": False, "effect_error": 0.0,
    }
    if n_rows == 0:
        row["status"] = "empty"
        return row
    if not entry.present:
        row["status"] = "absent"
    else:
        row["n_cur"] = entry.sketch.n_valid
    n_cur = row["n_cur"]
    row["missing_rate_cur"] = 1 - n_cur / n_rows
    if row["status"] == "ok" and n_cur == 0:
        row["status"] = "all missing"
    elif row["status"] == "ok" and ref.n_valid == 0:
        row["status"] = "reference all missing"
    value_tested = row["status"] == "ok"
    if config.missing_rate_threshold is not None:
        row["p_missing"] = missing_rate_pvalue(ref.n_rows - ref.n_valid, ref.n_rows,
                                               n_rows - n_cur, n_rows)
    missing_tested = math.isfinite(row["p_missing"])
    aspects = int(value_tested) + int(missing_tested)
    if aspects == 0:
        row["p_drift"] = 1.0
        return row
    level = config.alpha / aspects
    if value_tested:
        if isinstance(ref, NumericProfile):
            assert isinstance(entry.sketch, NumericSketch)
            row.update(_numeric_value_test(name, ref, entry.sketch, test, config,
                                           profile_bins, level, draws, cache))
        else:
            assert isinstance(ref, CategoricalProfile)
            assert isinstance(entry.sketch, CategoricalSketch)
            labels, counts = entry.sketch.labelled()
            row.update(_categorical_value_test(ref, labels, counts, test, config, level,
                                               draws))
        row["significant"] = bool(aspects * row["p_value"] <= config.alpha)
        row["material"] = bool(row["effect_size"] >= row["effect_threshold"])
    candidates = []
    if value_tested and row["material"]:
        candidates.append(row["p_value"])
    if missing_tested:
        moved = abs(row["missing_rate_cur"] - row["missing_rate_ref"])
        assert config.missing_rate_threshold is not None
        if moved > config.missing_rate_threshold:
            candidates.append(row["p_missing"])
            row["missing_drifted"] = bool(aspects * row["p_missing"] <= config.alpha)
    finite = [p for p in candidates if math.isfinite(p)]
    row["p_drift"] = min(1.0, aspects * min(finite)) if finite else 1.0
    row["drifted"] = bool(row["p_drift"] <= config.alpha)
    return row


def _score_family(group: Mapping[str, ColumnProfile], entries: Mapping[str, ColumnEntry],
                  n_rows: int, config: DriftConfig, profile_bins: int,
                  cache: NullCache) -> list[dict[str, Any]]:
    draws = config.draws_for(len(group))
    rows = [_score_column(name, column, entries[name], n_rows, config, profile_bins,
                          draws, cache) for name, column in group.items()]
    judged = [row for row in rows if row["status"] != "empty"]
    if judged:
        adjust = holm if config.dataset_rule == "holm" else bonferroni
        adjusted = adjust(np.array([row["p_drift"] for row in judged], dtype=np.float64))
        for row, value in zip(judged, adjusted.tolist(), strict=True):
            row["p_adjusted"] = value
            row["dataset_drifted"] = value <= config.dataset_alpha
    return rows


def score_sketch(profile: ReferenceProfile, sketch: DriftSketch,
                 config: DriftConfig | None = None, *,
                 cache: NullCache | None = None) -> DriftReport:
    """`score_drift(profile, rows, config)` of the rows `sketch` summarises, from the
    sketch alone (calibrated verdicts only). The report's tables carry one more column,
    `effect_error`: the largest error of `effect_size` (see the module)."""
    config = config or DriftConfig()
    if not config.calibrated:
        raise ValueError("sketch scoring gives the calibrated verdicts only; "
                         "calibration='fixed' needs the rows (score_drift)")
    if set(sketch.features) != set(profile.features) or set(sketch.predictions) != set(
            profile.predictions):
        raise ValueError("the sketch was not built against this profile (its columns "
                         "differ)")
    if config.psi_bins != profile.psi_bins and config.psi_bins not in sketch.psi_bins:
        raise ValueError(f"psi_bins={config.psi_bins}: the sketch holds the profile's "
                         f"{profile.psi_bins} bins and {list(sketch.psi_bins)}; build it "
                         f"with psi_bins=({config.psi_bins},)")
    cache = NULL_CACHE if cache is None else cache
    _check_overrides(profile, config)
    features = _score_family(profile.features, sketch.features, sketch.n_rows, config,
                             profile.psi_bins, cache)
    predictions = _score_family(profile.predictions, sketch.predictions,
                                sketch.n_prediction_rows, config, profile.psi_bins, cache)
    report = _report(features, predictions, config, sketch.n_rows,
                     "ok" if sketch.n_rows else "empty")
    report.features["effect_error"] = [row["effect_error"] for row in features]
    report.predictions["effect_error"] = [row["effect_error"] for row in predictions]
    return report


def uncertain_columns(report: DriftReport) -> list[str]:
    """Columns of a sketch-scored report whose verdict could differ from the single-pass
    one: the effect size within its error of the effect threshold (the materiality
    could flip), or a Wasserstein test whose statistic itself carries the error. Empty:
    every verdict equals `score_drift`'s on the rows (KS, PSI, chi-squared,
    Jensen-Shannon and missing rates are exact)."""
    out = []
    for table in (report.features, report.predictions):
        if "effect_error" not in table.columns or not len(table):
            continue
        error = table["effect_error"].astype(float).to_numpy()
        gap = np.abs(table["effect_size"].astype(float).to_numpy()
                     - table["effect_threshold"].astype(float).to_numpy())
        tested = table["status"].to_numpy() == "ok"
        close = (error > 0) & ((gap <= error) | (table["test"].to_numpy() == "wasserstein"))
        out += table["feature"][tested & close].astype(str).tolist()
    return out
