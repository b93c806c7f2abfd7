"""Held-out metrics, threshold gates and the confusion-matrix picture."""

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


def failing_metrics(metrics: dict[str, float], thresholds: dict[str, float]) -> dict[str, str]:
    """Metric -> reason, for every metric below its threshold (NaN counts as failing)."""
    failures = {}
    for name, threshold in thresholds.items():
        value = metrics.get(name)
        if value is None:
            failures[name] = "was not computed"
        elif not np.isfinite(value) or value < threshold:
            failures[name] = f"{value:.4f} < {threshold:.4f}"
    return failures


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
