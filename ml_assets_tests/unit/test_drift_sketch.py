"""Mergeable drift sketches (ml_assets/core/drift/sketch.py): sketches of random splits of
a window merge into exactly the sketch of the whole window, and drift scored from the
merged sketch gives the single-pass verdicts of `score_drift`: the same statistics and
p-values, the Wasserstein effect size within its stated error. Property-style: seeded
random frames of every column kind, random shift, random shard cuts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.drift.config import DriftConfig
from ml_assets.core.drift.profile import build_reference_profile
from ml_assets.core.drift.scoring import (
    prediction_columns,
    score_drift,
    score_drift_by_column,
)
from ml_assets.core.drift.sketch import DriftSketch, merge_sketches, sketch_frame
from ml_assets.core.drift.sketch_scoring import score_sketch, wasserstein_sketch
from ml_assets.core.drift.stats import wasserstein
from ml_assets_tests.support.drift_frames import KINDS, mixed_frame


def _cuts(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """A random split of n rows into 1 to 8 contiguous shards (some may be empty)."""
    cuts = np.sort(rng.integers(0, n + 1, size=rng.integers(0, 8)))
    bounds = np.r_[0, cuts, n]
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _with_outputs(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    proba = 1 / (1 + np.exp(-(frame["normal"].to_numpy() + rng.normal(0, 1, len(frame)))))
    outputs, _ = prediction_columns(np.where(proba > 0.5, "yes", "no"),
                                    np.c_[1 - proba, proba], ["no", "yes"], index=frame.index)
    return pd.concat([frame, outputs], axis=1)


def _shifted(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Some columns moved by a random amount (none on about a third of the days)."""
    frame = frame.copy()
    size = rng.choice([0.0, 0.0, 0.05, 0.15, 0.5])
    frame["normal"] += size
    frame["lognormal"] *= 1 + size
    frame.loc[rng.random(len(frame)) < size / 2, "balanced"] = "c0"
    frame.loc[rng.random(len(frame)) < size / 4, "with_missing"] = np.nan
    return frame


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(11)
    reference = _with_outputs(mixed_frame(rng, 4000), rng)
    output_kinds = {"prediction": "categorical", "proba_no": "numeric", "proba_yes": "numeric"}
    # a small quantile sketch (the default is 10,000 points): its blocks are what make
    # the Wasserstein bound non-trivial
    return build_reference_profile(reference, KINDS, output_kinds, sketch_size=300)


@pytest.mark.parametrize("seed", range(6))
def test_merged_sketches_give_the_single_pass_verdicts(profile, seed):
    rng = np.random.default_rng(seed)
    window = _with_outputs(_shifted(mixed_frame(rng, int(rng.integers(150, 6000))), rng), rng)
    if seed % 3 == 2:
        window = window.drop(columns=["rare"])  # a column the window lacks
    config = DriftConfig(resamples=500)
    single = score_drift(profile, window, config)
    parts = [sketch_frame(profile, window.iloc[a:b]) for a, b in _cuts(rng, len(window))]
    order = rng.permutation(len(parts))
    merged = DriftSketch.from_bytes(merge_sketches([parts[i] for i in order]).to_bytes())
    report = score_sketch(profile, merged, config)

    assert report.dataset_drifted == single.dataset_drifted
    assert report.prediction_drifted == single.prediction_drifted
    assert report.dataset_p_value == pytest.approx(single.dataset_p_value, rel=1e-9, abs=0)
    for sketched, exact in ((report.features, single.features),
                            (report.predictions, single.predictions)):
        exact = exact.set_index("feature")
        sketched = sketched.set_index("feature")
        for column in ("status", "test", "n_cur", "drifted", "material", "significant",
                       "missing_drifted", "dataset_drifted"):
            assert sketched[column].tolist() == exact[column].tolist(), column
        for column in ("statistic", "p_value", "threshold", "missing_rate_cur",
                       "p_missing", "p_drift", "p_adjusted"):
            np.testing.assert_allclose(sketched[column].to_numpy(float),
                                       exact[column].to_numpy(float), rtol=1e-9,
                                       equal_nan=True, err_msg=column)
        gap = (sketched["effect_size"] - exact["effect_size"]).abs().fillna(0)
        assert (gap <= sketched["effect_error"] + 1e-12).all(), (gap, sketched["effect_error"])
    assert sum(single.features["drifted"]) or seed in (0, 1, 3, 4)  # some days drift


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("calibration", ["calibrated", "fixed"])
def test_column_by_column_is_the_single_pass(profile, seed, calibration):
    """The exact reference for a day too big for one frame: each column read on its own."""
    rng = np.random.default_rng(seed)
    window = _with_outputs(_shifted(mixed_frame(rng, int(rng.integers(150, 3000))), rng), rng)
    if seed == 2:
        window = window.drop(columns=["rare"])
    config = DriftConfig(resamples=500, calibration=calibration)
    read: list[str] = []

    def column_of(name: str) -> pd.DataFrame:
        read.append(name)
        return window[[name]] if name in window else pd.DataFrame(index=window.index)

    by_column = score_drift_by_column(profile, column_of, len(window), config)
    single = score_drift(profile, window, config)
    assert sorted(read) == sorted(name for _, name, _ in profile.columns())
    assert by_column.to_dict() == single.to_dict()
    assert by_column.dataset_drifted == single.dataset_drifted


def test_column_by_column_refuses_a_column_of_another_length(profile):
    rng = np.random.default_rng(0)
    window = _with_outputs(mixed_frame(rng, 200), rng)
    with pytest.raises(ValueError, match="column 'normal' has 199 rows, not the batch's 200"):
        score_drift_by_column(profile, lambda name: window[[name]].iloc[:199], 200)


def test_a_merge_is_the_sketch_of_all_rows(profile):
    rng = np.random.default_rng(3)
    window = _with_outputs(mixed_frame(rng, 3000), rng)
    whole = sketch_frame(profile, window)
    merged = merge_sketches(sketch_frame(profile, window.iloc[a:b])
                            for a, b in _cuts(rng, len(window)))
    assert merged.n_rows == whole.n_rows == 3000
    for name, entry in whole.features.items():
        other = merged.features[name].sketch
        if hasattr(entry.sketch, "grid"):
            for part in ("at", "between", "low", "high"):
                np.testing.assert_array_equal(getattr(other, part),
                                              getattr(entry.sketch, part), err_msg=part)
            np.testing.assert_allclose(other.distance, entry.sketch.distance, rtol=1e-12)
        else:
            assert other.counts == entry.sketch.counts


def test_wasserstein_is_exact_without_crossings_and_bounded_with_them():
    rng = np.random.default_rng(8)
    reference = pd.DataFrame({"x": rng.normal(size=2000)})
    exact_profile = build_reference_profile(reference, {"x": "numeric"})
    ref = exact_profile.features["x"]
    for values in (rng.normal(3, 1, 500), rng.normal(0, 1, 500), rng.normal(0, 1, 1)):
        sketch = sketch_frame(exact_profile, pd.DataFrame({"x": values})).features["x"]
        estimate, error = wasserstein_sketch(ref, sketch.sketch)
        truth = wasserstein(ref.values, ref.counts, np.sort(values))
        assert abs(estimate - truth) <= error + 1e-12
        assert error <= 0.05 * truth + 1e-12


def test_bad_use_is_refused_with_the_reason(profile):
    rng = np.random.default_rng(1)
    window = _with_outputs(mixed_frame(rng, 200), rng)
    sketch = sketch_frame(profile, window)
    with pytest.raises(ValueError, match="psi_bins=20"):
        score_sketch(profile, sketch, DriftConfig(psi_bins=20, numeric_test="psi"))
    with_bins = sketch_frame(profile, window, psi_bins=[20])
    assert score_sketch(profile, with_bins, DriftConfig(psi_bins=20, numeric_test="psi",
                                                        resamples=200)).status == "ok"
    with pytest.raises(ValueError, match="calibrated verdicts only"):
        score_sketch(profile, sketch, DriftConfig(calibration="fixed"))
    with pytest.raises(ValueError, match="PSI bins cannot be merged"):
        sketch.merged(with_bins)
    with pytest.raises(ValueError, match="not a ml_assets.drift.DriftSketch"):
        DriftSketch.from_bytes(profile.to_bytes())


# -- a window of days judged from their sketches (core/drift/window.py) -----------------

def _month(profile, seed: int, tmp_path):
    """30 days of 5 to 40 rows (the second half shifted), each with its sketch on disk
    and a loader that counts its calls."""
    from ml_assets.core.drift.sketch_store import SketchBasis, write_sketch
    from ml_assets.core.drift.window import WindowDay

    rng = np.random.default_rng(seed)
    frames, days, loads = [], [], []
    for i in range(30):
        frame = _with_outputs(mixed_frame(rng, int(rng.integers(5, 40))), rng)
        if i >= 15:
            frame["normal"] += 0.4
            frame.loc[rng.random(len(frame)) < 0.2, "balanced"] = "c0"
        path = write_sketch(tmp_path / f"day{i}.sketch.npz",
                            SketchBasis(profile, None).sketch(frame))
        frames.append(frame)

        def load(i=i):
            loads.append(i)
            return frames[i]
        days.append(WindowDay(f"d{i:02d}", len(frame), str(path), load))
    return frames, days, loads


@pytest.mark.parametrize("seed", range(3))
def test_a_month_of_day_sketches_gives_the_single_pass_verdicts_without_loading(
        profile, seed, tmp_path):
    """30 days (integer-valued 'poisson_ints' with ties, categorical and boolean
    columns), merged from their sketch files: the verdicts of score_drift on the
    concatenated rows, and no day loaded."""
    from ml_assets.core.drift.check import CheckSettings
    from ml_assets.core.drift.nulls import NullCache
    from ml_assets.core.drift.pooling import plan_day, pool_day
    from ml_assets.core.drift.window import judge_window

    frames, days, loads = _month(profile, seed, tmp_path)
    # the window reaches back to the first day exactly
    settings = CheckSettings(min_rows=sum(len(f) for f in frames), max_pooled_days=30)
    config = settings.drift_config(True)
    judged = judge_window(profile, days, settings, config, None, NullCache())
    planned = plan_day([(d.day, d.rows) for d in days], settings.min_rows, 30)
    pooled = pool_day([(d.day, f) for d, f in zip(days, frames, strict=True)],
                      settings.min_rows, 30)
    assert (planned.days, planned.status, planned.n_rows) == (
        pooled.days, pooled.status, pooled.n_rows)
    assert len(judged.window.days) == 30 and judged.window.status == "pooled"
    assert judged.source == "sketches" and loads == [] and judged.loaded == ()
    expected = score_drift(profile, pd.concat(frames, ignore_index=True), config)
    assert judged.report.dataset_drifted == expected.dataset_drifted  # True: shifted
    assert judged.report.prediction_drifted == expected.prediction_drifted
    got = judged.report.features.set_index("feature")
    want = expected.features.set_index("feature")
    for column in ("drifted", "dataset_drifted", "n_cur"):
        assert got[column].tolist() == want[column].tolist(), column
    for column in ("statistic", "p_value", "p_adjusted"):
        np.testing.assert_allclose(got[column].astype(float), want[column].astype(float),
                                   rtol=1e-9, atol=1e-12, err_msg=column)


def test_a_window_whose_effect_sits_within_its_error_is_judged_from_the_rows(profile,
                                                                             tmp_path):
    """The effect threshold of a column put at its sketch effect size (inside the
    Wasserstein bound): the sketch could decide either way, so the days are loaded and
    the window judged by score_drift; the verdicts are the rows' ones."""
    from ml_assets.core.drift.check import CheckSettings
    from ml_assets.core.drift.nulls import NullCache
    from ml_assets.core.drift.sketch_scoring import uncertain_columns
    from ml_assets.core.drift.window import judge_window

    frames, days, loads = _month(profile, 7, tmp_path)
    rows = sum(len(f) for f in frames)
    first = judge_window(profile, days, CheckSettings(min_rows=rows, max_pooled_days=30),
                         CheckSettings(min_rows=rows).drift_config(True), None, NullCache())
    table = first.report.features
    bounded = table[(table["effect_error"] > 0) & (table["effect_measure"] == "wasserstein")]
    assert len(bounded), "the 300-point profile leaves some Wasserstein bound open"
    row = bounded.iloc[0]
    settings = CheckSettings(min_rows=rows, max_pooled_days=30,
                             effect_thresholds={"wasserstein": float(row["effect_size"])})
    loads.clear()
    sketched = judge_window(profile, days, settings, settings.drift_config(True), None,
                            NullCache())
    assert row["feature"] in uncertain_columns(dataclasses.replace(
        first.report, features=table.assign(effect_threshold=float(row["effect_size"]))))
    assert sketched.source == "rows" and sorted(loads) == list(range(30))
    expected = score_drift(profile, pd.concat(frames, ignore_index=True),
                           settings.drift_config(True))
    assert sketched.report.features["drifted"].tolist() == expected.features[
        "drifted"].tolist()
    assert sketched.report.dataset_drifted == expected.dataset_drifted


@pytest.mark.parametrize("max_steps", [0, 1, 2, 8])
@pytest.mark.parametrize("grid_kind", ["quantiles", "integers", "two", "clustered", "tiny",
                                       "huge", "offset"])
def test_the_grid_index_places_values_as_a_binary_search_does(grid_kind, max_steps,
                                                               monkeypatch):
    """GridIndex.places is np.searchsorted(grid, v) for every finite value: on the grid's
    points, one float either side of them, far outside, and either side of bucket
    boundaries; with values stepping over none, some or all of a bucket's points (the
    rest binary-searched); a sketch with the index is the sketch without it."""
    from ml_assets.core.drift import sketch as module
    from ml_assets.core.drift.sketch import GridIndex, NumericSketch

    monkeypatch.setattr(module, "MAX_STEPS", max_steps)

    rng = np.random.default_rng(7)
    grid = {"quantiles": np.unique(rng.normal(size=10_000)),
            "integers": np.arange(0.0, 5.0), "two": np.array([0.0, 1.0]),
            "clustered": np.unique(np.r_[rng.normal(size=3_000) * 1e-9, 1e6]),
            "tiny": np.unique(rng.normal(size=50) * 1e-300),
            "huge": np.unique(np.r_[rng.normal(size=500) * 1e300, 1e307]),
            "offset": 1e15 + np.arange(5.0)}[grid_kind]
    index = GridIndex.of(grid)
    assert index is not None and index.steps <= max_steps
    assert (index.crowded is not None) == (np.diff(index.below).max() > max_steps)
    edges = (np.arange(index.top + 1) - index.shift) / index.scale
    values = np.r_[rng.normal(size=50_000), np.round(rng.normal(size=5_000), 1),
                   grid, np.nextafter(grid, np.inf), np.nextafter(grid, -np.inf),
                   edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                   grid[0] + (grid[-1] - grid[0]) * rng.random(5_000),
                   rng.normal(size=100) * 1e300,
                   [1.7e308, -1.7e308, 5e-324, -0.0]]
    values = values[np.isfinite(values)]
    np.testing.assert_array_equal(index.places(values), np.searchsorted(grid, values))
    with_index, without = NumericSketch.of(values, grid, index), NumericSketch.of(values, grid)
    for part in ("at", "between", "low", "high"):
        np.testing.assert_array_equal(getattr(with_index, part), getattr(without, part))
    np.testing.assert_array_equal(with_index.distance, without.distance)


def test_a_grid_without_a_float_width_has_no_index():
    from ml_assets.core.drift.sketch import GridIndex

    assert GridIndex.of(np.array([])) is None and GridIndex.of(np.array([1.0])) is None
    assert GridIndex.of(np.array([-1.7e308, 0.0, 1.7e308])) is None  # the range overflows


@pytest.mark.parametrize("grid_size", [0, 1, 3, 300])
def test_a_numeric_sketch_is_what_a_loop_over_the_values_counts(grid_size):
    """NumericSketch.of against a plain loop (bisect per value): values equal to grid
    points, between them, below and above the grid, NaN and infinities left out, -0.0."""
    import bisect

    from ml_assets.core.drift.sketch import GridIndex, NumericSketch

    rng = np.random.default_rng(grid_size)
    grid = np.unique(np.round(rng.normal(size=grid_size), 2))
    values = np.r_[np.round(rng.normal(size=2_000), 2), rng.normal(size=2_000) * 3,
                   grid, [np.nan, np.inf, -np.inf, -0.0, 0.0]]
    k = grid.size
    at, between = np.zeros(k, np.int64), np.zeros(k + 1, np.int64)
    distance = np.zeros(k + 1)
    low, high = np.full(k + 1, np.inf), np.full(k + 1, -np.inf)
    for v in values[np.isfinite(values)]:
        j = bisect.bisect_left(grid.tolist(), v)
        if j < k and grid[j] == v:
            at[j] += 1
            continue
        between[j] += 1
        if k:
            distance[j] += grid[0] - v if j == 0 else v - grid[j - 1]
        low[j], high[j] = min(low[j], v), max(high[j], v)
    for index in (None, GridIndex.of(grid)):
        sketch = NumericSketch.of(values, grid, index)
        for part, expected in (("at", at), ("between", between), ("low", low),
                               ("high", high)):
            np.testing.assert_array_equal(getattr(sketch, part), expected)
        np.testing.assert_allclose(sketch.distance, distance, rtol=1e-12, atol=1e-12)
