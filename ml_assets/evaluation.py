"""Evaluation: held-out metrics and the blocking quality gate (classification or
regression: each metric gated in its own direction)."""

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

from ml_assets.core.data.preprocessing import Split
from ml_assets.core.modeling.metrics import (
    classification_metrics,
    confusion_matrix_png,
    confusion_table,
    failing_metrics,
    residual_plot_png,
)
from ml_assets.core.modeling.pipeline import TrainedModel
from ml_assets.core.modeling.tasks import regression_metrics
from ml_assets.resources import MlflowTracking
from ml_assets.settings import PlatformSettings
from ml_assets.shared import METRICS_CHECK

_DEFAULT = PlatformSettings.from_env().metric_threshold
CLASSIFICATION_GATES = ("min_accuracy", "min_precision_weighted", "min_recall_weighted",
                        "min_f1_weighted", "min_roc_auc")
DEFAULT_MIN_R2 = 0.3


class MetricsGateConfig(Config):
    """Classification thresholds (min_*: higher is better) apply to classifiers only;
    the regression ones (min_r2, max_rmse, max_mae, max_mape: lower is better) to
    regressors only. An unset (null) regression threshold is not gated."""

    min_accuracy: float = Field(default=_DEFAULT, description="Minimum held-out accuracy.")
    min_precision_weighted: float = Field(default=_DEFAULT,
                                          description="Minimum weighted precision.")
    min_recall_weighted: float = Field(default=_DEFAULT, description="Minimum weighted recall.")
    min_f1_weighted: float = Field(default=_DEFAULT, description="Minimum weighted F1.")
    min_roc_auc: float = Field(default=_DEFAULT,
                               description="Minimum ROC AUC (one-vs-rest when multiclass).")
    min_r2: float | None = Field(default=DEFAULT_MIN_R2, description="Regression: minimum "
                                 "held-out R² (default 0.3); null: not gated.")
    max_rmse: float | None = Field(default=None, description="Regression: maximum held-out "
                                   "RMSE, in the target's units; null (default): not gated.")
    max_mae: float | None = Field(default=None, description="Regression: maximum held-out "
                                  "MAE, in the target's units; null (default): not gated.")
    max_mape: float | None = Field(default=None, description="Regression: maximum held-out "
                                   "MAPE (a fraction: 0.1 = 10%); null (default): not gated. "
                                   "Fails when MAPE is undefined (a true value is 0).")

    def thresholds(self, task: str = "multiclass") -> dict[str, float]:
        """Metric -> minimum (higher is better) for `task`."""
        values = self.model_dump()
        if task == "regression":
            return {"r2": self.min_r2} if self.min_r2 is not None else {}
        return {name.removeprefix("min_"): values[name] for name in CLASSIFICATION_GATES}

    def maximums(self, task: str = "multiclass") -> dict[str, float]:
        """Metric -> maximum (lower is better) for `task` (regression only)."""
        if task != "regression":
            return {}
        return {name.removeprefix("max_"): value for name, value in
                (("max_rmse", self.max_rmse), ("max_mae", self.max_mae),
                 ("max_mape", self.max_mape)) if value is not None}


def _log_held_out(mlflow_tracking: MlflowTracking, dagster_run_id: str,
                  trained_model: TrainedModel, metrics: dict[str, float], picture: str,
                  png: bytes, texts: dict[str, str] | None = None) -> None:
    """The held-out metrics as test_* on the run and the logged model, the picture and
    any text artifacts."""
    with mlflow_tracking.active_run(dagster_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()},
                           model_id=trained_model.model_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / picture
            path.write_bytes(png)
            mlflow.log_artifact(str(path))
        for name, text in (texts or {}).items():
            mlflow.log_text(text, name)


@asset(
    group_name="training",
    kinds={"scikit-learn", "mlflow"},
    check_specs=[AssetCheckSpec(
        METRICS_CHECK, asset="model_metrics", blocking=True,
        description="Every held-out metric is on the right side of its threshold "
        "(classification: at or above, default 0.8; regression: R² at or above 0.3, RMSE, "
        "MAE, MAPE at or below theirs when set); a failing model is never registered or "
        "promoted.")],
)
def model_metrics(context: AssetExecutionContext, config: MetricsGateConfig,
                  trained_model: TrainedModel, data_split: Split,
                  mlflow_tracking: MlflowTracking) -> Iterator:
    """Held-out metrics logged to MLflow (run and logged model) and gated.

    Classification: accuracy, weighted precision/recall/F1 and ROC AUC with a
    confusion-matrix picture. Regression: RMSE, MAE, R² and MAPE (when no true value
    is 0) with a residual plot."""
    if trained_model.is_regression:
        yield from _regression(context, config, trained_model, data_split, mlflow_tracking)
        return
    pipeline = trained_model.pipeline
    proba = pipeline.predict_proba(data_split.X_test)
    predicted = pipeline.classes_[proba.argmax(axis=1)]
    metrics = classification_metrics(data_split.y_test, predicted, proba, pipeline.classes_)
    table = confusion_table(data_split.y_test, predicted, pipeline.classes_)
    png = confusion_matrix_png(table)
    _log_held_out(mlflow_tracking, context.run_id, trained_model, metrics,
                  "confusion_matrix.png", png, {"confusion_matrix.csv": table.to_csv()})
    image = base64.b64encode(png).decode()
    yield Output(metrics, metadata={
        **{name: MetadataValue.float(value) for name, value in metrics.items()},
        "task": trained_model.task,
        "test_rows": len(data_split.X_test),
        "mlflow_run_id": trained_model.mlflow_run_id,
        "confusion_matrix": MetadataValue.md(table.to_markdown()),
        "confusion_matrix_plot": MetadataValue.md(f"![confusion matrix](data:image/png;base64,"
                                                  f"{image})"),
    })
    yield _gate(config, trained_model.task, metrics)


def _gate(config: MetricsGateConfig, task: str, metrics: dict[str, float]) -> AssetCheckResult:
    thresholds, maximums = config.thresholds(task), config.maximums(task)
    failures = failing_metrics(metrics, thresholds, maximums)
    return AssetCheckResult(
        check_name=METRICS_CHECK,
        passed=not failures,
        severity=AssetCheckSeverity.ERROR,
        description=("all metrics pass" if not failures else
                     "outside threshold: " + "; ".join(f"{k} {v}" for k, v in failures.items())
                     + gate_settings_hint(failures, maximums)),
        metadata={
            "task": task,
            "failing_metrics": MetadataValue.json(failures),
            "thresholds": MetadataValue.json(thresholds),
            "maximums": MetadataValue.json(maximums),
            "metrics": MetadataValue.json(metrics),
        },
    )


def gate_settings_hint(failures: dict[str, str], maximums: dict[str, float]) -> str:
    """The settings that move the failing thresholds, for the refusal's sentence."""
    fields = [f"{'max' if name in maximums else 'min'}_{name}" for name in failures]
    hint = f" (thresholds: model_metrics config {', '.join(fields)}"
    if any(field in CLASSIFICATION_GATES for field in fields):
        hint += f"; ML_METRIC_THRESHOLD sets every classification minimum, now {_DEFAULT:g}"
    return hint + ")"


def _regression(context: AssetExecutionContext, config: MetricsGateConfig,
                trained_model: TrainedModel, data_split: Split,
                mlflow_tracking: MlflowTracking) -> Iterator:
    predicted = trained_model.pipeline.predict(data_split.X_test)
    computed = regression_metrics(data_split.y_test, predicted)
    # MAPE is undefined when a true value is 0: left out rather than reported as NaN.
    metrics = {k: v for k, v in computed.items() if k != "mape" or v == v}
    png = residual_plot_png(data_split.y_test, predicted)
    _log_held_out(mlflow_tracking, context.run_id, trained_model, metrics, "residuals.png",
                  png)
    image = base64.b64encode(png).decode()
    yield Output(metrics, metadata={
        **{name: MetadataValue.float(value) for name, value in metrics.items()},
        "task": trained_model.task,
        "mape_defined": "mape" in metrics,
        "test_rows": len(data_split.X_test),
        "mlflow_run_id": trained_model.mlflow_run_id,
        "residual_plot": MetadataValue.md(f"![residuals](data:image/png;base64,{image})"),
    })
    yield _gate(config, trained_model.task, metrics)
