"""Days of production traffic for asset tests: rows answered by a real model, written to
the prediction log as the API writes them (one timestamp per day, champion variant)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pandas as pd

from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog


def log_day(path: Path, rows: pd.DataFrame, day: str, model, version: str = "1",
            model_name: str = "m") -> None:
    """Append `rows` to the SQLite prediction log at `path`, answered by `model` (its
    predicted class and probabilities), at 09:00 UTC on `day` (YYYY-MM-DD)."""
    stamp = dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=dt.timezone.utc)
    classes = [str(c) for c in model.classes_]
    probabilities = model.predict_proba(rows)
    log = SQLitePredictionLog(path)
    try:
        log.append_many([
            PredictionRecord(stamp, uuid.uuid4().hex, 0, model_name, version,
                             list(rows.columns), values.tolist(),
                             classes[int(p.argmax())],
                             {c: float(v) for c, v in zip(classes, p, strict=True)})
            for values, p in zip(rows.to_numpy(dtype=object), probabilities, strict=True)
        ]).result(30)
    finally:
        log.close()


def monitoring_resources(root: Path, tracking, io_manager=None) -> dict:
    """The resources of production_data and drift_scores on a test's own days under
    `root`: a filesystem IO manager (or `io_manager`) keeping the days for later
    windows, the SQLite prediction log `root`/log.db, and `tracking`'s registry."""
    from dagster import FilesystemIOManager

    from ml_assets.resources import DataSourceResource
    from ml_assets.resources.production import ProductionDataResource

    return {
        "io_manager": io_manager or FilesystemIOManager(base_dir=str(root / "storage")),
        "production": ProductionDataResource(
            prediction_log_path=str(root / "log.db"), landing_dir=str(root / "landing"),
            labels_dir=str(root / "labels")),
        "data_source": DataSourceResource(kind="breast_cancer"),
        "mlflow_tracking": tracking,
    }
