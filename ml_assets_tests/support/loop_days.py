"""Days of breast-cancer traffic for the retraining loop (the 18-day replay through
`build_sensor_context` and the same loop under the real daemon): calm days drawn from the
held-out rows, and a harmful shift that the model's own features carry."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_assets.core.data.datasets import load_breast_cancer_frame


def calm_rows(held_out: pd.DataFrame, rng: np.random.Generator, size: int) -> pd.DataFrame:
    """`size` rows drawn (with replacement) from the held-out split: no drift."""
    return held_out.iloc[rng.integers(0, len(held_out), size)].reset_index(drop=True)


def conflicting_rows(pipeline, kept: set[str], rng: np.random.Generator,
                     size: int) -> pd.DataFrame:
    """Benign rows whose values of two of the model's features (`kept`) come from
    malignant rows: the pair that leaves `pipeline` least sure (a harmful shift)."""
    frame = load_breast_cancer_frame()
    labels = frame.pop("diagnosis").astype(str)
    benign = frame[labels == "benign"].iloc[rng.integers(0, 300, size)].reset_index(drop=True)
    malignant = frame[labels == "malignant"].iloc[rng.integers(0, 200, size)].reset_index(
        drop=True)
    ordered = sorted(kept)
    candidates = []
    for i, first in enumerate(ordered):
        for second in ordered[i + 1:]:
            rows = benign.copy()
            rows[[first, second]] = malignant[[first, second]]
            confidence = pipeline.predict_proba(rows).max(axis=1).mean()
            candidates.append((confidence, first, second, rows))
    return min(candidates, key=lambda c: c[0])[3]


def ignored_shift(rows: pd.DataFrame, kept: set[str], stds: float = 3.0) -> pd.DataFrame:
    """`rows` with every feature the model does NOT use shifted by `stds` standard
    deviations (of the whole table): drift the model cannot feel."""
    features = load_breast_cancer_frame().drop(columns="diagnosis")
    ignored = [c for c in features.columns if c not in kept]
    shifted = rows.copy()
    shifted[ignored] = shifted[ignored] + stds * features[ignored].std()
    return shifted
