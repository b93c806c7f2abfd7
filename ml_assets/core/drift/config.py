"""Drift settings: the tests, error rates, effect sizes and pooling rules of a verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ml_assets.core.drift.stats import (
    KS_METHODS,
)

NUMERIC_TESTS = ("ks", "wasserstein", "psi")
CATEGORICAL_TESTS = ("chi2", "jensenshannon", "psi")
P_VALUE_TESTS = ("ks", "chi2")  # fixed mode: drift when p_value < threshold
DEFAULT_THRESHOLDS: Mapping[str, float] = {  # fixed mode
    "ks": 0.05, "chi2": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1,
}
CALIBRATIONS = ("calibrated", "fixed")
DATASET_RULES = ("holm", "bonferroni")
# Calibrated mode: the practical effect size reported beside each test, and the size a
# significant shift must reach to count as drift (docs/drift.md, "Effect sizes").
EFFECT_OF_TEST: Mapping[str, str] = {
    "ks": "wasserstein", "wasserstein": "wasserstein", "psi": "psi",
    "chi2": "jensenshannon", "jensenshannon": "jensenshannon",
}
DEFAULT_EFFECT_THRESHOLDS: Mapping[str, float] = {
    "wasserstein": 0.1, "jensenshannon": 0.05, "psi": 0.1,
}
# A 0.5-std mean shift of one feature among 10 is caught by the dataset verdict
# (Holm, dataset_alpha 0.02) on >= 80 % of days from about 95 rows (82 % at 100), and
# by its own feature test (alpha 0.01) from about 75 rows (measured: docs/drift.md).
DEFAULT_MIN_ROWS = 100
DEFAULT_MAX_POOLED_DAYS = 7
DEFAULT_RESAMPLES = 2000
KS_EXACT_MAX_PRODUCT = 1_000_000  # calibrated 'auto': exact KS null when n * m <= this
CHI2_MIN_EXPECTED = 5.0  # Cochran: the chi-squared null needs expected counts >= 5
DISCRETE_MAX_SUPPORT = 500
# ...and at most this share of the stored rows distinct: with fewer ties (nearly
# continuous values) the continuous KS null is used, conservative with ties and close.
DISCRETE_MAX_SHARE = 0.5
# Resampled KS / Wasserstein nulls of a stored distribution: drawn at (n, m) below this
# n m / (n + m), from the size-free Brownian-bridge limit above it (checked by the A/A).
BRIDGE_MIN_N_EFF = 1000
# Below that, the null is drawn once per profile on a geometric grid of day sizes (8,
# then GRID_STEPS_PER_DOUBLING sizes per doubling, up to the bridge or
# GRID_MAX_REFERENCE_MULTIPLE x m, where n m / (n + m) is within 20 % of m); a day of n
# rows uses the null of the grid size at or below n: fewer rows give a larger statistic,
# so its threshold is conservative (docs/drift.md, "Cost"). Days under GRID_START rows
# get a null drawn at their size.
GRID_START = 8
GRID_STEPS_PER_DOUBLING = 4
GRID_MAX_REFERENCE_MULTIPLE = 4
WASSERSTEIN_MIN_NORM = 0.001  # a constant reference column is normed by this, not by 0
_RESAMPLE_BLOCK = 2_000_000  # cells of a (draws x support) count table built at once
REPORT_COLUMNS = [
    "feature", "kind", "test", "statistic", "p_value", "threshold", "drifted",
    "missing_rate_ref", "missing_rate_cur", "missing_drifted", "unseen_rate",
    "n_ref", "n_cur", "exact", "status",
    # calibrated mode (NaN / None in fixed mode)
    "null", "alpha", "significant", "effect_measure", "effect_size", "effect_threshold",
    "material", "p_missing", "p_drift", "p_adjusted", "dataset_drifted",
]


@dataclass(frozen=True)
class DriftConfig:
    """How a batch is scored.

    calibration: 'calibrated' (default) or 'fixed' (the former fixed thresholds, below).

    Calibrated mode:
    alpha: per-feature false-alarm rate (default 0.01): on a day drawn from the
        reference distribution a feature is declared drifted with probability <= alpha,
        at any batch size n and reference size m.
    dataset_alpha: false-alarm rate of the dataset verdict (default 0.02), by
        `dataset_rule` 'holm' (default) or 'bonferroni' over the features' p-values.
    effect_thresholds: per effect measure over DEFAULT_EFFECT_THRESHOLDS (normed
        Wasserstein 0.1, Jensen-Shannon 0.05, PSI 0.1): a significant shift smaller
        than this is not drift. `thresholds` (per column) overrides it for a column.
    numeric_test / categorical_test 'auto': KS / chi-squared.
    min_rows / max_pooled_days: the pooling rule of `pool_windows` (default 100 rows,
        at most 7 days in a window).
    resamples: least number of draws of a resampled null (default 2000; raised to
        4 K / dataset_alpha for a family of K columns so that Holm can reject, and to
        4 / alpha);
        seed: their seed. discrete_max_support: a numeric reference with ties, at most
        this many distinct values (default 500) and at most DISCRETE_MAX_SHARE (half) of
        its rows distinct gets a resampled KS null; other ties get the continuous null.
    ks_method: 'auto' (exact null when n * m <= 1e6, else asymptotic) | 'exact' | 'asymp'.
    missing_rate_threshold: a feature also drifts when its missing rate moves by more
        than this (absolute) and Fisher's exact test finds the move significant; None
        disables the check.

    Fixed mode (the former behaviour):
    small_reference_max: references with at most this many non-missing values get a
        p-value test (KS / chi-squared at p < 0.05), larger ones a distance (normed
        Wasserstein / Jensen-Shannon >= 0.1) whatever the batch size.
    tests / thresholds: per-column overrides of the test and of its threshold.
    test_thresholds: per-test overrides of DEFAULT_THRESHOLDS.
    share_threshold: the dataset drifts when the share of drifted features >= this.
    ks_method: as scipy.stats.ks_2samp. missing_rate_threshold: |change| > this drifts.

    Both: psi_bins (quantile bins for PSI; the profile's stored bins when equal).
    """

    share_threshold: float = 0.5
    small_reference_max: int = 1000
    numeric_test: str = "auto"
    categorical_test: str = "auto"
    tests: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    test_thresholds: Mapping[str, float] = field(default_factory=dict)
    psi_bins: int = 10
    ks_method: str = "auto"
    missing_rate_threshold: float | None = 0.1
    calibration: str = "calibrated"
    alpha: float = 0.01
    dataset_alpha: float = 0.02
    dataset_rule: str = "holm"
    effect_thresholds: Mapping[str, float] = field(default_factory=dict)
    min_rows: int = DEFAULT_MIN_ROWS
    max_pooled_days: int = DEFAULT_MAX_POOLED_DAYS
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    discrete_max_support: int = DISCRETE_MAX_SUPPORT

    def __post_init__(self) -> None:
        _require(0 < self.share_threshold <= 1, "share_threshold must be in (0, 1]")
        _require(self.small_reference_max >= 0, "small_reference_max must be >= 0")
        _require(self.numeric_test in ("auto", *NUMERIC_TESTS),
                 f"numeric_test must be 'auto' or one of {NUMERIC_TESTS}")
        _require(self.categorical_test in ("auto", *CATEGORICAL_TESTS),
                 f"categorical_test must be 'auto' or one of {CATEGORICAL_TESTS}")
        bad_tests = {k: v for k, v in self.tests.items() if v not in DEFAULT_THRESHOLDS}
        _require(not bad_tests, f"unknown tests {bad_tests}; known: {list(DEFAULT_THRESHOLDS)}")
        bad_keys = [k for k in self.test_thresholds if k not in DEFAULT_THRESHOLDS]
        _require(not bad_keys, f"test_thresholds for unknown tests {bad_keys}")
        bad_effects = [k for k in self.effect_thresholds if k not in DEFAULT_EFFECT_THRESHOLDS]
        _require(not bad_effects, f"effect_thresholds for unknown effect measures "
                 f"{bad_effects}; known: {list(DEFAULT_EFFECT_THRESHOLDS)}")
        values = [*self.thresholds.values(), *self.test_thresholds.values(),
                  *self.effect_thresholds.values()]
        _require(all(math.isfinite(v) and v >= 0 for v in values),
                 "thresholds must be finite and >= 0")
        _require(self.psi_bins >= 2, "psi_bins must be >= 2")
        _require(self.ks_method in KS_METHODS, f"ks_method must be one of {KS_METHODS}")
        _require(self.missing_rate_threshold is None or self.missing_rate_threshold >= 0,
                 "missing_rate_threshold must be >= 0 or None")
        _require(self.calibration in CALIBRATIONS, f"calibration must be one of {CALIBRATIONS}")
        _require(0 < self.alpha < 1, "alpha must be in (0, 1)")
        _require(0 < self.dataset_alpha < 1, "dataset_alpha must be in (0, 1)")
        _require(self.dataset_rule in DATASET_RULES,
                 f"dataset_rule must be one of {DATASET_RULES}")
        _require(self.min_rows >= 1, "min_rows must be >= 1")
        _require(self.max_pooled_days >= 1, "max_pooled_days must be >= 1")
        _require(self.resamples >= 100, "resamples must be >= 100")
        _require(self.discrete_max_support >= 0, "discrete_max_support must be >= 0")

    @property
    def calibrated(self) -> bool:
        return self.calibration == "calibrated"

    def test_for(self, name: str, kind: str, n_ref: int) -> str:
        """The test for a column: per-column override, else by kind (and, in fixed mode,
        by reference size)."""
        if name in self.tests:
            return self.tests[name]
        chosen = self.numeric_test if kind == "numeric" else self.categorical_test
        if chosen != "auto":
            return chosen
        if self.calibrated:
            return "ks" if kind == "numeric" else "chi2"
        small = n_ref <= self.small_reference_max
        if kind == "numeric":
            return "ks" if small else "wasserstein"
        return "chi2" if small else "jensenshannon"

    def threshold_for(self, name: str, test: str) -> float:
        """Fixed mode: per-column threshold, else per-test, else the default for the test."""
        if name in self.thresholds:
            return float(self.thresholds[name])
        return float(self.test_thresholds.get(test, DEFAULT_THRESHOLDS[test]))

    def effect_threshold_for(self, name: str, measure: str) -> float:
        """Calibrated mode: per-column threshold, else per effect measure, else default."""
        if name in self.thresholds:
            return float(self.thresholds[name])
        return float(self.effect_thresholds.get(measure, DEFAULT_EFFECT_THRESHOLDS[measure]))

    def draws_for(self, family_size: int) -> int:
        """Draws of a resampled null in a family of `family_size` columns: enough that
        its smallest p-value, 1 / (B + 1), is a quarter of Holm's first level (and of
        alpha)."""
        return max(self.resamples, math.ceil(4 * max(family_size, 1) / self.dataset_alpha),
                   math.ceil(4 / self.alpha))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


