"""The A/A frame of the drift calibration: ten columns of every kind the drift tests
meet (normal, lognormal, heavy-tailed, integers with ties, missing values; balanced,
imbalanced, rare and long-tailed categories; a flag), drawn vectorised and seeded by
the caller. Shared by the suite's A/A simulation and benchmarks/drift_power.py."""

from __future__ import annotations

import numpy as np
import pandas as pd

_IMBALANCED = np.array([0.90, 0.07, 0.02, 0.01])
_RARE = np.r_[np.full(5, 0.19), np.full(50, 0.001)]
_RARE /= _RARE.sum()
_ZIPF = 1.0 / np.arange(1, 301) ** 1.3
_ZIPF /= _ZIPF.sum()
_LABELS = np.array([f"c{i}" for i in range(300)], dtype=object)
KINDS = {"normal": "numeric", "lognormal": "numeric", "student_t2": "numeric",
         "poisson_ints": "numeric", "with_missing": "numeric",
         "balanced": "categorical", "imbalanced": "categorical", "rare": "categorical",
         "long_tail": "categorical", "flag": "boolean"}
NUMERIC = [name for name, kind in KINDS.items() if kind == "numeric"]
CATEGORICAL = [name for name, kind in KINDS.items() if kind != "numeric"]


def _choice(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    return _LABELS[np.searchsorted(np.cumsum(probs), rng.random(n) * probs.sum())]


def mixed_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """n rows of the 10-column A/A frame (vectorised)."""
    with_missing = rng.normal(size=n)
    with_missing[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({
        "normal": rng.normal(size=n), "lognormal": rng.lognormal(size=n),
        "student_t2": rng.standard_t(2, size=n), "poisson_ints": rng.poisson(3, size=n),
        "with_missing": with_missing,
        "balanced": _LABELS[rng.integers(0, 4, size=n)],
        "imbalanced": _choice(rng, _IMBALANCED, n), "rare": _choice(rng, _RARE, n),
        "long_tail": _choice(rng, _ZIPF, n), "flag": rng.random(n) < 0.3})
