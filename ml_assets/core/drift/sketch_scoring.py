"""Drift of a window judged from its merged sketch (ml_assets/core/drift/sketch.py), with
the calibrated verdicts `score_drift` gives on the window's rows: the same tests, nulls,
effect sizes, Holm family and report, the statistics read from the sketch instead of
the rows. KS, PSI, chi-squared, Jensen-Shannon and missing rates are exact; the
Wasserstein-1 effect size is the midpoint of exact bounds, its half-width reported per
column as `effect_error` (0 when exact), so a verdict can differ from the single-pass
one only when the effect threshold lies within that error of the effect size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml_assets.core.drift.columns import CategorySample, ColumnSample, score_columns
from ml_assets.core.drift.config import DriftConfig
from ml_assets.core.drift.nulls import NULL_CACHE, NullCache
from ml_assets.core.drift.profile import NumericProfile, ReferenceProfile
from ml_assets.core.drift.scoring import DriftReport, _check_overrides, _report
from ml_assets.core.drift.sketch import ColumnEntry, DriftSketch, NumericSketch


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


@dataclass(frozen=True, eq=False)
class SketchSample:
    """A numeric column's sketch as the value tests read it (`columns.NumericSample`)."""

    sketch: NumericSketch

    @property
    def n_valid(self) -> int:
        return self.sketch.n_valid

    def wasserstein(self, ref: NumericProfile) -> tuple[float, float]:
        return wasserstein_sketch(ref, self.sketch)

    def ks_numerator(self, ref: NumericProfile) -> int:
        return ks_numerator_sketch(ref, self.sketch)

    def bin_counts(self, edges: np.ndarray) -> np.ndarray:
        return bin_counts_sketch(edges, self.sketch)


def _sample(entry: ColumnEntry) -> ColumnSample | None:
    if not entry.present:
        return None
    if isinstance(entry.sketch, NumericSketch):
        return SketchSample(entry.sketch)
    return CategorySample(*entry.sketch.labelled())


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
    features = score_columns(profile.features, lambda name, _: _sample(sketch.features[name]),
                             sketch.n_rows, config, profile.psi_bins, cache)
    predictions = score_columns(profile.predictions,
                                lambda name, _: _sample(sketch.predictions[name]),
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
