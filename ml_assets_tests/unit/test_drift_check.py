"""The drift check's decision (ml_assets/core/drift/check.py): its settings, the rows
whose outputs are judged, the outcome of a report, and its error rates measured with a
real model: a seeded A/A (no-drift windows fail the check at most at dataset_alpha,
the budget being split between the feature and the prediction verdicts) and its power."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.drift.check import CheckSettings, decide, judged_answers
from ml_assets.core.drift.nulls import NullCache
from ml_assets.core.drift.pooling import pool_day, pool_windows, score_window
from ml_assets.core.drift.profile import build_reference_profile
from ml_assets.core.drift.scoring import score_drift
from ml_assets_tests.support.drift_frames import model_world as _world

DEFAULT = CheckSettings()


def _check(profile, frame, settings=DEFAULT):
    report = score_drift(profile, frame, settings.drift_config(bool(profile.predictions)))
    return decide(report, settings), report






def test_a_strong_shift_fails_and_names_the_features():
    profile, day = _world()
    outcome, report = _check(profile, day(100, 1.0, 3))
    assert outcome.outcome == "fail" and not outcome.passed and outcome.severity == "ERROR"
    assert report.dataset_drifted and set(report.dataset_drifted_features) <= {"x0", "x1",
                                                                               "x2"}
    assert outcome.description.startswith("100 rows: dataset drifted (Holm p = ")


def test_the_budget_is_split_only_when_both_verdicts_can_fail_the_check():
    settings = CheckSettings()
    assert settings.family_alpha(True) == 0.01 and settings.family_alpha(False) == 0.02
    assert CheckSettings(fail_on_prediction_drift=False).family_alpha(True) == 0.02
    config = settings.drift_config(True)
    assert (config.alpha, config.dataset_alpha, config.min_rows) == (0.01, 0.01, 100)
    fixed = CheckSettings(calibration="fixed", fail_share=0.6).drift_config(True)
    assert fixed.calibration == "fixed" and fixed.share_threshold == 0.6


def test_deprecated_share_settings_name_the_fix():
    with pytest.raises(ValueError, match="warn_share belong.*deprecated.*calibration='fixed'"):
        CheckSettings(warn_share=0.3)
    assert CheckSettings(calibration="fixed", warn_share=0.2).shares == (0.2, 0.5)
    with pytest.raises(ValueError, match="calibration must be one of"):
        CheckSettings(calibration="strict")
    with pytest.raises(ValueError, match="dataset_alpha must be in"):
        CheckSettings(dataset_alpha=1.5)
    with pytest.raises(ValueError, match="min_rows must be >= 1"):
        CheckSettings(min_rows=0)


def test_feature_drift_without_a_dataset_verdict_warns():
    profile, day = _world()
    settings = CheckSettings()
    for _ in range(200):  # a window where some feature is flagged on its own test
        outcome, report = _check(profile, day(100), settings)
        if report.drifted_features and not report.dataset_drifted:
            break
    else:
        pytest.fail("no window with a lone flagged feature in 200")
    # A warning is a check that did not pass at severity WARN: no retrain, shown in yellow.
    assert outcome.outcome == "warn" and not outcome.passed and outcome.severity == "WARN"
    assert "drifted on their own test" in outcome.description
    quiet = decide(report, CheckSettings(warn_on_feature_drift=False))
    assert quiet.outcome == "pass"


def test_the_fixed_rule_is_the_former_share_rule():
    profile, day = _world()
    settings = CheckSettings(calibration="fixed")
    outcome, report = _check(profile, day(2_000, 1.0, 6), settings)
    assert report.share_drifted == 1.0 and outcome.outcome == "fail"
    outcome, _ = _check(profile, day(2_000, 1.0, 2), CheckSettings(
        calibration="fixed", warn_share=0.3, fail_share=0.9, fail_on_prediction_drift=False))
    assert outcome.outcome == "warn"  # 2 of 6 features: 33 %


def test_insufficient_and_empty_windows_pass_saying_why():
    profile, day = _world()
    days = [("2026-11-20", day(30)), ("2026-11-21", pd.DataFrame()),
            ("2026-11-22", day(20))]
    window = pool_day(days, min_rows=100, max_days=7)
    assert window.status == "insufficient" and window.days == tuple(d for d, _ in days)
    outcome = decide(score_window(profile, window), CheckSettings())
    assert outcome.outcome == "no verdict" and outcome.passed
    assert outcome.description == ("only 50 rows over 3 day(s) (< 100): not enough data "
                                   "yet, no verdict")
    empty = pool_day([*days, ("2026-11-23", pd.DataFrame())], min_rows=100)
    outcome = decide(score_window(profile, empty), CheckSettings())
    assert outcome.outcome == "no verdict"
    assert outcome.description.startswith("only 0 rows on 2026-11-23")


def test_pool_day_is_the_last_window_of_pool_windows():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sizes = rng.integers(0, 80, size=rng.integers(1, 9)).tolist()
        days = [(f"d{i}", pd.DataFrame({"x": np.arange(s)})) for i, s in enumerate(sizes)]
        for max_days in (1, 3, 7):
            expected = pool_windows(days, 100, max_days)[-1]
            got = pool_day(days, 100, max_days)
            assert (got.status, got.days, got.n_rows, len(got.frame)) == (
                expected.status, expected.days, expected.n_rows, len(expected.frame)), (
                sizes, max_days)


def test_judged_answers_are_the_champions_of_the_profiles_version():
    rows = pd.DataFrame({"x": range(6), "variant": ["champion", None, "canary", "shadow",
                                                    "champion", "champion"],
                         "model_version": ["3", "3", "4", "4", "2", "3"]})
    assert judged_answers(rows)["x"].tolist() == [0, 1, 4, 5]
    assert judged_answers(rows, "3")["x"].tolist() == [0, 1, 5]
    assert judged_answers(rows.drop(columns=["variant", "model_version"]), "3").shape[0] == 6


def test_the_null_cache_on_disk_serves_the_next_process_the_same_nulls(tmp_path):
    """Integer columns (ties) get resampled nulls; a second cache over the same
    directory (the next Dagster run) reads them instead of drawing them again, and gets
    the very same report."""
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"visits": rng.poisson(3, 2_000), "age": rng.integers(18, 90, 2_000)})
    profile = build_reference_profile(frame, dict.fromkeys(frame.columns, "numeric"))
    day = pd.DataFrame({"visits": rng.poisson(3, 80), "age": rng.integers(18, 90, 80)})
    first = NullCache(directory=tmp_path / "nulls")
    report = score_drift(profile, day, cache=first)
    assert first.misses == 2 and first.disk_hits == 0
    assert len(list((tmp_path / "nulls").glob("*.npy"))) == 2
    second = NullCache(directory=tmp_path / "nulls")
    again = score_drift(profile, day, cache=second)
    assert (second.misses, second.disk_hits) == (0, 2)
    pd.testing.assert_frame_equal(report.features, again.features)
    # A damaged file is drawn again and rewritten; the verdicts do not change.
    for path in (tmp_path / "nulls").glob("*.npy"):
        path.write_bytes(b"not an array")
    third = NullCache(directory=tmp_path / "nulls")
    pd.testing.assert_frame_equal(score_drift(profile, day, cache=third).features,
                                  report.features)
    assert third.misses == 2
    # At most max_files entries stay on disk.
    small = NullCache(directory=tmp_path / "few", max_files=1)
    score_drift(profile, day, cache=small)
    assert len(list((tmp_path / "few").glob("*.npy"))) == 1
