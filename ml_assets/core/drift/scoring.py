"""Data and prediction drift of a current batch against a stored reference profile.

The pure core of monitoring (numpy/scipy/pandas, no Dagster):

    profile = build_reference_profile(train_frame, kinds)         # once, at training time
    blob = profile.to_bytes()                                     # or json.dumps(to_dict())
    report = score_drift(ReferenceProfile.from_bytes(blob), batch, DriftConfig())
    report.features        # one row per feature: test, statistic, p_value, drifted, ...
    report.dataset_drifted # share of drifted features >= share_threshold

Tests per column (overridable per column): numeric -> two-sample KS p-value on small
references, normed Wasserstein distance on large ones (PSI on request); categorical and
boolean -> chi-squared homogeneity p-value on small references, Jensen-Shannon distance
on large ones (PSI on request). Missing values (NaN, None, +/-inf) are left out of the
tests and compared as a missing rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

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
    chi2_homogeneity,
    jensenshannon,
    ks_numerator,
    ks_pvalue,
    psi,
    wasserstein,
)
from ml_assets.core.modeling.tasks import is_regression_model

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DriftConfig",
    "DriftReport",
    "ReferenceProfile",
    "build_reference_profile",
    "model_outputs",
    "prediction_columns",
    "score_drift",
]

NUMERIC_TESTS = ("ks", "wasserstein", "psi")
CATEGORICAL_TESTS = ("chi2", "jensenshannon", "psi")
P_VALUE_TESTS = ("ks", "chi2")  # drift when p_value < threshold; others: statistic >= threshold
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "ks": 0.05, "chi2": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1,
}
WASSERSTEIN_MIN_NORM = 0.001  # a constant reference column is normed by this, not by 0
REPORT_COLUMNS = [
    "feature", "kind", "test", "statistic", "p_value", "threshold", "drifted",
    "missing_rate_ref", "missing_rate_cur", "missing_drifted", "unseen_rate",
    "n_ref", "n_cur", "exact", "status",
]


@dataclass(frozen=True)
class DriftConfig:
    """How a batch is scored.

    small_reference_max: references with at most this many non-missing values get a
        p-value test (KS / chi-squared), larger ones an effect size (normed Wasserstein /
        Jensen-Shannon). Default 1,000: a p-value grows ever more sensitive with n
        (at n = m = 10,000 KS flags a 0.03-std shift at 5%), while at ~1,000 the KS 5%
        critical value (D ~ 0.06, a ~0.15-std shift) is close to the Wasserstein
        threshold (0.1 std), so verdicts stay consistent across the cut-off. It is also
        Evidently's default, so verdicts are comparable.
    numeric_test / categorical_test: 'auto' (the size rule above) or one test for every
        column of that kind: 'ks' | 'wasserstein' | 'psi', resp. 'chi2' |
        'jensenshannon' | 'psi'.
    tests / thresholds: per-column overrides of the test and of its threshold.
    test_thresholds: per-test overrides of DEFAULT_THRESHOLDS (p-value tests drift when
        p < threshold, distances when statistic >= threshold).
    share_threshold: the dataset drifts when the share of drifted features >= this.
    psi_bins: quantile bins for PSI (the profile's stored bins are used when equal).
    ks_method: 'auto' | 'exact' | 'asymp', as scipy.stats.ks_2samp.
    missing_rate_threshold: a feature also drifts when its missing rate moves by more
        than this (absolute); None disables the check.
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
        values = [*self.thresholds.values(), *self.test_thresholds.values()]
        _require(all(math.isfinite(v) and v >= 0 for v in values),
                 "thresholds must be finite and >= 0")
        _require(self.psi_bins >= 2, "psi_bins must be >= 2")
        _require(self.ks_method in KS_METHODS, f"ks_method must be one of {KS_METHODS}")
        _require(self.missing_rate_threshold is None or self.missing_rate_threshold >= 0,
                 "missing_rate_threshold must be >= 0 or None")

    def test_for(self, name: str, kind: str, n_ref: int) -> str:
        """The test for a column: per-column override, else by kind and reference size."""
        if name in self.tests:
            return self.tests[name]
        small = n_ref <= self.small_reference_max
        if kind == "numeric":
            return self.numeric_test if self.numeric_test != "auto" else (
                "ks" if small else "wasserstein")
        return self.categorical_test if self.categorical_test != "auto" else (
            "chi2" if small else "jensenshannon")

    def threshold_for(self, name: str, test: str) -> float:
        """Per-column threshold, else per-test, else the default for the test."""
        if name in self.thresholds:
            return float(self.thresholds[name])
        return float(self.test_thresholds.get(test, DEFAULT_THRESHOLDS[test]))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, eq=False)
class DriftReport:
    """Per-feature and dataset-level drift of one batch.

    features / predictions: one row per column (REPORT_COLUMNS). status is 'ok',
    'empty' (no rows in the batch: no verdict), 'absent' (column missing from the batch),
    'all missing' (no usable value in the batch) or 'reference all missing'; the last
    three are judged on the missing rate alone.
    """

    features: pd.DataFrame
    predictions: pd.DataFrame
    share_drifted: float  # drifted / judged features (NaN when none could be judged)
    share_threshold: float
    drifted_features: list[str]
    dataset_drifted: bool
    prediction_drifted: bool
    n_rows: int
    status: str  # 'ok' | 'empty'

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN as None), e.g. for asset metadata."""
        return {
            "status": self.status, "n_rows": self.n_rows,
            "dataset_drifted": self.dataset_drifted,
            "share_drifted": _json_float(self.share_drifted),
            "share_threshold": self.share_threshold,
            "drifted_features": list(self.drifted_features),
            "prediction_drifted": self.prediction_drifted,
            "features": _records(self.features),
            "predictions": _records(self.predictions),
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in records]


def score_drift(profile: ReferenceProfile, current: pd.DataFrame,
                config: DriftConfig | None = None,
                prediction_rows: pd.DataFrame | None = None) -> DriftReport:
    """Score a current batch against the reference profile. `prediction_rows`: the rows
    whose model outputs are judged (default: all of `current`), e.g. only the champion's
    answers while a canary answers a share of the traffic with another model.

    Never raises on bad data (empty batch, missing columns, NaN/inf, unseen categories):
    those are reported per column. Raises ValueError for a config that names columns
    the profile does not have or a test that does not fit a column's kind.
    """
    config = config or DriftConfig()
    _check_overrides(profile, config)
    n_rows = len(current)
    tables = {}
    judged_outputs = current if prediction_rows is None else prediction_rows
    for role, group, frame in (("feature", profile.features, current),
                               ("prediction", profile.predictions, judged_outputs)):
        rows = [_score_column(name, column, frame, config, profile.psi_bins)
                for name, column in group.items()]
        tables[role] = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    features = tables["feature"]
    judged = features[features["status"] != "empty"]
    drifted = features.loc[features["drifted"].astype(bool), "feature"].tolist()
    share = len(drifted) / len(judged) if len(judged) else math.nan
    return DriftReport(
        features=features, predictions=tables["prediction"], share_drifted=share,
        share_threshold=config.share_threshold, drifted_features=drifted,
        dataset_drifted=bool(share >= config.share_threshold),
        prediction_drifted=bool(tables["prediction"]["drifted"].astype(bool).any()),
        n_rows=n_rows, status="ok" if n_rows else "empty")


def _check_overrides(profile: ReferenceProfile, config: DriftConfig) -> None:
    kinds = {name: column.kind for _, name, column in profile.columns()}
    unknown = sorted((set(config.tests) | set(config.thresholds)) - set(kinds))
    _require(not unknown, f"config overrides unknown column(s) {unknown}")
    for name, test in config.tests.items():
        allowed = NUMERIC_TESTS if kinds[name] == "numeric" else CATEGORICAL_TESTS
        _require(test in allowed,
                 f"test {test!r} does not fit {kinds[name]} column {name!r}; use {allowed}")


def _score_column(name: str, ref: ColumnProfile, current: pd.DataFrame,
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
        if config.psi_bins == profile_bins:
            edges, ref_counts, exact = ref.psi_edges, ref.psi_counts, True
        else:
            edges = quantile_edges(ref.values, ref.counts, config.psi_bins)
            ref_counts, exact = bin_counts_weighted(edges, ref.values, ref.counts), ref.exact
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


def _aligned(labels: Iterable[str], counts: np.ndarray, union: list[str]) -> np.ndarray:
    lookup = dict(zip(labels, counts.tolist(), strict=True))
    return np.array([lookup.get(label, 0) for label in union], dtype=np.int64)


def _value_drifted(row: Mapping[str, Any]) -> bool:
    if row["test"] in P_VALUE_TESTS:
        return bool(row["p_value"] < row["threshold"])  # NaN -> False
    return bool(row["statistic"] >= row["threshold"])


def _missing_drifted(row: Mapping[str, Any], threshold: float | None) -> bool:
    if threshold is None:
        return False
    return bool(abs(row["missing_rate_cur"] - row["missing_rate_ref"]) > threshold)


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
