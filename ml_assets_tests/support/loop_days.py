"""Days of breast-cancer traffic for the retraining loop (the 18-day replay through
`build_sensor_context` and the same loop under the real daemon): calm days drawn from the
held-out rows, and a harmful shift that the model's own features carry."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.data.preprocessing import selected_features


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


def train_loop_champion(instance, resources: dict):
    """The loop's champion: the training job on breast cancer, 30 trees, 5 of 30
    features kept (SelectKBest). Returns (the job's result, the trained model, the
    names of the features the model uses)."""
    from ml_assets.definitions import defs

    trained = defs.resolve_job_def("train_model").execute_in_process(
        instance=instance, resources=resources, run_config={"ops": {
            "trained_model": {"config": {"n_estimators": 30, "cv_folds": 2}},
            "feature_preprocessor": {"config": {"k_best": 5}}}})
    assert trained.success
    kept = {name.split("__", 1)[-1] for name in
            selected_features(trained.output_for_node("feature_preprocessor"))}
    return trained, trained.output_for_node("trained_model"), kept
