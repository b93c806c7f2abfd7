"""Null distributions of the drift statistics at a window's size, resampled from the stored
reference where no exact or asymptotic null holds, cached per feature (and drawn once per
profile on a grid of day sizes, which `warm_nulls` does at training time)."""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ml_assets.core.drift.config import (
    _RESAMPLE_BLOCK,
    BRIDGE_MIN_N_EFF,
    DISCRETE_MAX_SHARE,
    GRID_MAX_REFERENCE_MULTIPLE,
    GRID_START,
    GRID_STEPS_PER_DOUBLING,
    KS_EXACT_MAX_PRODUCT,
    WASSERSTEIN_MIN_NORM,
    DriftConfig,
)
from ml_assets.core.drift.profile import (
    NumericProfile,
    ReferenceProfile,
)
from ml_assets.core.drift.stats import (
    bridge_batch,
    ks_batch,
    ks_critical,
    resample_counts,
    resampled_critical,
    resampled_pvalue,
    wasserstein_batch,
)

# -- the null cache ----------------------------------------------------------------------

class NullCache:
    """Resampled null distributions (sorted draws) by (column fingerprint, test, n, ...):
    scoring the next batch of the same size against the same profile reuses them. The
    fingerprint is a hash of the stored column, so a profile loaded again (from_bytes)
    hits the same entries. Least recently used entries beyond `max_entries` are dropped.

    `directory`: also kept on disk there (one .npy per entry, at most `max_files`, the
    least recently written dropped first), so that the next PROCESS (a Dagster run is
    one) finds them too. A draw is seeded by its key, so a stored entry is exactly what
    recomputing it would give; an unreadable file is recomputed and rewritten, and a
    directory that cannot be written only costs the recomputation."""

    def __init__(self, max_entries: int = 4096, directory: str | Path | None = None,
                 max_files: int = 4096) -> None:
        self.max_entries = max_entries
        self.directory = Path(directory) if directory is not None else None
        self.max_files = max_files
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._load(key)
        if value is not None:
            self.disk_hits += 1
        else:
            self.misses += 1
            value = compute()
            self._store(key, value)
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget the entries held in memory (files on disk stay)."""
        self._entries.clear()
        self.hits = self.disk_hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _path(self, key: tuple) -> Path | None:
        if self.directory is None:
            return None
        name = hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
        return self.directory / f"{name}.npy"

    def _load(self, key: tuple) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # truncated or foreign: recomputed and rewritten
            return None

    def _store(self, key: tuple, value: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.part")
            with open(partial, "wb") as handle:
                np.save(handle, value, allow_pickle=False)
            os.replace(partial, path)  # readers see a whole file or none
            files = sorted(path.parent.glob("*.npy"), key=lambda f: f.stat().st_mtime)
            for old in files[:max(0, len(files) - self.max_files)]:
                old.unlink(missing_ok=True)
        except OSError:
            pass  # a cache that cannot be written is only a slower cache


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


def null_grid(m: int) -> np.ndarray:
    """The day sizes whose resampled KS / Wasserstein nulls are drawn for a reference of m
    values: GRID_START, then GRID_STEPS_PER_DOUBLING sizes per doubling, while
    n m / (n + m) < BRIDGE_MIN_N_EFF (above it the size-free bridge limit serves) and
    n <= GRID_MAX_REFERENCE_MULTIPLE m (larger days use the last size's null: n m / (n + m)
    grows by at most 25 % beyond it, so its threshold is at most ~12 % too high)."""
    sizes: list[int] = []
    step = 0
    while True:
        size = round(GRID_START * 2 ** (step / GRID_STEPS_PER_DOUBLING))
        if size * m / (size + m) >= BRIDGE_MIN_N_EFF or size > GRID_MAX_REFERENCE_MULTIPLE * m:
            return np.array(sizes, dtype=np.int64)
        if not sizes or size > sizes[-1]:
            sizes.append(size)
        step += 1


def _grid_at_or_below(m: int, n: int) -> tuple[np.ndarray, int]:
    """(the grid of m, the index of its largest size <= n; -1 when n < GRID_START)."""
    sizes = null_grid(m)
    return sizes, int(np.searchsorted(sizes, n, side="right")) - 1


def _support_test(ref: NumericProfile, statistic: float, n: int, test: str, norm: float,
                  level: float, draws: int, config: DriftConfig,
                  cache: NullCache) -> dict[str, Any]:
    """KS D or normed Wasserstein-1 against its null from the stored distribution: the
    Brownian-bridge limit (drawn once per column, scaled by sqrt(n_eff)) when
    n_eff = n m / (n + m) >= BRIDGE_MIN_N_EFF; else the null at the grid size at or below
    n (drawn once per column for the whole grid: conservative, as a day of fewer rows has
    the larger statistic), or, under GRID_START rows, both samples drawn at (n, m)."""
    m = ref.n_valid
    n_eff = n * m / (n + m)
    fingerprint = _fingerprint(ref.values, ref.counts, norm)
    if n_eff < BRIDGE_MIN_N_EFF:
        sizes, at = _grid_at_or_below(m, n)
        if at < 0:
            null = _resampled(cache, (test, n, draws, config.seed, fingerprint),
                              lambda rng: _support_null(rng, ref.values, ref.counts, n,
                                                        draws, test) / norm)
            return _from_draws(null, statistic, level)
        grid = _grid_nulls(cache, ref, test, norm, draws, config.seed, fingerprint)
        return _from_draws(grid[at], statistic, level,
                           f"grid size {sizes[at]} <= {n} rows")
    limit = _bridge_limit(cache, ref, test, norm, draws, config.seed, fingerprint)
    scale = math.sqrt(n_eff)
    result = _from_draws(limit, statistic * scale, level, "Brownian-bridge limit")
    result["threshold"] /= scale
    return result


def _bridge_limit(cache: NullCache, ref: NumericProfile, test: str, norm: float, draws: int,
                  seed: int, fingerprint: str) -> np.ndarray:
    return _resampled(cache, (test, "bridge", draws, seed, fingerprint),
                      lambda rng: _bridge_null(rng, ref.values, ref.counts, draws,
                                               test) / norm)


def _grid_nulls(cache: NullCache, ref: NumericProfile, test: str, norm: float, draws: int,
                seed: int, fingerprint: str) -> np.ndarray:
    """(grid sizes x draws) sorted null draws of the column, one cache entry."""
    sizes = null_grid(ref.n_valid)
    key = (test, "grid", GRID_START, GRID_STEPS_PER_DOUBLING, GRID_MAX_REFERENCE_MULTIPLE,
           draws, seed, fingerprint)
    return _resampled(cache, key, lambda rng: _grid_null(rng, ref.values, ref.counts, sizes,
                                                          draws, test) / norm)


def _grid_null(rng: np.random.Generator, values: np.ndarray, counts: np.ndarray,
               sizes: np.ndarray, draws: int, test: str) -> np.ndarray:
    """KS D or Wasserstein-1 between a reference of m and a batch of g values, both drawn
    from the stored distribution, B times for every g of `sizes`. One reference draw per
    row serves every size, and the batch of each size is the one of the size before plus
    the rows in between (a multinomial of the difference): each size's null is exactly
    its own, at the cost of one draw of the largest batch."""
    shares = counts / counts.sum()
    m = int(counts.sum())
    out = np.empty((sizes.size, draws))
    start = 0
    for rows in _blocks(draws, values.size):
        ref_cdf = np.cumsum(resample_counts(rng, m, shares, rows), axis=1)
        cur = np.zeros((rows, values.size), dtype=np.int64)
        previous = 0
        for index, size in enumerate(sizes.tolist()):
            cur += resample_counts(rng, size - previous, shares, rows)
            previous = size
            cur_cdf = np.cumsum(cur, axis=1)
            if test == "ks":
                gap = ref_cdf * size
                gap -= cur_cdf * m
                out[index, start:start + rows] = np.maximum(
                    gap.max(axis=1), -gap.min(axis=1)) / (m * size)
            else:
                gap = np.abs(ref_cdf[:, :-1] / m - cur_cdf[:, :-1] / size)
                out[index, start:start + rows] = gap @ np.diff(values)
        start += rows
    return out


def uses_resampled_support(ref: NumericProfile, test: str, config: DriftConfig) -> bool:
    """Whether a numeric column's value test needs resampled KS / Wasserstein nulls."""
    return test == "wasserstein" or (test == "ks" and bool(
        ref.exact and ref.values.size <= DISCRETE_MAX_SHARE * ref.n_valid
        and ref.values.size <= config.discrete_max_support))


def warm_nulls(profile: ReferenceProfile, config: DriftConfig, cache: NullCache) -> int:
    """Draw into `cache` every resampled KS / Wasserstein null that scoring batches of any
    size against `profile` with `config` will read (per such column: the grid of day
    sizes and the bridge limit). Meant for training time (the reference_profile asset),
    so that no day's scoring draws one. Returns how many were drawn (not yet cached)."""
    before = cache.misses
    if not config.calibrated:
        return 0
    for group in (profile.features, profile.predictions):
        draws = config.draws_for(len(group))
        for name, ref in group.items():
            if not isinstance(ref, NumericProfile) or ref.n_valid == 0:
                continue
            test = config.test_for(name, ref.kind, ref.n_valid)
            if not uses_resampled_support(ref, test, config):
                continue
            norm = 1.0 if test == "ks" else max(ref.std, WASSERSTEIN_MIN_NORM)
            fingerprint = _fingerprint(ref.values, ref.counts, norm)
            if null_grid(ref.n_valid).size:
                _grid_nulls(cache, ref, test, norm, draws, config.seed, fingerprint)
            _bridge_limit(cache, ref, test, norm, draws, config.seed, fingerprint)
    return cache.misses - before


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


