"""The pieces of calibrated drift: nulls, the cache, Holm, pooling. The seeded A/A and
power simulations are in ml_assets_tests/simulations/test_drift_false_alarms.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml_assets.core.drift import nulls as drift_nulls
from ml_assets.core.drift import stats as drift_stats
from ml_assets.core.drift.config import DEFAULT_MIN_ROWS, REPORT_COLUMNS, DriftConfig
from ml_assets.core.drift.nulls import NullCache, null_grid, warm_nulls
from ml_assets.core.drift.pooling import pool_windows, score_window
from ml_assets.core.drift.profile import build_reference_profile
from ml_assets.core.drift.scoring import score_drift

ALPHA, DATASET_ALPHA = 0.01, 0.02


# -- the pieces ---------------------------------------------------------------------------

def _one(reference, day, kind="numeric", sketch_size=100_000, **config):
    ref = pd.DataFrame({"x": reference})
    profile = build_reference_profile(ref, {"x": kind}, sketch_size=sketch_size)
    return score_drift(profile, pd.DataFrame({"x": day}), DriftConfig(**config)).features.iloc[0]


@pytest.mark.parametrize(("m", "n"), [(500, 30), (800, 1_000), (5_000, 2_000), (100, 20_000)])
def test_continuous_ks_null_is_scipys_and_threshold_matches_the_verdict(m, n):
    """Continuous data: the KS p-value is scipy's (exact when n m <= 1e6, else
    asymptotic); the threshold is the critical D at alpha, consistent with the p-value."""
    rng = np.random.default_rng(m + n)
    a, b = rng.normal(size=m), rng.normal(0.05, size=n)
    row = _one(a, b)
    method = "exact" if m * n <= 1_000_000 else "asymp"
    expected = stats.ks_2samp(a, b, method=method)
    assert row["test"] == "ks" and row["null"] == ("exact" if method == "exact"
                                                    else "asymptotic")
    assert row["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert row["p_value"] == pytest.approx(expected.pvalue, abs=1e-9)
    # The threshold is the critical D: significant at it, not one lattice step below.
    critical = row["threshold"]
    if method == "exact":
        g = math.gcd(m, n)
        h = round(critical * (m // g * n))
        assert drift_stats._exact_two_sided(m, n, g, h)[1] <= ALPHA
        assert drift_stats._exact_two_sided(m, n, g, h - 1)[1] > ALPHA
    else:
        assert stats.kstwo.sf(critical, round(m * n / (m + n))) == pytest.approx(ALPHA,
                                                                                rel=1e-6)
    assert (row["statistic"] >= critical) == (row["p_value"] <= ALPHA)


def test_ties_get_a_resampled_null_drawn_once_for_a_grid_of_day_sizes():
    """Integers (ties): the KS null is resampled from the stored distribution, once per
    column for a geometric grid of day sizes; a day of n rows reads the null of the grid
    size at or below n, so days of 300 and 301 rows (and a profile loaded again) share
    one draw, and the threshold is the grid size's (conservative: fewer rows)."""
    rng = np.random.default_rng(3)
    profile = build_reference_profile(pd.DataFrame({"x": rng.poisson(3, size=4_000)}),
                                      {"x": "numeric"})
    sizes = null_grid(4_000)
    below = int(sizes[sizes <= 300].max())
    assert sizes[0] == 8 and below < 300 < int(sizes[sizes > 300].min()) < 1.2 * below
    cache = NullCache()
    first = score_drift(profile, pd.DataFrame({"x": rng.poisson(3, size=300)}), cache=cache)
    assert first.features.iloc[0]["null"] == (
        f"resampled (2000 draws, grid size {below} <= 300 rows)")
    assert (cache.misses, cache.hits) == (1, 0)
    score_drift(profile, pd.DataFrame({"x": rng.poisson(3, size=300)}), cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    copy = type(profile).from_bytes(profile.to_bytes())  # the fingerprint is the content
    score_drift(copy, pd.DataFrame({"x": rng.poisson(3, size=301)}), cache=cache)
    assert (cache.misses, cache.hits) == (1, 2)
    # Resampled p-values and thresholds agree: drifted iff statistic > threshold.
    row = first.features.iloc[0]
    assert (row["statistic"] > row["threshold"]) == (row["p_value"] <= ALPHA)
    # The grid size's threshold is above the one drawn at the day's own size.
    at_size = drift_nulls._from_draws(np.sort(drift_nulls._support_null(
        np.random.default_rng(1), profile.features["x"].values, profile.features["x"].counts,
        300, 4000, "ks")), 0.0, ALPHA / 2)["threshold"]
    assert first.features.iloc[0]["threshold"] >= at_size


def test_warming_at_training_time_leaves_nothing_to_draw_when_scoring():
    """warm_nulls (the reference_profile asset calls it) draws the grid and the bridge
    limit of every column with ties; scoring days of any size then draws nothing."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"visits": rng.poisson(3, 5_000), "code": rng.integers(0, 80, 5_000),
                          "score": rng.normal(size=5_000)})
    profile = build_reference_profile(frame, dict.fromkeys(frame.columns, "numeric"))
    cache = NullCache()
    assert warm_nulls(profile, DriftConfig(), cache) == 4  # two columns: grid + bridge
    assert warm_nulls(profile, DriftConfig(), cache) == 0
    for n in (40, 137, 650, 3_000):  # below, on and above the grid; the bridge
        day = pd.DataFrame({"visits": rng.poisson(3, n), "code": rng.integers(0, 80, n),
                            "score": rng.normal(size=n)})
        score_drift(profile, day, cache=cache)
    assert cache.misses == 4
    assert warm_nulls(profile, DriftConfig(calibration="fixed"), NullCache()) == 0


def test_the_drift_checks_defaults_are_the_ones_warmed_at_training():
    from ml_assets.core.drift.check import CheckSettings
    from ml_assets.drift import DriftScoringConfig

    assert DriftScoringConfig().settings() == CheckSettings()


def test_few_ties_keep_the_continuous_null():
    """Nearly continuous values (more than half distinct) with a few ties keep the
    continuous KS null: conservative with ties, and nothing to resample."""
    rng = np.random.default_rng(8)
    reference = np.round(rng.normal(size=2_000), 3)
    assert len(np.unique(reference)) > 1_000
    row = _one(reference, np.round(rng.normal(size=300), 3))
    assert row["null"] == "exact"




def test_resampled_pvalue_and_critical_value_agree():
    null = np.sort(np.random.default_rng(4).normal(size=1_999))
    for alpha in (0.01, 0.05, 0.0005):
        critical = drift_stats.resampled_critical(null, alpha)
        above = np.nextafter(critical, np.inf) + 1e-6
        assert drift_stats.resampled_pvalue(null, above) <= alpha
        assert drift_stats.resampled_pvalue(null, critical) > alpha
    assert drift_stats.resampled_critical(null, 0.0001) == math.inf  # 1 / (B + 1) > alpha
    assert drift_stats.resampled_pvalue(null, 100.0) == 1 / 2_000


def test_significant_but_small_shifts_are_not_drift_on_big_days():
    """20,000 rows against 100,000: a 0.05-std shift is significant, yet below the
    effect size (0.1 std) it is not drift; a 0.3-std shift is both."""
    rng = np.random.default_rng(5)
    reference = rng.normal(size=100_000)
    small = _one(reference, rng.normal(0.05, size=20_000), sketch_size=10_000)
    assert small["significant"] and not small["material"] and not small["drifted"]
    assert small["effect_measure"] == "wasserstein"
    assert small["effect_size"] == pytest.approx(0.05, abs=0.02)
    assert small["p_drift"] == 1.0
    big = _one(reference, rng.normal(0.3, size=20_000), sketch_size=10_000)
    assert big["significant"] and big["material"] and big["drifted"]


def test_categorical_rare_and_unseen_values_do_not_fire_but_a_new_frequent_one_does():
    rng = np.random.default_rng(6)
    population = np.r_[np.full(4, 0.24), np.full(40, 0.001)]
    labels = np.array([f"k{i}" for i in range(44)], dtype=object)
    reference = labels[rng.choice(44, size=500, p=population / population.sum())]
    calm = labels[rng.choice(44, size=20_000, p=population / population.sum())]
    row = _one(reference, calm, kind="categorical")
    assert row["test"] == "chi2" and row["null"] == "asymptotic"
    assert row["unseen_rate"] > 0 and not row["drifted"]
    new = np.where(rng.random(20_000) < 0.1, "brand new", calm)
    moved = _one(reference, new, kind="categorical")
    assert moved["drifted"] and moved["unseen_rate"] > row["unseen_rate"] + 0.08


def test_chi2_merged_keeps_every_expected_count_at_five():
    ref = np.array([500, 300, 150, 30, 10, 5, 3, 1, 1, 0, 0])
    cur = np.array([50, 30, 12, 4, 0, 1, 0, 0, 0, 2, 1])
    statistic, p_value, bins = drift_stats.chi2_merged(ref, cur)
    n, m = cur.sum(), ref.sum()
    # the bins that stand alone are those with pooled count >= 5 (m + n) / n
    need = 5 * (m + n) / n
    alone = (ref + cur) >= need
    assert bins == alone.sum() + 1
    table = np.vstack([np.r_[ref[alone], ref[~alone].sum()], np.r_[cur[alone], cur[~alone].sum()]])
    expected = stats.chi2_contingency(table)
    assert statistic == pytest.approx(expected.statistic) and p_value == pytest.approx(
        expected.pvalue)
    assert (expected.expected_freq >= 5).all()
    assert drift_stats.chi2_merged(np.array([3, 2]), np.array([1, 0]))[2] == 1  # no test


def test_holm_and_bonferroni():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    adjusted = drift_stats.holm(p)
    # sorted: .005*5=.025, .01*4=.04, .03*3=.09, .04*2=.08 -> .09 (monotone), .5
    assert adjusted.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    assert drift_stats.bonferroni(p).tolist() == pytest.approx([0.05, 0.2, 0.15, 0.025, 1.0])


def test_missing_rate_test_is_fishers():
    for table in ([5, 1000, 30, 200], [0, 500, 1, 30], [40, 100, 40, 100], [0, 10, 0, 5]):
        a, m, b, n = table
        ours = drift_stats.missing_rate_pvalue(a, m, b, n)
        if a + b == 0:
            assert math.isnan(ours)
        else:
            assert ours == pytest.approx(stats.fisher_exact([[a, m - a], [b, n - b]]).pvalue,
                                         abs=1e-12)


def test_missing_rate_moves_need_significance_and_size():
    rng = np.random.default_rng(8)
    reference = rng.normal(size=5_000)
    reference[:250] = np.nan  # 5 %
    few = rng.normal(size=30)
    few[:5] = np.nan  # 17 %: more than 0.1 away, but 5 of 30 is not significant
    row = _one(reference, few)
    assert abs(row["missing_rate_cur"] - 0.05) > 0.1 and row["p_missing"] > 0.01
    assert not row["missing_drifted"] and not row["drifted"]
    many = rng.normal(size=2_000)
    many[:800] = np.nan
    assert _one(reference, many)["missing_drifted"]
    absent = score_drift(build_reference_profile(pd.DataFrame({"x": reference, "y": reference}),
                                                 {"x": "numeric", "y": "numeric"}),
                         pd.DataFrame({"x": rng.normal(size=200)}))
    row = absent.features.set_index("feature").loc["y"]
    assert row["status"] == "absent" and row["drifted"] and absent.dataset_drifted


def test_report_fields_and_dataset_rule():
    rng = np.random.default_rng(9)
    names = [f"x{i}" for i in range(4)]
    profile = build_reference_profile(pd.DataFrame(rng.normal(size=(2_000, 4)),
                                                   columns=names),
                                      dict.fromkeys(names, "numeric"))
    day = rng.normal(size=(400, 4))  # n m <= 1e6: the exact KS null
    day[:, 1] += 1.0
    report = score_drift(profile, pd.DataFrame(day, columns=names))
    assert report.features.columns.tolist() == REPORT_COLUMNS
    assert report.dataset_rule == "holm" and report.dataset_alpha == DATASET_ALPHA
    assert report.dataset_threshold == pytest.approx(DATASET_ALPHA / 4)
    assert report.dataset_drifted and report.dataset_drifted_features == ["x1"]
    assert report.dataset_p_value <= DATASET_ALPHA
    row = report.features.set_index("feature").loc["x1"]
    assert row["null"] == "exact" and row["alpha"] == ALPHA
    assert row["effect_threshold"] == 0.1 and row["effect_size"] == pytest.approx(1.0, abs=0.15)
    assert report.to_dict()["dataset_rule"] == "holm"
    bonf = score_drift(profile, pd.DataFrame(day, columns=names),
                       DriftConfig(dataset_rule="bonferroni"))
    assert bonf.dataset_drifted and bonf.dataset_rule == "bonferroni"


def test_prediction_drift_uses_the_same_calibrated_machinery():
    rng = np.random.default_rng(10)
    reference = pd.DataFrame({"x": rng.normal(size=3_000),
                              "prediction": rng.choice(["a", "b"], size=3_000, p=[0.7, 0.3]),
                              "proba_b": rng.beta(2, 5, size=3_000)})
    profile = build_reference_profile(reference, {"x": "numeric"},
                                      {"prediction": "categorical", "proba_b": "numeric"})
    calm = pd.DataFrame({"x": rng.normal(size=300),
                         "prediction": rng.choice(["a", "b"], size=300, p=[0.7, 0.3]),
                         "proba_b": rng.beta(2, 5, size=300)})
    report = score_drift(profile, calm)
    assert not report.prediction_drifted and report.predictions["null"].notna().all()
    moved = calm.assign(proba_b=rng.beta(5, 2, size=300))
    report = score_drift(profile, moved)
    assert report.prediction_drifted and report.prediction_drifted_columns == ["proba_b"]
    assert not report.dataset_drifted


# -- pooling ---------------------------------------------------------------------------------

def _days(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"2026-11-{20 + i}", pd.DataFrame({"x": rng.normal(size=size)}))
            for i, size in enumerate(sizes)]


def test_pool_windows_rule():
    windows = pool_windows(_days([500, 40, 30, 0, 20, 150, 10]), min_rows=100, max_days=3)
    assert [w.status for w in windows] == ["ok", "pooled", "pooled", "empty",
                                           "insufficient", "ok", "pooled"]
    assert windows[1].days == _span(0, 1) and windows[1].n_rows == 540
    assert windows[1].note == "pooled with 1 preceding day(s) (2026-11-20)"
    assert windows[2].days == _span(0, 2) and windows[2].n_rows == 570
    assert windows[3].note == "no rows on 2026-11-23: no verdict"
    # 20 + 0 + 30 rows in the 3 days allowed: not enough yet
    assert windows[4].days == _span(2, 4) and windows[4].n_rows == 50
    assert windows[4].note.startswith("not enough data yet: 50 rows over 3 day(s)")
    assert windows[5].days == _span(5, 5) and windows[5].pooled_days == 0
    assert windows[6].days == _span(5, 6) and len(windows[6].frame) == 160


def test_pool_windows_pools_until_min_rows():
    windows = pool_windows(_days([60, 30, 30, 50]), min_rows=100, max_days=7)
    assert [w.status for w in windows] == ["insufficient", "insufficient", "pooled", "pooled"]
    assert windows[2].days == _span(0, 2) and windows[2].n_rows == 120
    assert windows[3].days == _span(1, 3) and windows[3].n_rows == 110
    assert DEFAULT_MIN_ROWS == 100


def _span(first, last):
    return tuple(f"2026-11-{20 + i}" for i in range(first, last + 1))


def test_score_window_reports_pooling_and_insufficient_data():
    rng = np.random.default_rng(12)
    profile = build_reference_profile(pd.DataFrame({"x": rng.normal(size=2_000)}),
                                      {"x": "numeric"})
    windows = pool_windows(_days([40, 30, 50]))
    early = score_window(profile, windows[1])
    assert early.status == "insufficient" and not early.dataset_drifted
    assert early.note.startswith("not enough data yet") and early.n_rows == 70
    assert early.features["status"].tolist() == ["insufficient"]
    late = score_window(profile, windows[2])
    assert late.status == "ok" and late.pooled_days == 2 and late.n_rows == 120
    assert late.window_days == list(_span(0, 2))
    assert late.to_dict()["note"] == "pooled with 2 preceding day(s) (2026-11-20, 2026-11-21)"


def test_batch_statistics_match_the_single_ones():
    """The resampled nulls compute each statistic on B count tables at once."""
    rng = np.random.default_rng(13)
    ref = rng.multinomial(300, [0.5, 0.3, 0.15, 0.05, 0.0], size=50)
    cur = rng.multinomial(40, [0.2, 0.2, 0.2, 0.2, 0.2], size=50)
    cur[:10, 2:] = 0  # some rows down to two (Yates) or one non-empty column
    ref[:10, 2:] = 0
    ref[:3, 1] = cur[:3, 1] = 0
    for batch, single in ((drift_stats.chi2_batch,
                           lambda r, c: drift_stats.chi2_homogeneity(r, c)[0]),
                          (drift_stats.jensenshannon_batch, drift_stats.jensenshannon),
                          (drift_stats.psi_batch, drift_stats.psi)):
        expected = [single(r, c) for r, c in zip(ref, cur, strict=True)]
        assert batch(ref, cur) == pytest.approx(expected, abs=1e-9)
    values = np.arange(5.0) ** 2
    expected_ks = [drift_stats.ks_numerator(values, r, np.repeat(values, c)) / (r.sum() * c.sum())
                   for r, c in zip(ref, cur, strict=True)]
    assert drift_stats.ks_batch(ref, cur) == pytest.approx(expected_ks, abs=1e-12)
    expected_w1 = [stats.wasserstein_distance(values, values, r, c)
                   for r, c in zip(ref, cur, strict=True)]
    assert drift_stats.wasserstein_batch(ref, cur, values) == pytest.approx(expected_w1,
                                                                           abs=1e-9)


def test_tiny_days_of_an_imbalanced_category_get_a_permutation_null():
    rng = np.random.default_rng(14)
    labels = np.array(["a", "b", "c"], dtype=object)
    reference = labels[rng.choice(3, size=2_000, p=[0.9, 0.08, 0.02])]
    row = _one(reference, labels[rng.choice(3, size=30, p=[0.9, 0.08, 0.02])],
               kind="categorical")
    assert row["null"] == "resampled (2000 draws, permutation)" and not row["drifted"]
    moved = _one(reference, labels[rng.choice(3, size=30, p=[0.3, 0.4, 0.3])],
                 kind="categorical")
    assert moved["drifted"]


def test_report_is_json_safe_even_with_infinite_thresholds():
    import dataclasses
    import json

    rng = np.random.default_rng(15)
    profile = build_reference_profile(pd.DataFrame({"x": rng.poisson(3, size=500)}),
                                      {"x": "numeric"})
    report = score_drift(profile, pd.DataFrame({"x": rng.poisson(3, size=50)}))
    # a critical value that cannot be attained (1 / (B + 1) > level) is +inf
    table = report.features.assign(threshold=math.inf)
    json.dumps(dataclasses.replace(report, features=table).to_dict(), allow_nan=False)
    # a small alpha raises the number of draws so that it stays attainable
    assert DriftConfig(alpha=1e-4).draws_for(10) == 40_000
    assert drift_stats.resampled_critical(np.zeros(1_999), 1e-4) == math.inf
