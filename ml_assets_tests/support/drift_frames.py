"""The A/A frame of the drift calibration: ten columns of every kind the drift tests
meet (normal, lognormal, heavy-tailed, integers with ties, missing values; balanced,
imbalanced, rare and long-tailed categories; a flag), drawn vectorised and seeded by
the caller. Shared by the suite's A/A simulation and benchmarks/drift_power.py; and a
small model world for the drift check's A/A and power (`model_world`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


MODEL_FEATURES = [f"x{i}" for i in range(6)]


def model_world(seed: int = 5) -> tuple[object, Callable[..., pd.DataFrame]]:
    """A logistic regression on 6 N(0, 1) features (labels from x0-x2), and its reference
    profile: features from 2,000 training rows, outputs on 1,000 held-out rows. Returns
    (profile, day) where day(n, shift=0.0, shifted=0) draws n fresh rows, adds `shift`
    std to the first `shifted` features and appends the model's outputs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ml_assets.core.drift.profile import build_reference_profile
    from ml_assets.core.drift.scoring import model_outputs

    rng = np.random.default_rng(seed)
    weights = np.array([1.5, -1.0, 0.8, 0, 0, 0])

    def draw(n: int) -> tuple[pd.DataFrame, np.ndarray]:
        x = rng.normal(size=(n, len(MODEL_FEATURES)))
        y = (x @ weights + rng.logistic(size=n) > 0).astype(int)
        return pd.DataFrame(x, columns=MODEL_FEATURES), np.where(y, "yes", "no")

    X_train, y_train = draw(2_000)
    X_test, _ = draw(1_000)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_train, y_train)
    features = build_reference_profile(X_train, dict.fromkeys(MODEL_FEATURES, "numeric"))
    outputs, kinds = model_outputs(model, X_test)
    predictions = build_reference_profile(outputs, {}, kinds)
    profile = dataclasses.replace(features, predictions=predictions.predictions)

    def day(n: int, shift: float = 0.0, shifted: int = 0) -> pd.DataFrame:
        x, _ = draw(n)
        x.iloc[:, :shifted] += shift
        outputs, _ = model_outputs(model, x)
        return pd.concat([x, outputs], axis=1)

    return profile, day
