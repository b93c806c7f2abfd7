"""One feature's drift test: calibrated to the window (the default) or the former fixed
thresholds (calibration="fixed")."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import special

from ml_assets.core.drift.config import (
    CHI2_MIN_EXPECTED,
    EFFECT_OF_TEST,
    KS_EXACT_MAX_PRODUCT,
    P_VALUE_TESTS,
    WASSERSTEIN_MIN_NORM,
    DriftConfig,
)
from ml_assets.core.drift.nulls import (
    NullCache,
    _blocks,
    _counts_null,
    _fingerprint,
    _from_draws,
    _ks_critical_cached,
    _resampled,
    _support_test,
    uses_resampled_support,
)
from ml_assets.core.drift.profile import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    bin_counts_sorted,
    bin_counts_weighted,
    category_counts,
    finite_sorted,
    numeric_values,
    quantile_edges,
)
from ml_assets.core.drift.stats import (
    bonferroni,
    chi2_batch,
    chi2_homogeneity,
    chi2_merged,
    holm,
    jensenshannon,
    jensenshannon_batch,
    ks_numerator,
    ks_pvalue,
    ks_pvalue_mode,
    missing_rate_pvalue,
    psi,
    psi_batch,
    split_counts,
    wasserstein,
)

# -- one column, calibrated ----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SortedSample:
    """A numeric column's current values (finite, sorted): its statistics exactly."""

    values: np.ndarray

    @property
    def n_valid(self) -> int:
        return int(self.values.size)

    def wasserstein(self, ref: NumericProfile) -> tuple[float, float]:
        """(W1 to the reference, its largest error: 0, exact)."""
        return wasserstein(ref.values, ref.counts, self.values), 0.0

    def ks_numerator(self, ref: NumericProfile) -> int:
        return ks_numerator(ref.values, ref.counts, self.values)

    def bin_counts(self, edges: np.ndarray) -> np.ndarray:
        return bin_counts_sorted(edges, self.values)


@dataclass(frozen=True, eq=False)
class CategorySample:
    """A categorical column's current counts per label (sorted labels)."""

    labels: tuple[str, ...]
    counts: np.ndarray

    @property
    def n_valid(self) -> int:
        return int(self.counts.sum())


class NumericSample(Protocol):
    """What a numeric test reads of the current values: the rows (`SortedSample`) or
    their merged sketch (`sketch_scoring.SketchSample`)."""

    @property
    def n_valid(self) -> int: ...

    def wasserstein(self, ref: NumericProfile) -> tuple[float, float]: ...

    def ks_numerator(self, ref: NumericProfile) -> int: ...

    def bin_counts(self, edges: np.ndarray) -> np.ndarray: ...


ColumnSample = NumericSample | CategorySample


def frame_sample(ref: ColumnProfile, frame: pd.DataFrame, name: str) -> ColumnSample | None:
    """A column of `frame` as the tests read it (None: the frame lacks it)."""
    if name not in frame.columns:
        return None
    if isinstance(ref, NumericProfile):
        return SortedSample(finite_sorted(numeric_values(frame[name])))
    return CategorySample(*category_counts(frame[name]))


def score_columns(group: Mapping[str, ColumnProfile],
                  sample_of: Callable[[str, ColumnProfile], ColumnSample | None],
                  n_rows: int, config: DriftConfig, profile_bins: int,
                  cache: NullCache) -> list[dict[str, Any]]:
    """One family's calibrated rows (features, or prediction columns) over `n_rows`
    current rows, `sample_of` giving each column's values; Holm (or Bonferroni) over
    the family's p_drift gives each row's p_adjusted and dataset verdict."""
    draws = config.draws_for(len(group))
    rows = [_score_column(name, column, n_rows,
                          sample_of(name, column) if n_rows else None, config,
                          profile_bins, draws, cache)
            for name, column in group.items()]
    judged = [row for row in rows if row["status"] != "empty"]
    if judged:
        adjust = holm if config.dataset_rule == "holm" else bonferroni
        adjusted = adjust(np.array([row["p_drift"] for row in judged], dtype=np.float64))
        for row, value in zip(judged, adjusted.tolist(), strict=True):
            row["p_adjusted"] = value
            row["dataset_drifted"] = value <= config.dataset_alpha
    return rows


def _score_column(name: str, ref: ColumnProfile, n_rows: int, sample: ColumnSample | None,
                  config: DriftConfig, profile_bins: int, draws: int,
                  cache: NullCache) -> dict[str, Any]:
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
    if sample is None:
        row["status"] = "absent"
    else:
        row["n_cur"] = sample.n_valid
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
    level = config.alpha / aspects  # Bonferroni over the feature's two questions
    if value_tested:
        if isinstance(ref, NumericProfile):
            assert not isinstance(sample, CategorySample) and sample is not None
            row.update(_numeric_value_test(ref, sample, test, config, profile_bins, level,
                                           draws, cache))
        else:
            assert isinstance(ref, CategoricalProfile) and isinstance(sample, CategorySample)
            row.update(_categorical_value_test(ref, sample.labels, sample.counts, test,
                                               config, level, draws))
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
    # p_drift: the feature's p-value for "drifted by a material amount"; a shift below
    # its effect size counts as p = 1 (only raises p-values: Holm stays valid).
    finite = [p for p in candidates if math.isfinite(p)]
    row["p_drift"] = min(1.0, aspects * min(finite)) if finite else 1.0
    row["drifted"] = bool(row["p_drift"] <= config.alpha)
    return row


def _numeric_value_test(ref: NumericProfile, sample: NumericSample, test: str,
                        config: DriftConfig, profile_bins: int, level: float, draws: int,
                        cache: NullCache) -> dict[str, Any]:
    """The value test of a numeric column; `effect_error`: the largest error of the
    Wasserstein effect size (0 from the rows; a sketch's bound)."""
    n, m = sample.n_valid, ref.n_valid
    norm = max(ref.std, WASSERSTEIN_MIN_NORM)
    w1, error = sample.wasserstein(ref)
    w1, error = w1 / norm, error / norm
    out: dict[str, Any] = {"exact": ref.exact, "effect_size": w1, "effect_error": error}
    if test == "ks":
        numerator = sample.ks_numerator(ref)
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
    statistic = psi(ref_counts, sample.bin_counts(edges))
    null = _resampled(cache, ("psi", n, draws, config.seed, _fingerprint(ref_counts)),
                      lambda rng: _counts_null(rng, ref_counts / ref_counts.sum(), m, n,
                                               draws, psi_batch))
    return {"exact": exact, "statistic": statistic, "effect_size": statistic,
            "effect_error": 0.0, **_from_draws(null, statistic, level)}


def _discrete(ref: NumericProfile, config: DriftConfig) -> bool:
    """Ties in an exactly stored reference with few distinct values: the KS null of
    continuous data would be conservative, so it is resampled from the stored values."""
    return uses_resampled_support(ref, "ks", config)


def _psi_bins(ref: NumericProfile, bins: int,
              profile_bins: int) -> tuple[np.ndarray, np.ndarray, bool]:
    if bins == profile_bins:
        return ref.psi_edges, ref.psi_counts, True
    edges = quantile_edges(ref.values, ref.counts, bins)
    return edges, bin_counts_weighted(edges, ref.values, ref.counts), ref.exact


def _categorical_value_test(ref: CategoricalProfile, labels: tuple[str, ...],
                            counts: np.ndarray, test: str, config: DriftConfig,
                            level: float, draws: int) -> dict[str, Any]:
    union = sorted(set(ref.categories) | set(labels))
    ref_counts = _aligned(ref.categories, ref.counts, union)
    cur_counts = _aligned(labels, counts, union)
    n = int(cur_counts.sum())
    js = jensenshannon(ref_counts, cur_counts)
    out: dict[str, Any] = {"unseen_rate": float(cur_counts[ref_counts == 0].sum() / n),
                           "effect_size": js}
    if test == "chi2":
        statistic, p_value, bins = chi2_merged(ref_counts, cur_counts, CHI2_MIN_EXPECTED)
        if bins > 1:
            return {**out, "statistic": statistic, "p_value": p_value, "null": "asymptotic",
                    "threshold": float(special.chdtri(bins - 1, level))}
        # Too few rows for two bins of 5 expected: chi-squared of the raw table against
        # its permutation null (exact at any size).
        statistic, batch = chi2_homogeneity(ref_counts, cur_counts)[0], chi2_batch
    elif test == "jensenshannon":
        statistic, batch = js, jensenshannon_batch
    else:
        statistic, batch = psi(ref_counts, cur_counts), psi_batch
        out["effect_size"] = statistic
    digest = hashlib.blake2b(_fingerprint(test, config.seed, ref_counts, cur_counts).encode(),
                             digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    null = np.sort(np.concatenate([batch(*split_counts(rng, ref_counts, cur_counts, rows))
                                   for rows in _blocks(draws, ref_counts.size)]))
    return {**out, "statistic": statistic, **_from_draws(null, statistic, level,
                                                         "permutation")}


def _aligned(labels: Iterable[str], counts: np.ndarray, union: list[str]) -> np.ndarray:
    lookup = dict(zip(labels, counts.tolist(), strict=True))
    return np.array([lookup.get(label, 0) for label in union], dtype=np.int64)


# -- one column, fixed thresholds (calibration="fixed": the former behaviour) ---------------

def _score_column_fixed(name: str, ref: ColumnProfile, current: pd.DataFrame,
                        config: DriftConfig, profile_bins: int) -> dict[str, Any]:
    test = config.test_for(name, ref.kind, ref.n_valid)
    row: dict[str, Any] = {
        "feature": name, "kind": ref.kind, "test": test, "statistic": math.nan,
        "p_value": math.nan, "threshold": config.threshold_for(name, test),
        "drifted": False, "missing_rate_ref": ref.missing_rate, "missing_rate_cur": math.nan,
        "missing_drifted": False, "unseen_rate": math.nan, "n_ref": ref.n_valid,
        "n_cur": 0, "exact": True, "status": "ok",
    }
    if len(current) == 0:
        row["status"] = "empty"
        return row
    if name not in current.columns:
        row.update(status="absent", missing_rate_cur=1.0)
    else:
        row.update(_test_column(ref, current[name], test, config, profile_bins))
    row["missing_drifted"] = _missing_drifted(row, config.missing_rate_threshold)
    row["drifted"] = row["missing_drifted"] or _value_drifted(row)
    return row


def _test_column(ref: ColumnProfile, series: pd.Series, test: str, config: DriftConfig,
                 profile_bins: int) -> dict[str, Any]:
    """n_cur, missing rate, and (when both sides have values) the test's result."""
    if isinstance(ref, NumericProfile):
        cur_sorted = finite_sorted(numeric_values(series))
        return _tested(cur_sorted.size, len(series), ref.n_valid,
                       lambda: _numeric_test(ref, cur_sorted, test, config, profile_bins))
    labels, counts = category_counts(series)
    return _tested(int(counts.sum()), len(series), ref.n_valid,
                   lambda: _categorical_test(ref, labels, counts, test))


def _tested(n_cur: int, n_rows: int, n_ref: int,
            run_test: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"n_cur": n_cur, "missing_rate_cur": 1 - n_cur / n_rows}
    if n_cur == 0:
        result["status"] = "all missing"
    elif n_ref == 0:
        result["status"] = "reference all missing"
    else:
        result.update(run_test())
    return result


def _numeric_test(ref: NumericProfile, cur_sorted: np.ndarray, test: str,
                  config: DriftConfig, profile_bins: int) -> dict[str, Any]:
    if test == "psi":
        edges, ref_counts, exact = _psi_bins(ref, config.psi_bins, profile_bins)
        return {"statistic": psi(ref_counts, bin_counts_sorted(edges, cur_sorted)),
                "exact": exact}
    if test == "ks":
        numerator = ks_numerator(ref.values, ref.counts, cur_sorted)
        d, p = ks_pvalue(numerator, ref.n_valid, cur_sorted.size, config.ks_method)
        return {"statistic": d, "p_value": p, "exact": ref.exact}
    w1 = wasserstein(ref.values, ref.counts, cur_sorted)
    return {"statistic": w1 / max(ref.std, WASSERSTEIN_MIN_NORM), "exact": ref.exact}


def _categorical_test(ref: CategoricalProfile, labels: tuple[str, ...], counts: np.ndarray,
                      test: str) -> dict[str, Any]:
    union = sorted(set(ref.categories) | set(labels))
    ref_counts = _aligned(ref.categories, ref.counts, union)
    cur_counts = _aligned(labels, counts, union)
    unseen = cur_counts[ref_counts == 0].sum() / cur_counts.sum()
    result: dict[str, Any] = {"unseen_rate": float(unseen)}
    if test == "chi2":
        result["statistic"], result["p_value"] = chi2_homogeneity(ref_counts, cur_counts)
    elif test == "jensenshannon":
        result["statistic"] = jensenshannon(ref_counts, cur_counts)
    else:
        result["statistic"] = psi(ref_counts, cur_counts)
    return result


def _value_drifted(row: Mapping[str, Any]) -> bool:
    if row["test"] in P_VALUE_TESTS:
        return bool(row["p_value"] < row["threshold"])  # NaN -> False
    return bool(row["statistic"] >= row["threshold"])


def _missing_drifted(row: Mapping[str, Any], threshold: float | None) -> bool:
    if threshold is None:
        return False
    return bool(abs(row["missing_rate_cur"] - row["missing_rate_ref"]) > threshold)


