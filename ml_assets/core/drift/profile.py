"""The reference profile: what drift scoring needs from the training frame, built once.

Per numeric column: the sorted distinct values with their counts when there are at
most `sketch_size` of them (exact: KS and Wasserstein equal scipy's on the full
reference), otherwise a quantile sketch of `sketch_size` equal-rank block means
(Wasserstein within `sketch_error` of the exact value, KS within one block's share);
plus quantile PSI bin edges with the exact reference counts, mean, std, missing rate.
Per categorical/boolean column: category counts. Missing = NaN, None or +/-inf.

Serialisable as JSON-safe `to_dict()` or compact `to_bytes()` (np.savez, no pickle).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import pandas as pd

KINDS = ("numeric", "categorical", "boolean")
DEFAULT_SKETCH_SIZE = 10_000
DEFAULT_PSI_BINS = 10
FORMAT = "ml_assets.drift.ReferenceProfile"
FORMAT_VERSION = 1


# -- the binary form (profiles and sketches) ------------------------------------------

def npz_bytes(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays in an .npz archive plus a JSON header: no pickle, either way."""
    buffer = io.BytesIO()
    # allow_pickle given explicitly so mypy does not map **arrays onto it; npz_read loads
    # with allow_pickle=False, so nothing here may need pickling anyway.
    np.savez(buffer, allow_pickle=False,
             header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def npz_read(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of `npz_bytes`."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return json.loads(arrays.pop("header").tobytes()), arrays


# -- reading columns -------------------------------------------------------------------

def numeric_values(series: pd.Series) -> np.ndarray:
    """A column as float64 (NaN where missing or not a number); a view when possible."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
        return np.asarray(series.to_numpy(), dtype=np.float64)
    if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
        series = pd.to_numeric(series, errors="coerce")
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def finite_sorted(values: np.ndarray) -> np.ndarray:
    """The finite values, sorted, in a new array (NaN and +/-inf count as missing)."""
    finite = np.isfinite(values)
    if finite.all():
        return np.sort(values)
    kept = values[finite]
    kept.sort()
    return kept


def category_key(value: Any) -> str:
    """The category label as stored: str(value), with 3.0 -> '3' so an integer-coded
    column that picked up a NaN (and became float) keeps matching its reference."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


def category_counts(series: pd.Series) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted category labels, their counts), missing values excluded."""
    counts = series.value_counts(dropna=True, sort=False)
    merged: dict[str, int] = {}
    for value, count in zip(counts.index, counts.to_numpy(), strict=True):
        if count > 0:
            key = category_key(value)
            merged[key] = merged.get(key, 0) + int(count)
    labels = tuple(sorted(merged))
    return labels, np.array([merged[k] for k in labels], dtype=np.int64)


# -- column profiles -------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class NumericProfile:
    """A numeric column of the reference. `values`/`counts` is the (possibly sketched)
    distribution; `psi_edges`/`psi_counts` the quantile bins and exact reference counts."""

    kind: str
    dtype: str
    n_rows: int
    n_valid: int
    values: np.ndarray
    counts: np.ndarray
    exact: bool
    mean: float
    std: float
    sketch_error: float  # Wasserstein-1 between the reference and (values, counts)
    psi_edges: np.ndarray
    psi_counts: np.ndarray

    ARRAYS: ClassVar[tuple[str, ...]] = ("values", "counts", "psi_edges", "psi_counts")

    @property
    def missing_rate(self) -> float:
        return _missing_rate(self.n_rows, self.n_valid)


@dataclass(frozen=True, eq=False)
class CategoricalProfile:
    """A categorical or boolean column of the reference: counts per category label."""

    kind: str
    dtype: str
    n_rows: int
    n_valid: int
    categories: tuple[str, ...]
    counts: np.ndarray

    ARRAYS: ClassVar[tuple[str, ...]] = ("counts",)

    @property
    def missing_rate(self) -> float:
        return _missing_rate(self.n_rows, self.n_valid)


ColumnProfile = NumericProfile | CategoricalProfile


def _missing_rate(n_rows: int, n_valid: int) -> float:
    return (n_rows - n_valid) / n_rows if n_rows else math.nan


def profile_numeric(series: pd.Series, kind: str = "numeric", *,
                    sketch_size: int = DEFAULT_SKETCH_SIZE,
                    psi_bins: int = DEFAULT_PSI_BINS) -> NumericProfile:
    """Profile one numeric column (sorts it once)."""
    ordered = finite_sorted(numeric_values(series))
    n = ordered.size
    if n == 0:
        empty = np.empty(0)
        return NumericProfile(kind, str(series.dtype), len(series), 0, empty,
                              np.empty(0, np.int64), True, math.nan, math.nan, 0.0,
                              empty, np.zeros(1, np.int64))
    values, counts, exact, error = _support(ordered, sketch_size)
    edges = quantile_edges(ordered, np.ones(n, np.int64), psi_bins, sorted_sample=True)
    return NumericProfile(kind, str(series.dtype), len(series), n, values, counts, exact,
                          float(np.mean(ordered)), float(np.std(ordered)), error,
                          edges, bin_counts_sorted(edges, ordered))


def _support(ordered: np.ndarray, sketch_size: int) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Distinct values + counts if few enough, else `sketch_size` equal-rank block means."""
    n = ordered.size
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    if starts.size <= sketch_size:
        return ordered[starts], np.diff(np.r_[starts, n]).astype(np.int64), True, 0.0
    bounds = (np.arange(sketch_size + 1, dtype=np.int64) * n) // sketch_size
    counts = np.diff(bounds)
    means = np.add.reduceat(ordered, bounds[:-1]) / counts
    # Rounding must not push a mean outside its block (keeps the sketch sorted).
    means = np.clip(means, ordered[bounds[:-1]], ordered[bounds[1:] - 1])
    # Mapping each block onto its mean is the monotone (optimal) transport plan.
    error = float(np.abs(ordered - np.repeat(means, counts)).sum() / n)
    return means, counts, False, error


def quantile_edges(values: np.ndarray, counts: np.ndarray, bins: int, *,
                   sorted_sample: bool = False) -> np.ndarray:
    """Distinct inner quantiles at 1/bins, ..., (bins-1)/bins of a counted sample.

    numpy's default ('linear') quantile definition; with `sorted_sample` the values are
    the sample itself (counts all 1)."""
    probs = np.arange(1, bins) / bins
    if sorted_sample:
        return np.unique(np.quantile(values, probs))
    n = int(counts.sum())
    upto = np.cumsum(counts)
    virtual = (n - 1) * probs
    below = np.floor(virtual)
    above = np.minimum(below + 1, n - 1)
    low = values[np.searchsorted(upto, below, side="right")]
    high = values[np.searchsorted(upto, above, side="right")]
    gamma = virtual - below
    diff = high - low
    result = np.where(gamma >= 0.5, high - diff * (1 - gamma), low + diff * gamma)
    return np.unique(result)


def bin_counts_sorted(edges: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Counts per bin (-inf, e1], (e1, e2], ..., (ek, inf) of a sorted sample."""
    upto = np.searchsorted(ordered, edges, side="right")
    return np.diff(upto, prepend=0, append=ordered.size).astype(np.int64)


def bin_counts_weighted(edges: np.ndarray, values: np.ndarray,
                        counts: np.ndarray) -> np.ndarray:
    """Counts per bin (as `bin_counts_sorted`) of sorted `values` with multiplicities."""
    upto = np.r_[0, np.cumsum(counts)][np.searchsorted(values, edges, side="right")]
    return np.diff(upto, prepend=0, append=int(counts.sum())).astype(np.int64)


def profile_categorical(series: pd.Series, kind: str = "categorical") -> CategoricalProfile:
    """Profile one categorical/boolean column."""
    labels, counts = category_counts(series)
    return CategoricalProfile(kind, str(series.dtype), len(series), int(counts.sum()),
                              labels, counts)


def profile_column(series: pd.Series, kind: str, *, sketch_size: int = DEFAULT_SKETCH_SIZE,
                   psi_bins: int = DEFAULT_PSI_BINS) -> ColumnProfile:
    """Profile one column by its kind ('numeric', 'categorical' or 'boolean')."""
    if kind == "numeric":
        return profile_numeric(series, kind, sketch_size=sketch_size, psi_bins=psi_bins)
    return profile_categorical(series, kind)


# -- the whole profile -----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Everything drift scoring needs from the reference (training) frame."""

    features: dict[str, ColumnProfile]
    predictions: dict[str, ColumnProfile]
    n_rows: int
    psi_bins: int = DEFAULT_PSI_BINS
    sketch_size: int = DEFAULT_SKETCH_SIZE

    @property
    def kinds(self) -> dict[str, str]:
        """Feature name -> kind, as passed to `build_reference_profile`."""
        return {name: column.kind for name, column in self.features.items()}

    def columns(self) -> Iterator[tuple[str, str, ColumnProfile]]:
        """(role, name, profile) for every feature, then every prediction column."""
        for role, group in (("feature", self.features), ("prediction", self.predictions)):
            for name, column in group.items():
                yield role, name, column

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (arrays as lists, NaN as None); `from_dict` inverts it."""
        return self._meta(lambda role, index, field, array: array.tolist())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        return cls._from_meta(data, lambda ref: ref)

    def to_bytes(self) -> bytes:
        """A compact binary form: arrays in an .npz archive plus a JSON header."""
        arrays: dict[str, np.ndarray] = {}

        def stash(role: str, index: int, field: str, array: np.ndarray) -> str:
            key = f"{role}{index}.{field}"
            if array.dtype.kind == "i" and array.size:  # counts: smallest integer type
                array = array.astype(np.min_scalar_type(int(array.max())))
            arrays[key] = array
            return key

        return npz_bytes(self._meta(stash), arrays)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ReferenceProfile:
        meta, arrays = npz_read(blob)
        return cls._from_meta(meta, lambda key: arrays[key])

    def _meta(self, encode) -> dict[str, Any]:
        groups = {}
        for role, group in (("features", self.features), ("predictions", self.predictions)):
            groups[role] = {name: _column_meta(column, lambda f, a, r=role, i=i:
                                               encode(r, i, f, a))
                            for i, (name, column) in enumerate(group.items())}
        return {"format": FORMAT, "version": FORMAT_VERSION, "n_rows": self.n_rows,
                "psi_bins": self.psi_bins, "sketch_size": self.sketch_size, **groups}

    @classmethod
    def _from_meta(cls, meta: Mapping[str, Any], decode) -> ReferenceProfile:
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION}: "
                             f"{meta.get('format')!r} v{meta.get('version')!r}")
        groups = {role: {name: _column_from_meta(column, decode)
                         for name, column in meta[role].items()}
                  for role in ("features", "predictions")}
        return cls(groups["features"], groups["predictions"], int(meta["n_rows"]),
                   int(meta["psi_bins"]), int(meta["sketch_size"]))


def _column_meta(column: ColumnProfile, encode) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for field in fields(column):
        value = getattr(column, field.name)
        if field.name in column.ARRAYS:
            meta[field.name] = encode(field.name, value)
        elif isinstance(value, float):
            meta[field.name] = value if math.isfinite(value) else None
        elif isinstance(value, tuple):
            meta[field.name] = list(value)
        else:
            meta[field.name] = value
    return meta


_ARRAY_DTYPES = {"values": np.float64, "psi_edges": np.float64,
                 "counts": np.int64, "psi_counts": np.int64}


def _column_from_meta(meta: Mapping[str, Any], decode) -> ColumnProfile:
    cls = NumericProfile if meta["kind"] == "numeric" else CategoricalProfile
    kwargs: dict[str, Any] = {}
    for field in fields(cls):
        value = meta[field.name]
        if field.name in cls.ARRAYS:
            kwargs[field.name] = np.asarray(decode(value), dtype=_ARRAY_DTYPES[field.name])
        elif field.name == "categories":
            kwargs[field.name] = tuple(value)
        elif field.name in ("mean", "std", "sketch_error"):
            kwargs[field.name] = math.nan if value is None else float(value)
        else:
            kwargs[field.name] = value
    return cls(**kwargs)


def build_reference_profile(reference: pd.DataFrame, kinds: Mapping[str, str],
                            prediction_kinds: Mapping[str, str] | None = None, *,
                            psi_bins: int = DEFAULT_PSI_BINS,
                            sketch_size: int = DEFAULT_SKETCH_SIZE) -> ReferenceProfile:
    """Profile the reference (training) frame once, at training time.

    `kinds` maps feature -> 'numeric' | 'categorical' | 'boolean' (as
    `ml_assets.features.feature_kinds` returns); `prediction_kinds` does the same for
    the model-output columns of the frame (predicted class: categorical; predicted
    probabilities: numeric), which are scored as prediction drift. `psi_bins` quantile
    bins are stored for PSI; numeric columns with more than `sketch_size` distinct values
    are kept as a `sketch_size`-point quantile sketch (80 kB per column at 10,000).
    """
    prediction_kinds = dict(prediction_kinds or {})
    _check_kinds(reference, {**kinds, **prediction_kinds})
    if psi_bins < 2:
        raise ValueError(f"psi_bins must be >= 2, got {psi_bins}")
    if sketch_size < 2:
        raise ValueError(f"sketch_size must be >= 2, got {sketch_size}")

    def profile(group: Mapping[str, str]) -> dict[str, ColumnProfile]:
        return {name: profile_column(reference[name], kind, sketch_size=sketch_size,
                                     psi_bins=psi_bins) for name, kind in group.items()}

    return ReferenceProfile(profile(kinds), profile(prediction_kinds), len(reference),
                            psi_bins, sketch_size)


def _check_kinds(frame: pd.DataFrame, kinds: Mapping[str, str]) -> None:
    unknown = {name: kind for name, kind in kinds.items() if kind not in KINDS}
    if unknown:
        raise ValueError(f"unknown column kinds {unknown}; expected one of {KINDS}")
    absent = [name for name in kinds if name not in frame.columns]
    if absent:
        raise ValueError(f"reference frame has no column(s) {absent}")
