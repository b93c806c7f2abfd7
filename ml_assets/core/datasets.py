"""Where raw data comes from: a packaged dataset, user files, or a generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BREAST_CANCER_TARGET = "diagnosis"


class DataSourceError(ValueError):
    """Raised when a data source cannot produce a usable frame; the message says why."""


def load_breast_cancer_frame() -> pd.DataFrame:
    """scikit-learn's breast cancer data (569 rows, 30 named numeric features).

    It ships inside scikit-learn, so nothing is downloaded. The target column
    `diagnosis` holds the class names ("malignant"/"benign").
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    names = np.asarray(bunch.target_names)
    frame[BREAST_CANCER_TARGET] = names[frame.pop("target").to_numpy()]
    return frame


_READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def load_tabular_files(path: str | Path, target: str) -> pd.DataFrame:
    """Read one CSV/Parquet file, or every such file in a directory (sorted by name).

    Files in a directory must share columns; a `source_file` column is not added
    so that the schema stays the user's own.
    """
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"data path {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _READERS)
        if not files:
            raise DataSourceError(f"directory {path} holds no .csv or .parquet files")
    else:
        if path.suffix.lower() not in _READERS:
            raise DataSourceError(f"{path} is not a .csv or .parquet file")
        files = [path]
    frames = []
    for file in files:
        try:
            frames.append(_READERS[file.suffix.lower()](file))
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise DataSourceError(f"could not read {file}: {exc}") from exc
    columns = list(frames[0].columns)
    for file, frame in zip(files, frames, strict=False):
        if list(frame.columns) != columns:
            raise DataSourceError(
                f"{file} has columns {list(frame.columns)}, expected {columns} like {files[0]}"
            )
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if target not in frame.columns:
        raise DataSourceError(
            f"target column {target!r} is not in {path}; columns are {list(frame.columns)}"
        )
    return frame


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic classification dataset."""

    n_rows: int = 10_000
    n_numeric: int = 20
    n_categorical: int = 0
    n_classes: int = 2
    n_categories: int = 5
    missing_fraction: float = 0.0
    shift: float = 0.0
    class_sep: float = 1.0
    seed: int = 0
    target: str = "label"

    @property
    def numeric_columns(self) -> list[str]:
        return [f"num_{i:02d}" for i in range(self.n_numeric)]

    @property
    def categorical_columns(self) -> list[str]:
        return [f"cat_{i:02d}" for i in range(self.n_categorical)]

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self.n_classes)]

    @property
    def category_names(self) -> list[str]:
        return [f"c{i}" for i in range(self.n_categories)]


def make_synthetic(spec: SyntheticSpec) -> pd.DataFrame:
    """A seeded classification frame: class-dependent Gaussian numerics, categoricals
    whose frequencies depend on the class, optional missing values, and an optional
    covariate shift (`shift` standard deviations added to the first half of the
    numeric columns) for drift demos. Same spec, same frame, bit for bit.
    """
    if spec.n_rows < 1 or spec.n_classes < 2 or spec.n_numeric + spec.n_categorical < 1:
        raise DataSourceError(
            "synthetic data needs n_rows >= 1, n_classes >= 2 and at least one feature"
        )
    rng = np.random.default_rng(spec.seed)
    y = rng.integers(0, spec.n_classes, size=spec.n_rows)
    # Class centroids drawn once; float32 draws keep 1M x 30 cheap in memory.
    centroids = rng.normal(0.0, spec.class_sep, size=(spec.n_classes, spec.n_numeric))
    numeric = rng.standard_normal((spec.n_rows, spec.n_numeric), dtype=np.float32)
    numeric += centroids[y].astype(np.float32)
    if spec.shift:
        numeric[:, : max(1, spec.n_numeric // 2)] += np.float32(spec.shift)
    data: dict[str, np.ndarray] = {
        name: numeric[:, i].astype(np.float64) for i, name in enumerate(spec.numeric_columns)
    }
    categories = np.asarray(spec.category_names, dtype=object)
    for name in spec.categorical_columns:
        # Each class prefers a different category, so categoricals carry signal.
        preferred = rng.integers(0, spec.n_categories, size=spec.n_classes)
        noise = rng.integers(0, spec.n_categories, size=spec.n_rows)
        codes = np.where(rng.random(spec.n_rows) < 0.6, preferred[y], noise)
        data[name] = categories[codes]
    frame = pd.DataFrame(data)
    if spec.missing_fraction > 0:
        feature_names = list(frame.columns)
        mask = rng.random((spec.n_rows, len(feature_names))) < spec.missing_fraction
        for i, name in enumerate(feature_names):
            frame.loc[mask[:, i], name] = np.nan if frame[name].dtype.kind == "f" else None
    frame[spec.target] = np.asarray(spec.class_names, dtype=object)[y]
    return frame
