"""The calibrator fitted at training time, stored as a JSON artifact of the model's
MLflow run beside its reference profile, and read back.

A classifier's artifact is its `Calibrator` (numbers only, never pickle); a model that
cannot be estimated (a regressor, or held-out rows too few to calibrate) gets a "not
estimated" record with the reason, so the daily asset says why instead of failing.

Regressors are not estimated, on purpose: a regressor gives no per-row confidence, and
direct loss estimation would need a second model of the error fitted on the same few
held-out rows, whose own accuracy under a shifted population nobody can check before the
labels come. Their retrains wait for a realised drop (`evidence.realised_drop`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_assets.core.estimation.calibration import CalibrationError, Calibrator, fit_calibrator
from ml_assets.core.modeling.metrics import classification_metrics

ARTIFACT_DIR = "performance_estimation"
ARTIFACT = f"{ARTIFACT_DIR}/calibrator.json"
NOT_ESTIMATED_FORMAT = "ml_platform.not_estimated/1"
REGRESSION_REASON = (
    "a regressor gives no per-row confidence to estimate from; direct loss estimation "
    "would need a second model of the error fitted on the same held-out rows, whose "
    "accuracy on a shifted population cannot be checked before labels arrive: retraining "
    "waits for a realised drop (live_performance)")


@dataclass(frozen=True)
class NotEstimated:
    reason: str

    def to_json(self) -> str:
        return json.dumps({"format": NOT_ESTIMATED_FORMAT, "reason": self.reason})


def calibrate_model(pipeline, X_held_out, y_held_out, task: str, seed: int = 0
                    ) -> Calibrator | NotEstimated:
    """The calibrator of `pipeline` on its held-out rows, or why there is none."""
    if task == "regression":
        return NotEstimated(REGRESSION_REASON)
    if not hasattr(pipeline, "predict_proba"):
        return NotEstimated("the classifier has no predict_proba: no confidence to "
                            "estimate from")
    proba = pipeline.predict_proba(X_held_out)
    classes = [str(c) for c in pipeline.classes_]
    try:
        calibrator = fit_calibrator(proba, y_held_out, classes, seed=seed)
    except CalibrationError as exc:
        return NotEstimated(f"the held-out rows cannot calibrate the model: {exc}")
    predicted = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    truth = np.asarray([str(v) for v in np.asarray(y_held_out)], dtype=object)
    reference = classification_metrics(truth, predicted, proba, classes)
    return Calibrator(calibrator.classes, calibrator.per_class, calibrator.held_out_rows,
                      calibrator.rule, {k: v for k, v in reference.items()
                                        if np.isfinite(v)})


def load_estimation(text: str | bytes) -> Calibrator | NotEstimated:
    """A stored artifact read back (checked field by field; a clear error otherwise)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"calibrator artifact: not JSON ({exc})") from None
    if isinstance(data, dict) and data.get("format") == NOT_ESTIMATED_FORMAT:
        return NotEstimated(str(data.get("reason", "")))
    return Calibrator.from_json(text)


def log_estimation(client, run_id: str, model: Calibrator | NotEstimated) -> None:
    """Write the artifact to the MLflow run `run_id` (ARTIFACT)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calibrator.json"
        path.write_text(model.to_json())
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)


def read_estimation(run_id: str, tracking_uri: str) -> Calibrator | NotEstimated:
    """The artifact of run `run_id`; a run trained before calibrators existed reads as
    NotEstimated with that reason."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT,
                                                    tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - an older run has none: say so
        return NotEstimated(f"run {run_id} has no calibrator ({type(exc).__name__}); it was "
                            "trained before performance estimation: retrain to create one")
    return load_estimation(Path(local).read_bytes())
