"""Drift statistics: every statistic against scipy (to 1e-9), the profile round trip,
edge cases (NaN/inf, empty, constant, unseen categories), verdicts and overrides."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from ml_assets.core.drift import stats as drift_stats
from ml_assets.core.drift.config import REPORT_COLUMNS, DriftConfig
from ml_assets.core.drift.profile import ReferenceProfile, build_reference_profile
from ml_assets.core.drift.scoring import prediction_columns, score_drift

TOL = 1e-9


def _numeric_frame(values) -> pd.DataFrame:
    return pd.DataFrame({"x": np.asarray(values, dtype=np.float64)})


def _score_one(reference, current, kind="numeric", **config) -> pd.Series:
    """Profile one column 'x' (exactly: no sketch), score a batch, return its report row."""
    ref = reference if isinstance(reference, pd.DataFrame) else pd.DataFrame({"x": reference})
    cur = current if isinstance(current, pd.DataFrame) else pd.DataFrame({"x": current})
    profile = build_reference_profile(ref, {"x": kind}, sketch_size=100_000)
    report = score_drift(profile, cur, DriftConfig(**config))
    return report.features.iloc[0]


def _scipy_ks(a, b, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's exact -> asymp notice
        return stats.ks_2samp(a, b, method=method)


# -- Kolmogorov-Smirnov ----------------------------------------------------------------

KS_CASES = [  # n_ref, n_cur, shift, decimals (rounding makes ties)
    (20, 20, 0.0, None),        # exact, equal sizes
    (20, 20, 1.5, None),
    (200, 150, 0.3, None),      # exact, different sizes
    (999, 1000, 0.1, None),
    (1000, 1000, 0.0, 1),       # heavy ties
    (300, 7, 0.0, 0),
    (10_000, 10_000, 0.03, None),  # largest exact 'auto', equal sizes
    (10_000, 9_999, 0.03, None),   # largest exact 'auto', different sizes
    (12_000, 400, 0.1, None),      # asymptotic under 'auto'
    (40_000, 30_000, 0.02, 2),     # asymptotic, ties
    (1, 1, 0.0, None),
    (1, 50, 0.0, None),            # single reference value
    (50, 1, 2.0, None),            # single current row
]


@pytest.mark.parametrize("method", ["auto", "exact", "asymp"])
@pytest.mark.parametrize(("n_ref", "n_cur", "shift", "decimals"), KS_CASES)
def test_ks_matches_scipy(n_ref, n_cur, shift, decimals, method):
    rng = np.random.default_rng(n_ref * 7 + n_cur)
    a, b = rng.normal(size=n_ref), rng.normal(shift, size=n_cur)
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    row = _score_one(a, b, tests={"x": "ks"}, ks_method=method, calibration="fixed")
    expected = _scipy_ks(a, b, method)
    assert row["test"] == "ks" and row["exact"]
    assert abs(row["statistic"] - expected.statistic) <= TOL
    if np.isnan(expected.pvalue):  # scipy: one value per sample, asymptotic
        assert np.isnan(row["p_value"])
    else:
        assert abs(row["p_value"] - expected.pvalue) <= TOL


def test_ks_exact_falls_back_to_asymp_like_scipy():
    """method='exact' with lcm(n1, n2) beyond int32 switches to asymp in scipy too."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=60_000), rng.normal(0.01, size=59_999)
    row = _score_one(a, b, tests={"x": "ks"}, ks_method="exact", calibration="fixed")
    expected = _scipy_ks(a, b, "exact")
    assert abs(row["statistic"] - expected.statistic) <= TOL
    assert abs(row["p_value"] - expected.pvalue) <= TOL


@pytest.mark.parametrize("n", [200, 20_000])
@pytest.mark.parametrize("nd2", [0.5, 2.0, 5.0, 12.0, 14.0, 14.5, 30.0, 400.0])
def test_kstwo_tail_matches_scipy(n, nd2):
    """The Kolmogorov-limit shortcut (n D^2 >= 14.2) stays within 1e-12 of kstwo.sf."""
    d = math.sqrt(nd2 / n)
    assert abs(drift_stats._kstwo_sf(d, float(n)) - stats.kstwo.sf(d, n)) <= 1e-12


@pytest.mark.parametrize(("m", "n", "h"), [(7, 5, 20), (100, 37, 1500), (300, 200, 150)])
def test_python_port_of_scipy_exact_kernel(m, n, h):
    g = math.gcd(m, n)
    assert drift_stats._outer_prob_inside_python(m, n, g, h) == pytest.approx(
        drift_stats._outer_prob_inside(m, n, g, h), abs=1e-12)


# -- Wasserstein -------------------------------------------------------------------------

@pytest.mark.parametrize(("n_ref", "n_cur", "shift", "decimals"), [
    (5_000, 5_000, 0.0, None), (3_000, 1_200, 0.4, None), (2_000, 9_000, 0.1, 1),
    (1_500, 1, 0.0, None), (1_500, 3, 5.0, 0),
])
def test_wasserstein_matches_scipy(n_ref, n_cur, shift, decimals):
    rng = np.random.default_rng(n_ref + n_cur)
    a, b = rng.normal(2.0, 3.0, size=n_ref), rng.normal(2.0 + shift, 3.0, size=n_cur)
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    row = _score_one(a, b, calibration="fixed")  # fixed mode, large reference: normed W1
    assert row["test"] == "wasserstein" and row["exact"]
    expected = stats.wasserstein_distance(a, b) / max(np.std(a), 0.001)
    assert abs(row["statistic"] - expected) <= TOL


@pytest.mark.parametrize(("k", "m"), [(10, 37), (100, 5_000), (1_000, 3), (7, 7), (50, 1)])
def test_weighted_wasserstein_and_ks_match_scipy(k, m):
    """The counted form a quantile sketch uses (values with multiplicities)."""
    rng = np.random.default_rng(k + m)
    values = np.sort(rng.normal(size=k))
    counts = rng.integers(1, 40, size=k)
    b = rng.normal(size=m)
    assert drift_stats.wasserstein(values, counts, np.sort(b)) == pytest.approx(
        stats.wasserstein_distance(values, b, u_weights=counts), abs=TOL)
    expanded = np.repeat(values, counts)
    numerator = drift_stats.ks_numerator(values, counts, np.sort(b))
    assert numerator / (counts.sum() * m) == pytest.approx(
        stats.ks_2samp(expanded, b).statistic, abs=TOL)


def test_sketched_profile_is_close_to_exact():
    """Beyond sketch_size distinct values the profile keeps block means: Wasserstein is
    within the stored sketch_error, KS within one block's share of the exact value."""
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(size=40_000), rng.lognormal(0.05, size=30_000)
    profile = build_reference_profile(_numeric_frame(a), {"x": "numeric"}, sketch_size=500)
    column = profile.features["x"]
    assert not column.exact and column.values.size == 500 and column.counts.sum() == 40_000
    report = score_drift(profile, _numeric_frame(b))
    row = report.features.iloc[0]
    norm = max(np.std(a), 0.001)
    assert not row["exact"]
    assert abs(row["statistic"] - stats.wasserstein_distance(a, b) / norm) <= (
        column.sketch_error / norm + 1e-12)
    ks_row = score_drift(profile, _numeric_frame(b), DriftConfig(tests={"x": "ks"}))
    assert abs(ks_row.features.iloc[0]["statistic"] - stats.ks_2samp(a, b).statistic) <= (
        column.counts.max() / 40_000)


# -- categorical: chi-squared, Jensen-Shannon, PSI -------------------------------------

def _aligned_counts(ref, cur):
    labels = sorted(set(ref) | set(cur))
    ref_counts = pd.Series(ref).value_counts().reindex(labels, fill_value=0).to_numpy()
    cur_counts = pd.Series(cur).value_counts().reindex(labels, fill_value=0).to_numpy()
    return ref_counts, cur_counts


@pytest.mark.parametrize(("ref_p", "cur_p", "n_cur"), [
    ([0.5, 0.3, 0.2, 0.0], [0.4, 0.3, 0.2, 0.1], 300),  # 'd' unseen in the reference
    ([0.6, 0.4, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0], 50),   # two categories: Yates' correction
    ([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], 1),    # single current row
])
def test_chi2_matches_scipy(ref_p, cur_p, n_cur):
    rng = np.random.default_rng(n_cur)
    ref = rng.choice(list("abcd"), size=800, p=ref_p)
    cur = rng.choice(list("abcd"), size=n_cur, p=cur_p)
    row = _score_one(ref, cur, kind="categorical", calibration="fixed")
    assert row["test"] == "chi2"
    table = np.vstack(_aligned_counts(ref, cur))
    expected = stats.chi2_contingency(table[:, table.sum(axis=0) > 0])
    assert abs(row["statistic"] - expected.statistic) <= TOL
    assert abs(row["p_value"] - expected.pvalue) <= TOL
    assert row["unseen_rate"] == pytest.approx(np.isin(cur, np.unique(ref), invert=True).mean())


def test_chi2_single_category_is_no_drift():
    row = _score_one(["a"] * 30, ["a"] * 5, kind="categorical")
    assert (row["statistic"], row["p_value"], row["drifted"]) == (0.0, 1.0, False)


def test_jensenshannon_matches_scipy_with_unseen_categories():
    rng = np.random.default_rng(11)
    ref = rng.choice(list("abc"), size=5_000, p=[0.5, 0.3, 0.2])
    cur = rng.choice(list("abcz"), size=2_000, p=[0.3, 0.3, 0.2, 0.2])
    row = _score_one(ref, cur, kind="categorical", calibration="fixed")
    assert row["test"] == "jensenshannon"
    ref_counts, cur_counts = _aligned_counts(ref, cur)
    assert abs(row["statistic"] - distance.jensenshannon(ref_counts, cur_counts)) <= TOL
    assert row["drifted"] and row["unseen_rate"] == pytest.approx((cur == "z").mean())


def _psi_reference(ref: np.ndarray, cur: np.ndarray, bins: int, eps: float = 1e-4) -> float:
    """Straightforward PSI: reference quantile cut points, bins (-inf, c1], ..., (ck, inf)."""
    cuts = sorted(set(np.quantile(ref, [i / bins for i in range(1, bins)]).tolist()))

    def shares(sample):
        counts = [0] * (len(cuts) + 1)
        for value in sample:
            counts[sum(value > c for c in cuts)] += 1
        return [max(c / len(sample), 0) or eps for c in counts]

    return sum((q - p) * math.log(q / p) for p, q in zip(shares(ref), shares(cur), strict=True))


@pytest.mark.parametrize("bins", [10, 4])  # 4 != the profile's 10: edges rebuilt from it
@pytest.mark.parametrize(("shift", "decimals"), [(0.0, None), (0.7, None), (0.3, 0)])
def test_psi_matches_reference_implementation(bins, shift, decimals):
    rng = np.random.default_rng(int(shift * 10) + bins)
    a, b = rng.normal(size=2_000), rng.normal(shift, size=700)
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    row = _score_one(a, b, tests={"x": "psi"}, psi_bins=bins)
    assert row["exact"]
    assert row["statistic"] == pytest.approx(_psi_reference(a, b, bins), abs=TOL)


def test_categorical_psi_matches_formula():
    ref = np.array(list("aaabbc"))
    cur = np.array(list("abccdd"))
    row = _score_one(ref, cur, kind="categorical", tests={"x": "psi"})
    p = np.array([3, 2, 1, 0]) / 6
    q = np.array([1, 1, 2, 2]) / 6
    p[p == 0] = 1e-4
    assert row["statistic"] == pytest.approx(float(np.sum((q - p) * np.log(q / p))), abs=TOL)


# -- edge cases ----------------------------------------------------------------------------

def test_nan_and_inf_are_missing_and_excluded():
    rng = np.random.default_rng(2)
    a = rng.normal(size=400)
    a[:40] = np.nan
    b = rng.normal(size=300)
    b[:30], b[30:60] = np.inf, -np.inf
    b[60:90] = np.nan
    row = _score_one(a, b)
    assert row["missing_rate_ref"] == pytest.approx(0.1)
    assert row["missing_rate_cur"] == pytest.approx(0.3)
    assert row["missing_drifted"] and row["drifted"]
    assert (row["n_ref"], row["n_cur"]) == (360, 210)
    expected = stats.ks_2samp(a[np.isfinite(a)], b[np.isfinite(b)])
    assert abs(row["p_value"] - expected.pvalue) <= TOL
    assert not _score_one(a, b, missing_rate_threshold=None)["drifted"]


def test_all_missing_current_column():
    row = _score_one(np.arange(100.0), [np.nan] * 10)
    assert row["status"] == "all missing" and row["n_cur"] == 0
    assert np.isnan(row["statistic"]) and row["missing_rate_cur"] == 1.0
    assert row["drifted"]  # missing rate went from 0 to 1


def test_reference_all_missing():
    row = _score_one([np.nan] * 20, [1.0, 2.0])
    assert row["status"] == "reference all missing" and row["drifted"]


def test_empty_batch_gives_empty_report_not_an_error():
    ref = pd.DataFrame({"x": np.arange(50.0), "c": list("ab") * 25})
    profile = build_reference_profile(ref, {"x": "numeric", "c": "categorical"})
    report = score_drift(profile, ref.iloc[:0])
    assert report.status == "empty" and report.n_rows == 0
    assert set(report.features["status"]) == {"empty"}
    assert not report.dataset_drifted and math.isnan(report.share_drifted)
    assert report.drifted_features == []
    json.dumps(report.to_dict())


def test_absent_column_counts_as_all_missing():
    ref = pd.DataFrame({"x": np.arange(50.0), "y": np.arange(50.0)})
    profile = build_reference_profile(ref, {"x": "numeric", "y": "numeric"})
    report = score_drift(profile, ref[["x"]])
    absent = report.features.set_index("feature").loc["y"]
    assert absent["status"] == "absent" and absent["drifted"]
    assert report.drifted_features == ["y"] and report.share_drifted == 0.5


def test_constant_columns():
    same = _score_one(np.full(2_000, 3.0), np.full(500, 3.0))
    assert same["statistic"] == 0.0 and not same["drifted"]
    moved = _score_one(np.full(2_000, 3.0), np.full(500, 3.1))
    assert moved["effect_size"] == pytest.approx(0.1 / 0.001) and moved["drifted"]
    small = _score_one(np.full(50, 3.0), np.full(40, 3.0))
    assert small["p_value"] == 1.0 and not small["drifted"]


def test_non_numeric_values_in_numeric_column_are_missing():
    cur = pd.DataFrame({"x": pd.Series([1.0, "oops", None, 2.5], dtype=object)})
    row = _score_one(np.linspace(0, 3, 100), cur)
    assert row["n_cur"] == 2 and row["missing_rate_cur"] == 0.5


def test_integer_codes_still_match_after_becoming_float():
    ref = pd.DataFrame({"x": np.tile([1, 2, 3], 100)})
    cur = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan] * 20})  # NaN made the column float
    row = _score_one(ref, cur, kind="categorical")
    assert row["unseen_rate"] == 0.0 and row["p_value"] > 0.5


def test_boolean_columns_are_categorical():
    ref = pd.DataFrame({"flag": np.tile([True, False, False], 400)})
    profile = build_reference_profile(ref, {"flag": "boolean"})
    assert profile.features["flag"].categories == ("False", "True")
    cur = pd.DataFrame({"flag": pd.array([True] * 300 + [None] * 10, dtype="boolean")})
    row = score_drift(profile, cur).features.iloc[0]
    assert row["test"] == "chi2" and row["drifted"]
    assert row["n_cur"] == 300


# -- profile -------------------------------------------------------------------------------

def _mixed_frames(seed: int = 0, n_ref: int = 3_000, n_cur: int = 800):
    rng = np.random.default_rng(seed)

    def frame(n, shift):
        x = rng.normal(shift, size=n)
        x[rng.random(n) < 0.05] = np.nan
        return pd.DataFrame({
            "x": x, "ints": rng.integers(0, 5, size=n),
            "wide": rng.lognormal(size=n),
            "c": rng.choice(list("abc"), size=n, p=[0.6, 0.3, 0.1]),
            "flag": rng.random(n) < 0.3,
        })

    kinds = {"x": "numeric", "ints": "numeric", "wide": "numeric",
             "c": "categorical", "flag": "boolean"}
    return frame(n_ref, 0.0), frame(n_cur, 0.5), kinds


def test_profile_round_trip_gives_identical_results():
    ref, cur, kinds = _mixed_frames()
    profile = build_reference_profile(ref, kinds, sketch_size=1_000)
    text = json.dumps(profile.to_dict(), allow_nan=False)
    copies = [ReferenceProfile.from_dict(json.loads(text)),
              ReferenceProfile.from_bytes(profile.to_bytes())]
    config = DriftConfig(tests={"x": "ks", "wide": "psi"})
    expected = score_drift(profile, cur, config).features
    for copy in copies:
        assert copy.to_dict() == profile.to_dict()
        pd.testing.assert_frame_equal(score_drift(copy, cur, config).features, expected)
    assert len(profile.to_bytes()) < len(text)


def test_profile_is_compact_and_reference_free():
    ref, _, kinds = _mixed_frames(n_ref=50_000)
    profile = build_reference_profile(ref, kinds, sketch_size=1_000)
    assert profile.features["ints"].exact and profile.features["ints"].values.size == 5
    assert profile.features["wide"].values.size == 1_000
    assert len(profile.to_bytes()) < 60_000  # vs 50,000 rows x 5 columns


def test_profile_rejects_bad_input():
    frame = pd.DataFrame({"x": [1.0]})
    with pytest.raises(ValueError, match="unknown column kinds"):
        build_reference_profile(frame, {"x": "text"})
    with pytest.raises(ValueError, match="no column"):
        build_reference_profile(frame, {"y": "numeric"})
    with pytest.raises(ValueError, match="not a"):
        ReferenceProfile.from_dict({"format": "something else"})


# -- verdicts and overrides ------------------------------------------------------------------

@pytest.mark.parametrize("n", [500, 5_000])  # KS / chi2 and Wasserstein / JS defaults
def test_no_drift_on_same_distribution_and_shift_detected(n):
    ref, _, kinds = _mixed_frames(seed=1, n_ref=n, n_cur=n)
    same, _, _ = _mixed_frames(seed=2, n_ref=n, n_cur=n)
    profile = build_reference_profile(ref, kinds)
    calm = score_drift(profile, same)
    assert calm.drifted_features == [] and not calm.dataset_drifted
    shifted = same.assign(x=same["x"] + 0.5 * ref["x"].std(),
                          wide=same["wide"] + 0.5 * ref["wide"].std())
    report = score_drift(profile, shifted)
    assert report.drifted_features == ["x", "wide"]
    assert report.share_drifted == pytest.approx(0.4) and report.dataset_drifted
    fixed = DriftConfig(calibration="fixed")
    assert not score_drift(profile, shifted, fixed).dataset_drifted
    assert score_drift(profile, shifted, DriftConfig(share_threshold=0.4,
                                                     calibration="fixed")).dataset_drifted


def test_tests_chosen_by_kind_and_reference_size():
    ref, cur, kinds = _mixed_frames(n_ref=1_500)
    fixed = DriftConfig(calibration="fixed")
    tests = score_drift(build_reference_profile(ref, kinds), cur, fixed).features.set_index(
        "feature")["test"].to_dict()
    assert tests == {"x": "wasserstein", "ints": "wasserstein", "wide": "wasserstein",
                     "c": "jensenshannon", "flag": "jensenshannon"}
    profile = build_reference_profile(ref, kinds)
    small = score_drift(profile, cur, DriftConfig(small_reference_max=2_000,
                                                  calibration="fixed")).features
    assert small.set_index("feature")["test"].to_dict() == {
        "x": "ks", "ints": "ks", "wide": "ks", "c": "chi2", "flag": "chi2"}
    forced = score_drift(profile, cur, DriftConfig(numeric_test="psi", categorical_test="chi2"))
    assert set(forced.features["test"]) == {"psi", "chi2"}


def test_per_column_overrides():
    ref, cur, kinds = _mixed_frames()
    profile = build_reference_profile(ref, kinds)
    config = DriftConfig(tests={"x": "ks", "c": "psi"}, thresholds={"x": 1e-10, "c": 5.0},
                         test_thresholds={"wasserstein": 10.0}, calibration="fixed")
    table = score_drift(profile, cur, config).features.set_index("feature")
    assert table.loc["x", "test"] == "ks" and table.loc["x", "threshold"] == 1e-10
    assert table.loc["c", "test"] == "psi" and not table.loc["c", "drifted"]
    assert table.loc["wide", "threshold"] == 10.0 and not table.loc["wide", "drifted"]
    assert table.loc["x", "p_value"] < 1e-10 and table.loc["x", "drifted"]
    strict = DriftConfig(tests={"x": "ks"}, thresholds={"x": 1e-300}, calibration="fixed")
    assert not score_drift(profile, cur, strict).features.set_index("feature").loc[
        "x", "drifted"]


@pytest.mark.parametrize(("config", "message"), [
    (DriftConfig(tests={"nope": "ks"}), "unknown column"),
    (DriftConfig(tests={"c": "ks"}), "does not fit"),
    (DriftConfig(thresholds={"nope": 0.1}), "unknown column"),
])
def test_invalid_overrides_are_named(config, message):
    ref, cur, kinds = _mixed_frames(n_ref=100, n_cur=10)
    with pytest.raises(ValueError, match=message):
        score_drift(build_reference_profile(ref, kinds), cur, config)


@pytest.mark.parametrize("kwargs", [
    {"share_threshold": 0}, {"numeric_test": "chi2"}, {"tests": {"x": "t-test"}},
    {"psi_bins": 1}, {"ks_method": "fast"}, {"thresholds": {"x": -1.0}},
])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        DriftConfig(**kwargs)


def test_prediction_drift_is_reported_apart_from_features():
    rng = np.random.default_rng(4)
    features = pd.DataFrame({"x": rng.normal(size=2_000)})
    proba = rng.beta(2, 5, size=2_000)
    preds, prediction_kinds = prediction_columns(
        np.where(proba > 0.5, "yes", "no"), np.c_[1 - proba, proba], classes=["no", "yes"])
    assert prediction_kinds == {"prediction": "categorical", "proba_no": "numeric",
                                "proba_yes": "numeric"}
    reference = features.join(preds)
    profile = build_reference_profile(reference, {"x": "numeric"}, prediction_kinds)
    shifted_proba = rng.beta(5, 2, size=2_000)
    current = features.join(prediction_columns(
        np.where(shifted_proba > 0.5, "yes", "no"), np.c_[1 - shifted_proba, shifted_proba],
        classes=["no", "yes"])[0])
    report = score_drift(profile, current)
    assert not report.dataset_drifted and report.drifted_features == []
    assert report.prediction_drifted
    assert report.predictions["feature"].tolist() == ["prediction", "proba_no", "proba_yes"]
    assert report.predictions["drifted"].all()
    assert not score_drift(profile, reference).prediction_drifted


def test_report_shape_and_json():
    ref, cur, kinds = _mixed_frames()
    report = score_drift(build_reference_profile(ref, kinds), cur)
    assert report.features.columns.tolist() == REPORT_COLUMNS
    assert report.predictions.columns.tolist() == REPORT_COLUMNS and report.predictions.empty
    summary = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert summary["drifted_features"] == report.drifted_features
    assert len(summary["features"]) == len(kinds)


def test_kinds_from_the_feature_stage_are_accepted():
    from ml_assets.core.data.preprocessing import feature_kinds

    ref, cur, _ = _mixed_frames(n_ref=200, n_cur=50)
    kinds = feature_kinds(ref.assign(target=0), target="target")
    report = score_drift(build_reference_profile(ref, kinds), cur)
    assert report.features["kind"].tolist() == [
        "numeric", "numeric", "numeric", "categorical", "boolean"]


def test_only_the_champions_answers_are_judged_for_prediction_drift():
    """While a canary answers half the traffic with another model, its outputs are not
    the champion's reference distribution: features drift on every row, predictions on
    the champion's rows (`prediction_rows`)."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x": rng.normal(size=2000), "prediction": rng.normal(size=2000)})
    profile = build_reference_profile(reference, {"x": "numeric"}, {"prediction": "numeric"})
    champion = pd.DataFrame({"x": rng.normal(size=300), "prediction": rng.normal(size=300),
                             "variant": "champion"})
    canary = pd.DataFrame({"x": rng.normal(size=300), "prediction": rng.normal(3, 1, 300),
                           "variant": "canary"})
    day = pd.concat([champion, canary], ignore_index=True)
    assert score_drift(profile, day).prediction_drifted  # mixing models looks like drift
    judged = score_drift(profile, day, prediction_rows=day[day["variant"] == "champion"])
    assert not judged.prediction_drifted and not judged.dataset_drifted
