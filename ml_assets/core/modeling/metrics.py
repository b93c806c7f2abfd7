"""Held-out metrics, threshold gates, the confusion-matrix and residual pictures."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

METRIC_NAMES = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc")


def classification_metrics(y_true, y_pred, proba: np.ndarray, classes) -> dict[str, float]:
    """Accuracy, weighted precision/recall/F1 and ROC AUC (one-vs-rest, weighted,
    when multiclass). `proba` columns follow `classes`."""
    classes = list(classes)
    metrics = {
        "accuracy": accuracy_score(y_true, y_pred),
        "precision_weighted": precision_score(y_true, y_pred, average="weighted",
                                              zero_division=0),
        "recall_weighted": recall_score(y_true, y_pred, average="weighted", zero_division=0),
        "f1_weighted": f1_score(y_true, y_pred, average="weighted", zero_division=0),
    }
    present = set(pd.unique(np.asarray(y_true)))
    if len(present) < 2:
        metrics["roc_auc"] = float("nan")
    elif len(classes) == 2:
        positive = label_binarize(np.asarray(y_true), classes=classes).ravel()
        metrics["roc_auc"] = roc_auc_score(positive, proba[:, 1])
    else:
        metrics["roc_auc"] = roc_auc_score(np.asarray(y_true), proba, multi_class="ovr",
                                           average="weighted", labels=classes)
    return {name: float(value) for name, value in metrics.items()}


def failing_metrics(metrics: dict[str, float], thresholds: dict[str, float],
                    maximums: dict[str, float] | None = None) -> dict[str, str]:
    """Metric -> reason, for every metric below its minimum (`thresholds`) or above its
    maximum (`maximums`, for lower-is-better metrics such as RMSE); NaN counts as
    failing. The reason names the direction: "0.1200 < 0.3000", "61.2 > 50.0"."""
    failures = {}
    bounds = [(name, threshold, "min") for name, threshold in thresholds.items()]
    bounds += [(name, threshold, "max") for name, threshold in (maximums or {}).items()]
    for name, threshold, direction in bounds:
        value = metrics.get(name)
        if value is None:
            failures[name] = "was not computed"
        elif not np.isfinite(value):
            failures[name] = f"{value} is not a number"
        elif direction == "min" and value < threshold:
            failures[name] = f"{value:.4f} < {threshold:.4f}"
        elif direction == "max" and value > threshold:
            failures[name] = f"{value:.4f} > {threshold:.4f}"
    return failures


def residual_plot_png(y_true, y_pred, title: str = "Residuals") -> bytes:
    """Residual (true - predicted) against predicted value, as a PNG (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(y_pred, dtype=np.float64)
    residuals = truth - predicted
    fig, (scatter, histogram) = plt.subplots(1, 2, figsize=(8.0, 3.4), dpi=100)
    scatter.scatter(predicted, residuals, s=10, alpha=0.6)
    scatter.axhline(0.0, color="black", linewidth=1)
    scatter.set_xlabel("predicted")
    scatter.set_ylabel("true - predicted")
    scatter.set_title(title)
    histogram.hist(residuals, bins=min(30, max(5, len(residuals) // 5)))
    histogram.set_xlabel("true - predicted")
    histogram.set_ylabel("rows")
    histogram.set_title("Residual distribution")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def confusion_table(y_true, y_pred, classes) -> pd.DataFrame:
    matrix = confusion_matrix(y_true, y_pred, labels=list(classes))
    return pd.DataFrame(matrix, index=[f"true {c}" for c in classes],
                        columns=[f"pred {c}" for c in classes])


def confusion_matrix_png(table: pd.DataFrame, title: str = "Confusion matrix") -> bytes:
    """The confusion matrix as a PNG (headless matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(table)
    fig, ax = plt.subplots(figsize=(2.0 + 0.9 * n, 1.6 + 0.8 * n), dpi=100)
    values = table.to_numpy()
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(n), [c.removeprefix("pred ") for c in table.columns], rotation=30,
                  ha="right")
    ax.set_yticks(range(n), [c.removeprefix("true ") for c in table.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = values.max() if values.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(values[i, j]), ha="center", va="center",
                    color="white" if values[i, j] > top / 2 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
