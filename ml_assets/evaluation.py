"""Evaluation: held-out metrics and the blocking quality gate."""

import base64
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from ml_assets.core.features import Split
from ml_assets.core.metrics import (
    classification_metrics,
    confusion_matrix_png,
    confusion_table,
    failing_metrics,
)
from ml_assets.core.modeling import TrainedModel
from ml_assets.resources import MlflowTracking
from ml_assets.settings import PlatformSettings

METRICS_CHECK = "metrics_above_thresholds"
_DEFAULT = PlatformSettings.from_env().metric_threshold


class MetricsGateConfig(Config):
    min_accuracy: float = Field(default=_DEFAULT, description="Minimum held-out accuracy.")
    min_precision_weighted: float = Field(default=_DEFAULT,
                                          description="Minimum weighted precision.")
    min_recall_weighted: float = Field(default=_DEFAULT, description="Minimum weighted recall.")
    min_f1_weighted: float = Field(default=_DEFAULT, description="Minimum weighted F1.")
    min_roc_auc: float = Field(default=_DEFAULT,
                               description="Minimum ROC AUC (one-vs-rest when multiclass).")

    def thresholds(self) -> dict[str, float]:
        return {name.removeprefix("min_"): value for name, value in self.model_dump().items()}


@asset(
    group_name="training",
    kinds={"scikit-learn", "mlflow"},
    check_specs=[AssetCheckSpec(
        METRICS_CHECK, asset="model_metrics", blocking=True,
        description="Every held-out metric is at or above its threshold (default 0.8); "
        "a failing model is never registered or promoted.")],
)
def model_metrics(context: AssetExecutionContext, config: MetricsGateConfig,
                  trained_model: TrainedModel, data_split: Split,
                  mlflow_tracking: MlflowTracking) -> Iterator:
    """Accuracy, weighted precision/recall/F1 and ROC AUC on the held-out split,
    logged to MLflow (run and logged model) with a confusion-matrix picture."""
    pipeline = trained_model.pipeline
    proba = pipeline.predict_proba(data_split.X_test)
    predicted = pipeline.classes_[proba.argmax(axis=1)]
    metrics = classification_metrics(data_split.y_test, predicted, proba, pipeline.classes_)
    table = confusion_table(data_split.y_test, predicted, pipeline.classes_)
    png = confusion_matrix_png(table)
    with mlflow_tracking.active_run(context.run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()},
                           model_id=trained_model.model_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "confusion_matrix.png"
            path.write_bytes(png)
            mlflow.log_artifact(str(path))
            mlflow.log_text(table.to_csv(), "confusion_matrix.csv")
    thresholds = config.thresholds()
    failures = failing_metrics(metrics, thresholds)
    image = base64.b64encode(png).decode()
    yield Output(metrics, metadata={
        **{name: MetadataValue.float(value) for name, value in metrics.items()},
        "test_rows": len(data_split.X_test),
        "mlflow_run_id": trained_model.mlflow_run_id,
        "confusion_matrix": MetadataValue.md(table.to_markdown()),
        "confusion_matrix_plot": MetadataValue.md(f"![confusion matrix](data:image/png;base64,"
                                                  f"{image})"),
    })
    yield AssetCheckResult(
        check_name=METRICS_CHECK,
        passed=not failures,
        severity=AssetCheckSeverity.ERROR,
        description=("all metrics pass" if not failures else
                     "below threshold: " + "; ".join(f"{k} {v}" for k, v in failures.items())),
        metadata={
            "failing_metrics": MetadataValue.json(failures),
            "thresholds": MetadataValue.json(thresholds),
            "metrics": MetadataValue.json(metrics),
        },
    )
