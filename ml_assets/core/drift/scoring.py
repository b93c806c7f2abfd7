"""Data and prediction drift of a current batch against a stored reference profile.

The pure core of monitoring (numpy/scipy/pandas, no Dagster):

    profile = build_reference_profile(train_frame, kinds)         # once, at training time
    blob = profile.to_bytes()                                     # or json.dumps(to_dict())
    report = score_drift(ReferenceProfile.from_bytes(blob), batch, DriftConfig())
    report.features        # one row per feature: test, statistic, p_value, effect, drifted
    report.dataset_drifted # Holm over the features at dataset_alpha, shifts >= effect size

Calibrated verdicts (the default): each feature is tested against the null distribution
of its statistic at the batch's size n and the reference's size m, so a feature
drifts on a no-drift day with probability at most `alpha` (0.01) whatever n and m;
numeric -> two-sample KS (exact or asymptotic null; resampled from the stored
distribution when it has ties), categorical and boolean -> chi-squared homogeneity
(asymptotic null when every expected count is >= 5, else resampled). A significant
shift only counts when it is also larger than a practical effect size (normed
Wasserstein >= 0.1 std; Jensen-Shannon >= 0.05). The dataset drifts when Holm's
procedure over the features rejects at `dataset_alpha` (0.02). `pool_windows` /
`score_window` pool quiet days with the preceding ones until `min_rows` rows.
Missing values (NaN, None, +/-inf) are left out of the tests and compared as a missing
rate (Fisher's exact test). `calibration="fixed"` restores the former fixed thresholds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from ml_assets.core.drift.profile import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
    bin_counts_sorted,
    bin_counts_weighted,
    build_reference_profile,
    category_counts,
    finite_sorted,
    numeric_values,
    quantile_edges,
)
from ml_assets.core.drift.stats import (
    KS_METHODS,
    bonferroni,
    bridge_batch,
    chi2_batch,
    chi2_homogeneity,
    chi2_merged,
    holm,
    jensenshannon,
    jensenshannon_batch,
    ks_batch,
    ks_critical,
    ks_numerator,
    ks_pvalue,
    ks_pvalue_mode,
    missing_rate_pvalue,
    psi,
    psi_batch,
    resample_counts,
    resampled_critical,
    resampled_pvalue,
    split_counts,
    wasserstein,
    wasserstein_batch,
)
from ml_assets.core.modeling.tasks import is_regression_model

__all__ = [
    "DEFAULT_EFFECT_THRESHOLDS",
    "DEFAULT_MIN_ROWS",
    "DEFAULT_THRESHOLDS",
    "DriftConfig",
    "DriftReport",
    "NullCache",
    "ReferenceProfile",
    "Window",
    "build_reference_profile",
    "model_outputs",
    "pool_windows",
    "prediction_columns",
    "score_drift",
    "score_window",
]

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
# Resampled KS / Wasserstein nulls of a stored distribution: drawn at (n, m) below this
# n m / (n + m), from the size-free Brownian-bridge limit above it (checked by the A/A).
BRIDGE_MIN_N_EFF = 1000
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
        seed: their seed. discrete_max_support: a numeric reference with ties and at most
        this many distinct values gets a resampled KS null (default 500).
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


# -- the null cache ----------------------------------------------------------------------

class NullCache:
    """Resampled null distributions (sorted draws) by (column fingerprint, test, n, ...):
    scoring the next batch of the same size against the same profile reuses them. The
    fingerprint is a hash of the stored column, so a profile loaded again (from_bytes)
    hits the same entries. Least recently used entries beyond `max_entries` are dropped."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = compute()
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


NULL_CACHE = NullCache()
_KS_CRITICAL: dict[tuple[int, int, float, str], float] = {}  # continuous KS: shared by columns


def _ks_critical_cached(n1: int, n2: int, level: float, mode: str) -> float:
    """The KS critical value; exact only where that is cheap (n1 n2 <= 1e6: a bisection of
    about 20 exact p-values), else asymptotic (within ~1 % of the exact one there)."""
    if n1 * n2 > KS_EXACT_MAX_PRODUCT:
        mode = "asymptotic"
    key = (n1, n2, level, mode)
    if key not in _KS_CRITICAL:
        if len(_KS_CRITICAL) > 65_536:
            _KS_CRITICAL.clear()
        _KS_CRITICAL[key] = ks_critical(n1, n2, level, mode)
    return _KS_CRITICAL[key]


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"|")
    return digest.hexdigest()


# -- the report ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DriftReport:
    """Per-feature and dataset-level drift of one batch.

    features / predictions: one row per column (REPORT_COLUMNS). Row status is 'ok',
    'empty' (no rows in the batch: no verdict), 'insufficient' (window below min_rows: no
    verdict), 'absent' (column missing from the batch), 'all missing' (no usable value)
    or 'reference all missing'; the last three are judged on the missing rate alone.

    share_drifted / drifted_features: per-feature verdicts (each at `alpha`).
    dataset_drifted: calibrated mode: the dataset test (`dataset_rule` at
    `dataset_alpha`): some feature's Holm-adjusted p_drift <= dataset_alpha, i.e. a
    significant shift at least the effect size; its p-value is `dataset_p_value`, its
    features `dataset_drifted_features`. Fixed mode: share_drifted >= share_threshold.
    prediction_drifted: the same test over the prediction columns.
    status: 'ok' | 'empty' | 'insufficient'; pooled_days / window_days / note say which
    days a pooled window (`score_window`) covers.
    """

    features: pd.DataFrame
    predictions: pd.DataFrame
    share_drifted: float  # drifted / judged features (NaN when none could be judged)
    share_threshold: float
    drifted_features: list[str]
    dataset_drifted: bool
    prediction_drifted: bool
    n_rows: int
    status: str  # 'ok' | 'empty' | 'insufficient'
    calibration: str = "calibrated"
    alpha: float = math.nan
    dataset_alpha: float = math.nan
    dataset_rule: str = "holm"
    dataset_threshold: float = math.nan  # Holm's first level: dataset_alpha / judged
    dataset_p_value: float = math.nan
    dataset_drifted_features: list[str] = field(default_factory=list)
    prediction_p_value: float = math.nan
    prediction_drifted_columns: list[str] = field(default_factory=list)
    pooled_days: int = 0
    window_days: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN as None), e.g. for asset metadata."""
        return {
            "status": self.status, "n_rows": self.n_rows, "note": self.note,
            "pooled_days": self.pooled_days, "window_days": list(self.window_days),
            "calibration": self.calibration,
            "dataset_drifted": self.dataset_drifted,
            "dataset_rule": self.dataset_rule,
            "dataset_alpha": _json_float(self.dataset_alpha),
            "dataset_threshold": _json_float(self.dataset_threshold),
            "dataset_p_value": _json_float(self.dataset_p_value),
            "dataset_drifted_features": list(self.dataset_drifted_features),
            "alpha": _json_float(self.alpha),
            "share_drifted": _json_float(self.share_drifted),
            "share_threshold": self.share_threshold,
            "drifted_features": list(self.drifted_features),
            "prediction_drifted": self.prediction_drifted,
            "prediction_p_value": _json_float(self.prediction_p_value),
            "prediction_drifted_columns": list(self.prediction_drifted_columns),
            "features": _records(self.features),
            "predictions": _records(self.predictions),
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    return [{k: _json_cell(v.item() if isinstance(v, np.generic) else v)
             for k, v in row.items()} for row in records]


def _json_cell(value: Any) -> Any:
    """NaN was dropped above; an infinite threshold (no attainable critical value) too."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


# -- scoring -------------------------------------------------------------------------------

def score_drift(profile: ReferenceProfile, current: pd.DataFrame,
                config: DriftConfig | None = None,
                prediction_rows: pd.DataFrame | None = None, *,
                cache: NullCache | None = None) -> DriftReport:
    """Score a current batch against the reference profile. `prediction_rows`: the rows
    whose model outputs are judged (default: all of `current`), e.g. only the champion's
    answers while a canary answers a share of the traffic with another model. `cache`:
    where resampled nulls are kept (default: the module's `NULL_CACHE`).

    The verdicts are valid at any batch size; `score_window` adds the min_rows rule.
    Never raises on bad data (empty batch, missing columns, NaN/inf, unseen categories):
    those are reported per column. Raises ValueError for a config that names columns
    the profile does not have or a test that does not fit a column's kind.
    """
    config = config or DriftConfig()
    cache = NULL_CACHE if cache is None else cache
    _check_overrides(profile, config)
    n_rows = len(current)
    judged_outputs = current if prediction_rows is None else prediction_rows
    families = {role: _score_family(group, frame, config, profile.psi_bins, cache)
                for role, group, frame in (("feature", profile.features, current),
                                           ("prediction", profile.predictions,
                                            judged_outputs))}
    return _report(families["feature"], families["prediction"], config, n_rows,
                   "ok" if n_rows else "empty")


def _score_family(group: Mapping[str, ColumnProfile], frame: pd.DataFrame,
                  config: DriftConfig, profile_bins: int,
                  cache: NullCache) -> list[dict[str, Any]]:
    if not config.calibrated:
        return [_score_column_fixed(name, column, frame, config, profile_bins)
                for name, column in group.items()]
    draws = config.draws_for(len(group))
    rows = [_score_column(name, column, frame, config, profile_bins, draws, cache)
            for name, column in group.items()]
    judged = [row for row in rows if row["status"] != "empty"]
    if judged:
        adjust = holm if config.dataset_rule == "holm" else bonferroni
        adjusted = adjust(np.array([row["p_drift"] for row in judged], dtype=np.float64))
        for row, value in zip(judged, adjusted.tolist(), strict=True):
            row["p_adjusted"] = value
            row["dataset_drifted"] = value <= config.dataset_alpha
    return rows


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    # One object block, then one dtype inference per column: 4x faster than from dicts.
    cells = np.empty((len(rows), len(REPORT_COLUMNS)), dtype=object)
    for i, row in enumerate(rows):
        cells[i] = [row.get(column, math.nan) for column in REPORT_COLUMNS]
    return pd.DataFrame(cells, columns=REPORT_COLUMNS).infer_objects()


def _report(features: list[dict[str, Any]], predictions: list[dict[str, Any]],
            config: DriftConfig, n_rows: int, status: str, **extra: Any) -> DriftReport:
    judged = [row for row in features if row["status"] not in ("empty", "insufficient")]
    drifted = [row["feature"] for row in features if row["drifted"]]
    share = len(drifted) / len(judged) if judged else math.nan
    common = dict(features=_table(features), predictions=_table(predictions),
                  share_drifted=share, share_threshold=config.share_threshold,
                  drifted_features=drifted, n_rows=n_rows, status=status,
                  calibration=config.calibration, **extra)
    if not config.calibrated:
        return DriftReport(
            dataset_drifted=bool(share >= config.share_threshold),
            prediction_drifted=any(bool(row["drifted"]) for row in predictions),
            dataset_rule="share", **common)
    dataset_p, dataset_cols = _family_verdict(features)
    prediction_p, prediction_cols = _family_verdict(predictions)
    return DriftReport(
        dataset_drifted=bool(dataset_p <= config.dataset_alpha),
        prediction_drifted=bool(prediction_p <= config.dataset_alpha),
        alpha=config.alpha, dataset_alpha=config.dataset_alpha,
        dataset_rule=config.dataset_rule,
        dataset_threshold=config.dataset_alpha / len(judged) if judged else math.nan,
        dataset_p_value=dataset_p, dataset_drifted_features=dataset_cols,
        prediction_p_value=prediction_p, prediction_drifted_columns=prediction_cols,
        **common)


def _family_verdict(rows: list[dict[str, Any]]) -> tuple[float, list[str]]:
    """(smallest adjusted p_drift, columns counted in the dataset verdict)."""
    adjusted = [row["p_adjusted"] for row in rows if math.isfinite(row["p_adjusted"])]
    if not adjusted:
        return math.nan, []
    return min(adjusted), [row["feature"] for row in rows if row["dataset_drifted"]]


def _check_overrides(profile: ReferenceProfile, config: DriftConfig) -> None:
    kinds = {name: column.kind for _, name, column in profile.columns()}
    unknown = sorted((set(config.tests) | set(config.thresholds)) - set(kinds))
    _require(not unknown, f"config overrides unknown column(s) {unknown}")
    for name, test in config.tests.items():
        allowed = NUMERIC_TESTS if kinds[name] == "numeric" else CATEGORICAL_TESTS
        _require(test in allowed,
                 f"test {test!r} does not fit {kinds[name]} column {name!r}; use {allowed}")


# -- one column, calibrated ----------------------------------------------------------------

def _score_column(name: str, ref: ColumnProfile, current: pd.DataFrame, config: DriftConfig,
                  profile_bins: int, draws: int, cache: NullCache) -> dict[str, Any]:
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
        "dataset_drifted": False,
    }
    n_rows = len(current)
    if n_rows == 0:
        row["status"] = "empty"
        return row
    values: Any = None
    if name not in current.columns:
        row["status"] = "absent"
    elif isinstance(ref, NumericProfile):
        values = finite_sorted(numeric_values(current[name]))
        row["n_cur"] = values.size
    else:
        values = category_counts(current[name])
        row["n_cur"] = int(values[1].sum())
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
            row.update(_numeric_value_test(ref, values, test, config, profile_bins, level,
                                           draws, cache))
        else:
            assert isinstance(ref, CategoricalProfile)
            labels, counts = values
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
    # p_drift: the feature's p-value for "drifted by a material amount"; a shift below
    # its effect size counts as p = 1 (only raises p-values: Holm stays valid).
    finite = [p for p in candidates if math.isfinite(p)]
    row["p_drift"] = min(1.0, aspects * min(finite)) if finite else 1.0
    row["drifted"] = bool(row["p_drift"] <= config.alpha)
    return row


def _numeric_value_test(ref: NumericProfile, cur_sorted: np.ndarray, test: str,
                        config: DriftConfig, profile_bins: int, level: float, draws: int,
                        cache: NullCache) -> dict[str, Any]:
    n, m = cur_sorted.size, ref.n_valid
    norm = max(ref.std, WASSERSTEIN_MIN_NORM)
    w1 = wasserstein(ref.values, ref.counts, cur_sorted) / norm
    out: dict[str, Any] = {"exact": ref.exact, "effect_size": w1}
    if test == "ks":
        numerator = ks_numerator(ref.values, ref.counts, cur_sorted)
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
    statistic = psi(ref_counts, bin_counts_sorted(edges, cur_sorted))
    null = _resampled(cache, ("psi", n, draws, config.seed, _fingerprint(ref_counts)),
                      lambda rng: _counts_null(rng, ref_counts / ref_counts.sum(), m, n,
                                               draws, psi_batch))
    return {"exact": exact, "statistic": statistic, "effect_size": statistic,
            **_from_draws(null, statistic, level)}


def _discrete(ref: NumericProfile, config: DriftConfig) -> bool:
    """Ties in an exactly stored reference with few distinct values: the KS null of
    continuous data would be conservative, so it is resampled from the stored values."""
    return bool(ref.exact and ref.values.size < ref.n_valid
                and ref.values.size <= config.discrete_max_support)


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


# -- resampled nulls ------------------------------------------------------------------------

def _resampled(cache: NullCache, key: tuple,
               draw: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
    """Sorted null draws for `key`, from the cache or drawn with a seed made of the key."""
    def compute() -> np.ndarray:
        digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return np.sort(draw(rng))
    return cache.get(key, compute)


def _blocks(draws: int, width: int) -> Iterable[int]:
    rows = max(1, _RESAMPLE_BLOCK // max(width, 1))
    for start in range(0, draws, rows):
        yield min(rows, draws - start)


def _counts_null(rng: np.random.Generator, population: np.ndarray, m: int, n: int,
                 draws: int, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray]
                 ) -> np.ndarray:
    """The statistic between a reference of m and a batch of n rows, both drawn from
    `population` (category or bin shares): its null at (n, m), B times."""
    return np.concatenate([statistic(resample_counts(rng, m, population, rows),
                                     resample_counts(rng, n, population, rows))
                           for rows in _blocks(draws, population.size)])


def _support_test(ref: NumericProfile, statistic: float, n: int, test: str, norm: float,
                  level: float, draws: int, config: DriftConfig,
                  cache: NullCache) -> dict[str, Any]:
    """KS D or normed Wasserstein-1 against its null from the stored distribution: the
    Brownian-bridge limit (drawn once per column, scaled by sqrt(n_eff)) when
    n_eff = n m / (n + m) >= BRIDGE_MIN_N_EFF, else both samples drawn at (n, m)."""
    m = ref.n_valid
    n_eff = n * m / (n + m)
    fingerprint = _fingerprint(ref.values, ref.counts, norm)
    if n_eff < BRIDGE_MIN_N_EFF:
        null = _resampled(cache, (test, n, draws, config.seed, fingerprint),
                          lambda rng: _support_null(rng, ref.values, ref.counts, n, draws,
                                                    test) / norm)
        return _from_draws(null, statistic, level)
    limit = _resampled(cache, (test, "bridge", draws, config.seed, fingerprint),
                       lambda rng: _bridge_null(rng, ref.values, ref.counts, draws,
                                                test) / norm)
    scale = math.sqrt(n_eff)
    result = _from_draws(limit, statistic * scale, level, "Brownian-bridge limit")
    result["threshold"] /= scale
    return result


def _bridge_null(rng: np.random.Generator, values: np.ndarray, counts: np.ndarray,
                 draws: int, test: str) -> np.ndarray:
    shares = counts / counts.sum()
    support = None if test == "ks" else values
    return np.concatenate([bridge_batch(rng, shares, rows, support)
                           for rows in _blocks(draws, values.size)])


def _support_null(rng: np.random.Generator, values: np.ndarray, counts: np.ndarray, n: int,
                  draws: int, test: str) -> np.ndarray:
    """KS D or Wasserstein-1 between a reference of m and a batch of n values, both drawn
    from the stored distribution (values with multiplicities), B times."""
    shares = counts / counts.sum()
    m = int(counts.sum())
    out = []
    for rows in _blocks(draws, values.size):
        ref, cur = resample_counts(rng, m, shares, rows), resample_counts(rng, n, shares, rows)
        out.append(ks_batch(ref, cur) if test == "ks" else wasserstein_batch(ref, cur, values))
    return np.concatenate(out)


def _from_draws(null: np.ndarray, statistic: float, level: float,
                how: str = "") -> dict[str, Any]:
    return {"p_value": resampled_pvalue(null, statistic),
            "threshold": resampled_critical(null, level),
            "null": f"resampled ({null.size} draws{', ' + how if how else ''})"}


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


# -- quiet days: pooling ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Window:
    """What one day is judged on: the day itself, or the day pooled with the days just
    before it (`days`, oldest first, ending with `day`). status: 'ok' (the day alone has
    min_rows rows), 'pooled' (it needed `pooled_days` preceding days), 'insufficient'
    (still fewer than min_rows rows within max_days days: no verdict) or 'empty' (the
    day has no rows: nothing new to judge)."""

    day: Any
    frame: pd.DataFrame
    days: tuple[Any, ...]
    n_rows: int
    status: str
    min_rows: int

    @property
    def pooled_days(self) -> int:
        return len(self.days) - 1

    @property
    def note(self) -> str:
        if self.status == "empty":
            return f"no rows on {self.day}: no verdict"
        if self.status == "insufficient":
            return (f"not enough data yet: {self.n_rows} rows over {len(self.days)} day(s) "
                    f"(< {self.min_rows}): no verdict")
        if self.status == "pooled":
            earlier = ", ".join(str(d) for d in self.days[:-1])
            return f"pooled with {self.pooled_days} preceding day(s) ({earlier})"
        return ""


def pool_windows(days: Sequence[tuple[Any, pd.DataFrame]], min_rows: int = DEFAULT_MIN_ROWS,
                 max_days: int = DEFAULT_MAX_POOLED_DAYS) -> list[Window]:
    """One window per day (days in time order, as (label, frame) pairs).

    The rule: a day with at least `min_rows` rows is judged alone. A smaller day (but not
    an empty one) is pooled with the days just before it, most recent first, until the
    window holds `min_rows` rows, using at most `max_days` days in all (the day
    included); if even that falls short, the window is 'insufficient' (no verdict yet).
    A pooled window's verdict speaks for the whole window, not the day alone."""
    _require(min_rows >= 1 and max_days >= 1, "min_rows and max_days must be >= 1")
    windows = []
    for position, (day, frame) in enumerate(days):
        if len(frame) == 0:
            windows.append(Window(day, frame, (day,), 0, "empty", min_rows))
            continue
        first, total = position, len(frame)
        while total < min_rows and first > 0 and position - first + 1 < max_days:
            first -= 1
            total += len(days[first][1])
        chosen = days[first:position + 1]
        pooled = (frame if len(chosen) == 1 else
                  pd.concat([f for _, f in chosen if len(f)], ignore_index=True))
        status = ("insufficient" if total < min_rows else
                  "ok" if len(chosen) == 1 else "pooled")
        windows.append(Window(day, pooled, tuple(d for d, _ in chosen), total, status,
                              min_rows))
    return windows


def score_window(profile: ReferenceProfile, window: Window,
                 config: DriftConfig | None = None,
                 prediction_rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None, *,
                 cache: NullCache | None = None) -> DriftReport:
    """`score_drift` on a window of `pool_windows`: status 'insufficient' (no verdict,
    per-column rows say so) below min_rows, 'empty' for an empty day; otherwise the
    report of the (pooled) frame, saying which days it covers. `prediction_rows` picks
    the rows whose outputs are judged from the window's frame."""
    config = config or DriftConfig()
    extra: dict[str, Any] = {"pooled_days": window.pooled_days, "note": window.note,
                             "window_days": [str(d) for d in window.days]}
    if window.status in ("insufficient", "empty"):
        frame = window.frame.iloc[:0]
        report = score_drift(profile, frame, config, cache=cache)
        tables = {}
        for name, table in (("features", report.features),
                            ("predictions", report.predictions)):
            table = table.copy()
            table["status"] = window.status
            tables[name] = table
        return dataclasses.replace(report, **tables, status=window.status,
                                   n_rows=window.n_rows, **extra)
    rows = prediction_rows(window.frame) if prediction_rows is not None else None
    report = score_drift(profile, window.frame, config, rows, cache=cache)
    return dataclasses.replace(report, **extra)


def prediction_columns(predicted: Any = None, probabilities: Any = None,
                       classes: Iterable[Any] | None = None,
                       index: pd.Index | None = None, *,
                       regression: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Model outputs as drift columns: 'prediction' (the predicted class, categorical;
    with `regression`, the predicted value, numeric) and 'proba_<class>' per
    probability column (numeric). Returns (frame, prediction_kinds) to join onto the
    feature frame before profiling or scoring."""
    frame: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    if predicted is not None:
        if regression:
            frame["prediction"] = np.asarray(predicted, dtype=np.float64).reshape(-1)
            kinds["prediction"] = "numeric"
        else:
            frame["prediction"] = np.asarray(predicted)
            kinds["prediction"] = "categorical"
    if probabilities is not None:
        proba = np.asarray(probabilities, dtype=np.float64)
        proba = proba[:, None] if proba.ndim == 1 else proba
        names = list(classes) if classes is not None else list(range(proba.shape[1]))
        _require(len(names) == proba.shape[1], "one class name per probability column")
        for position, label in enumerate(names):
            frame[f"proba_{label}"] = proba[:, position]
            kinds[f"proba_{label}"] = "numeric"
    return pd.DataFrame(frame, index=index), kinds


def model_outputs(pipeline, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """What the model answers for `rows`, as drift columns: a classifier's predicted
    class (categorical) and class probabilities (numeric), or a regressor's predicted
    value (numeric 'prediction')."""
    if is_regression_model(pipeline):
        return prediction_columns(pipeline.predict(rows), index=rows.index, regression=True)
    proba = pipeline.predict_proba(rows)
    return prediction_columns(pipeline.classes_[proba.argmax(axis=1)].astype(str), proba,
                              [str(c) for c in pipeline.classes_], index=rows.index)
