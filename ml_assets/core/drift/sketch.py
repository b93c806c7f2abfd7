"""Mergeable drift sketches: what drift scoring needs from a shard or log segment, kept on
the reference profile's own grid so that sketches of any split of a window merge
EXACTLY into the sketch of the whole window.

Per numeric column the grid is the profile's stored support (its distinct values, or
its quantile-sketch points) plus its PSI edges; the sketch counts the values equal to
each grid point and, per open interval between neighbours (and beyond the ends), their
count, the sum of their distances from the interval's finite end, and their least and
greatest value. Per categorical/boolean column: counts per category label. Per column:
rows with a usable value (the missing rate). Counts, minima and maxima merge exactly;
the distance sums are float64 sums (merged to within rounding, ~1e-16 relative).

From them `ml_assets.core.drift.sketch_scoring` computes, against the same profile:
KS (exactly: F_ref is constant between grid points, so the supremum is attained at
them), PSI on the profile's bins, chi-squared / Jensen-Shannon and missing rates
(exactly), and the Wasserstein-1 effect size with a stated bound (exact unless the
current CDF crosses the reference CDF inside an interval; there the error is bounded by
the interval's spread of values, reported per column as `effect_error`).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml_assets.core.drift.profile import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
    category_counts,
    npz_bytes,
    npz_read,
    numeric_values,
    quantile_edges,
)

FORMAT = "ml_assets.drift.DriftSketch"
FORMAT_VERSION = 1


# Grids (and their indexes) per column profile, by identity, and PSI bins: a step
# sketches every record batch on the same grids, so each is built once (read-only).
_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Buckets of a GridIndex per grid point, at most this many buckets, and at most this
# many points a bucket's values step over (buckets holding more are binary-searched).
BUCKETS_PER_POINT = 8
MAX_BUCKETS = 1 << 18
MAX_STEPS = 1


@dataclass(frozen=True, eq=False)
class GridIndex:
    """Where values fall on a sorted grid (`np.searchsorted(grid, v)`) without a binary
    search: the grid's range cut into equal buckets by one monotone float function
    `bucket(v) = int(clip(v * scale + shift, 0, top))`, with the count of grid points in
    lower buckets. A value's place is that count plus the points of its own bucket below
    it, found by stepping over them (at most `steps`; buckets crowded with more are
    binary-searched). Exact by construction, not by rounding analysis: `bucket` is
    applied to the grid itself, and since it never decreases, a point in a lower bucket
    is below the value and one in a higher bucket above it."""

    grid: np.ndarray
    scale: float
    shift: float
    top: int
    below: np.ndarray  # grid points in buckets < b, b = 0 .. top + 1
    padded: np.ndarray  # the grid, then `steps` x +inf
    steps: int
    crowded: np.ndarray | None  # buckets holding more than `steps` points, if any

    @classmethod
    def of(cls, grid: np.ndarray) -> GridIndex | None:
        """The index of `grid`, or None when it cannot have one (fewer than two points,
        or a range no float scale spans)."""
        if grid.size < 2:
            return None
        buckets = min(BUCKETS_PER_POINT * grid.size, MAX_BUCKETS)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            scale = buckets / float(grid[-1] - grid[0])
            shift = 1.0 - float(grid[0]) * scale
        if not (np.isfinite(scale) and np.isfinite(shift) and scale > 0):
            return None
        top = buckets + 1  # bucket 0: below grid[0] as computed; top: at and above grid[-1]
        index = cls(grid, scale, shift, top, np.zeros(0, np.int32), grid, 0, None)
        at = index._buckets(grid)
        below = np.searchsorted(at, np.arange(top + 2)).astype(np.int32)
        held = np.diff(below)
        steps = int(min(held.max(), MAX_STEPS))
        return cls(grid, scale, shift, top, below, np.r_[grid, np.full(steps, np.inf)],
                   steps, held > steps if held.max() > steps else None)

    def _buckets(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = values * self.scale
            scaled += self.shift
        np.clip(scaled, 0, self.top, out=scaled)
        return scaled.astype(np.intp)

    def places(self, values: np.ndarray) -> np.ndarray:
        """np.searchsorted(grid, values) for finite `values`."""
        values = np.asarray(values, dtype=np.float64)  # the grid's own bucket function
        bucket = self._buckets(values)
        place = self.below[bucket].astype(np.intp)
        padded = self.padded
        for _ in range(self.steps):
            place += padded[place] < values
        if self.crowded is not None:
            search = np.flatnonzero(self.crowded[bucket])
            if search.size:
                place[search] = np.searchsorted(self.grid, values[search])
        return place


def grid_index(column: NumericProfile, psi_bins: Iterable[int] = ()) -> GridIndex | None:
    """The (cached) GridIndex of `profile_grid(column, psi_bins)`."""
    bins_asked = tuple(psi_bins)
    known = _INDEXES.setdefault(column, {})
    if bins_asked not in known:
        known[bins_asked] = GridIndex.of(profile_grid(column, bins_asked))
    return known[bins_asked]


def profile_grid(column: NumericProfile, psi_bins: Iterable[int] = ()) -> np.ndarray:
    """A numeric column's grid: its stored support, its PSI edges, and the quantile edges
    of any other PSI bin counts asked for (`psi_bins`), sorted and distinct."""
    bins_asked = tuple(psi_bins)
    known = _GRIDS.get(column)
    if known is not None and bins_asked in known:
        return known[bins_asked]
    parts = [column.values, column.psi_edges]
    for bins in bins_asked:
        if column.values.size:
            parts.append(quantile_edges(column.values, column.counts, bins))
    grid = np.unique(np.concatenate(parts).astype(np.float64))
    grid.flags.writeable = False
    _GRIDS.setdefault(column, {})[bins_asked] = grid
    return grid


def sketch_basis(profile: ReferenceProfile, psi_bins: Iterable[int] = ()) -> str:
    """A digest of what a sketch against `profile` depends on (each column's role, name,
    kind and numeric grid): sketches with the same basis merge and are judged by that
    profile; a sketch of another basis (another champion's profile) is not used."""
    extra = sorted({int(b) for b in psi_bins} - {profile.psi_bins})
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps(extra).encode())
    for role, group in (("features", profile.features), ("predictions", profile.predictions)):
        for name, column in group.items():
            digest.update(json.dumps([role, name, isinstance(column, NumericProfile)]).encode())
            if isinstance(column, NumericProfile):
                digest.update(profile_grid(column, extra).tobytes())
    return digest.hexdigest()


@dataclass(eq=False)
class NumericSketch:
    """One numeric column on its grid g_0 < ... < g_{K-1}: `at[j]` values equal to g_j;
    interval j (0: below g_0, j: between g_{j-1} and g_j, K: above g_{K-1}) holds
    `between[j]` values whose distances from the interval's finite end sum to
    `distance[j]`, least `low[j]`, greatest `high[j]` (+inf / -inf when empty)."""

    grid: np.ndarray
    at: np.ndarray
    between: np.ndarray
    distance: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def n_valid(self) -> int:
        return int(self.at.sum() + self.between.sum())

    @classmethod
    def empty(cls, grid: np.ndarray) -> NumericSketch:
        k = grid.size
        return cls(grid, np.zeros(k, np.int64), np.zeros(k + 1, np.int64),
                   np.zeros(k + 1), np.full(k + 1, np.inf), np.full(k + 1, -np.inf))

    @classmethod
    def of(cls, values: np.ndarray, grid: np.ndarray,
           index: GridIndex | None = None) -> NumericSketch:
        """The sketch of float values (NaN and +/-inf are missing: not counted), with
        `index` (built on `grid`) to place them when given."""
        sketch = cls.empty(grid)
        finite = np.isfinite(values)
        kept = values if finite.all() else values[finite]
        if not kept.size:
            return sketch
        k = grid.size
        where = index.places(kept) if index is not None else np.searchsorted(grid, kept)
        if k:
            equal = np.r_[grid, np.inf][where] == kept
            if equal.any():  # values on grid points (a continuous column: rarely)
                sketch.at += np.bincount(where[equal], minlength=k + 1).astype(np.int64)[:k]
                kept, where = kept[~equal], where[~equal]
                if not kept.size:
                    return sketch
        sketch.between += np.bincount(where, minlength=k + 1).astype(np.int64)
        if k:
            # x - g_{j-1} (the interval's left end); below g_0, g_0 - x: summed as x - g_0
            # and negated (exactly the sum of the negated terms)
            distance = np.bincount(where, weights=kept - np.r_[grid[0], grid][where],
                                   minlength=k + 1)
            distance[0] = -distance[0]
            sketch.distance += distance
        np.minimum.at(sketch.low, where, kept)
        np.maximum.at(sketch.high, where, kept)
        return sketch

    def merged(self, other: NumericSketch) -> NumericSketch:
        if not np.array_equal(self.grid, other.grid):
            raise ValueError("numeric sketches on different grids cannot be merged (built "
                             "against different reference profiles or PSI bins)")
        return NumericSketch(self.grid, self.at + other.at, self.between + other.between,
                             self.distance + other.distance,
                             np.minimum(self.low, other.low), np.maximum(self.high, other.high))


@dataclass(eq=False)
class CategoricalSketch:
    """One categorical/boolean column: rows per category label (as the profile keys them)."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_valid(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def of(cls, series: pd.Series) -> CategoricalSketch:
        labels, counts = category_counts(series)
        return cls(dict(zip(labels, (int(c) for c in counts), strict=True)))

    def merged(self, other: CategoricalSketch) -> CategoricalSketch:
        counts = dict(self.counts)
        for label, count in other.counts.items():
            counts[label] = counts.get(label, 0) + count
        return CategoricalSketch(counts)

    def labelled(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(sorted labels, counts), as `category_counts` gives them."""
        labels = tuple(sorted(label for label, c in self.counts.items() if c > 0))
        return labels, np.array([self.counts[label] for label in labels], dtype=np.int64)


ColumnSketch = NumericSketch | CategoricalSketch


@dataclass(eq=False)
class ColumnEntry:
    """A column's sketch, and whether any sketched rows had the column at all."""

    sketch: ColumnSketch
    present: bool


@dataclass(eq=False)
class DriftSketch:
    """Feature and prediction columns of some rows, sketched against one profile
    (`psi_bins`: the extra PSI bin counts its grids hold). `n_rows`: rows whose
    features were sketched; `n_prediction_rows`: rows whose model outputs were."""

    features: dict[str, ColumnEntry]
    predictions: dict[str, ColumnEntry]
    n_rows: int
    n_prediction_rows: int
    psi_bins: tuple[int, ...] = ()

    def merged(self, other: DriftSketch) -> DriftSketch:
        """The sketch of both sketches' rows together (exact: see the module)."""
        if (set(self.features), set(self.predictions), self.psi_bins) != (
                set(other.features), set(other.predictions), other.psi_bins):
            raise ValueError("sketches of different columns or PSI bins cannot be merged")

        def both(a: Mapping[str, ColumnEntry], b: Mapping[str, ColumnEntry]):
            out = {}
            for name, entry in a.items():
                mine, theirs = entry.sketch, b[name].sketch
                if type(mine) is not type(theirs):
                    raise ValueError(f"column {name!r} is sketched as two kinds")
                out[name] = ColumnEntry(mine.merged(theirs),  # type: ignore[arg-type]
                                        entry.present or b[name].present)
            return out

        return DriftSketch(both(self.features, other.features),
                           both(self.predictions, other.predictions),
                           self.n_rows + other.n_rows,
                           self.n_prediction_rows + other.n_prediction_rows, self.psi_bins)

    # -- serialisation (np.savez plus a JSON header; no pickle) -----------------------

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        header: dict = {"format": FORMAT, "version": FORMAT_VERSION, "n_rows": self.n_rows,
                        "n_prediction_rows": self.n_prediction_rows,
                        "psi_bins": list(self.psi_bins), "features": {}, "predictions": {}}
        for role, group in (("features", self.features), ("predictions", self.predictions)):
            for i, (name, entry) in enumerate(group.items()):
                meta: dict = {"present": entry.present}
                if isinstance(entry.sketch, NumericSketch):
                    meta["kind"] = "numeric"
                    for part in ("grid", "at", "between", "distance", "low", "high"):
                        key = f"{role}{i}.{part}"
                        arrays[key] = getattr(entry.sketch, part)
                        meta[part] = key
                else:
                    meta["kind"] = "categorical"
                    meta["counts"] = entry.sketch.counts
                header[role][name] = meta
        return npz_bytes(header, arrays)

    @classmethod
    def from_bytes(cls, blob: bytes) -> DriftSketch:
        header, arrays = npz_read(blob)
        if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION}: {header.get('format')!r} "
                             f"v{header.get('version')!r}")

        def entries(group: Mapping[str, dict]) -> dict[str, ColumnEntry]:
            out: dict[str, ColumnEntry] = {}
            for name, meta in group.items():
                sketch: ColumnSketch
                if meta["kind"] == "numeric":
                    sketch = NumericSketch(*(arrays[meta[p]] for p in (
                        "grid", "at", "between", "distance", "low", "high")))
                else:
                    sketch = CategoricalSketch({str(k): int(v)
                                                for k, v in meta["counts"].items()})
                out[name] = ColumnEntry(sketch, bool(meta["present"]))
            return out

        return cls(entries(header["features"]), entries(header["predictions"]),
                   int(header["n_rows"]), int(header["n_prediction_rows"]),
                   tuple(int(b) for b in header["psi_bins"]))


def _sketch_column(column: ColumnProfile, frame: pd.DataFrame, name: str,
                   psi_bins: tuple[int, ...]) -> ColumnEntry:
    present = name in frame.columns
    if isinstance(column, NumericProfile):
        grid = profile_grid(column, psi_bins)
        if not present:
            return ColumnEntry(NumericSketch.empty(grid), False)
        return ColumnEntry(NumericSketch.of(numeric_values(frame[name]), grid,
                                            grid_index(column, psi_bins)), True)
    assert isinstance(column, CategoricalProfile)
    if not present:
        return ColumnEntry(CategoricalSketch(), False)
    return ColumnEntry(CategoricalSketch.of(frame[name]), True)


def sketch_frame(profile: ReferenceProfile, current: pd.DataFrame,
                 prediction_rows: pd.DataFrame | None = None, *,
                 psi_bins: Iterable[int] = ()) -> DriftSketch:
    """The sketch of `current` (features) and `prediction_rows` (model outputs; default:
    `current`), as `score_drift` would read them, against `profile`. `psi_bins`: PSI bin
    counts other than the profile's that scoring may be configured with."""
    extra = tuple(sorted({int(b) for b in psi_bins} - {profile.psi_bins}))
    if any(b < 2 for b in extra):
        raise ValueError(f"psi_bins must be >= 2, got {extra}")
    outputs = current if prediction_rows is None else prediction_rows
    return DriftSketch(
        {name: _sketch_column(column, current, name, extra)
         for name, column in profile.features.items()},
        {name: _sketch_column(column, outputs, name, extra)
         for name, column in profile.predictions.items()},
        len(current), len(outputs), extra)


def merge_sketches(sketches: Iterable[DriftSketch]) -> DriftSketch:
    """Sketches of disjoint rows merged into the sketch of all of them."""
    merged: DriftSketch | None = None
    for sketch in sketches:
        merged = sketch if merged is None else merged.merged(sketch)
    if merged is None:
        raise ValueError("no sketch to merge")
    return merged
