"""Null distributions of the drift statistics at a window's size, resampled from the stored
reference where no exact or asymptotic null holds, and cached per (feature, size)."""

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
    KS_EXACT_MAX_PRODUCT,
    DriftConfig,
)
from ml_assets.core.drift.profile import (
    NumericProfile,
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


def _support_test(ref: NumericProfile, statistic: float, n: int, test: str, norm: float,
                  level: float, draws: int, config: DriftConfig,
                  cache: NullCache) -> dict[str, Any]:
    """KS D or normed Wasserstein-1 against its null from the stored distribution: the
    Brownian-bridge limit (drawn once per column, scaled by sqrt(n_eff)) when
    n_eff = n m / (n + m) >= BRIDGE_MIN_N_EFF, else both samples drawn at (n, m)."""
    m = ref.n_valid
    n_eff = n * m / (n + m)
    fingerprint = _fingerprint(ref.values, ref.counts, norm)
    if n_eff < BRIDGE_MIN_N_EFF:
        null = _resampled(cache, (test, n, draws, config.seed, fingerprint),
                          lambda rng: _support_null(rng, ref.values, ref.counts, n, draws,
                                                    test) / norm)
        return _from_draws(null, statistic, level)
    limit = _resampled(cache, (test, "bridge", draws, config.seed, fingerprint),
                       lambda rng: _bridge_null(rng, ref.values, ref.counts, draws,
                                                test) / norm)
    scale = math.sqrt(n_eff)
    result = _from_draws(limit, statistic * scale, level, "Brownian-bridge limit")
    result["threshold"] /= scale
    return result


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


