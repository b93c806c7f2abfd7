"""Class labels encoded by the platform for estimators that need numbers.

XGBoost's classifiers (and any estimator listed in NUMERIC_LABEL_ESTIMATORS) refuse
class labels that are not 0..n-1 ("Invalid classes inferred from unique values of
`y`"). `encode_labels_for(estimator, y)` wraps such an estimator, when the labels are
anything else, in `EncodedLabelsClassifier`: it fits the estimator on the labels' index
in the sorted classes and answers with the labels themselves (`classes_`, `predict`),
its probabilities in the same order. Served, logged and compiled like the estimator it
holds (the ONNX converter compiles the inner estimator; the classes travel with the
model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone, is_classifier
from sklearn.pipeline import Pipeline

# Classes (by `module.Class` along the MRO) whose classifiers need labels 0..n-1.
NUMERIC_LABEL_ESTIMATORS = ("xgboost.sklearn.XGBModel",)


class EncodedLabelsClassifier(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """`estimator` fitted on class indices; `classes_` the original labels (sorted)."""

    def __init__(self, estimator: Any = None):
        self.estimator = estimator

    def fit(self, X, y, **fit_params):
        if self.estimator is None:
            raise ValueError("EncodedLabelsClassifier needs an estimator")
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        self.classes_ = classes
        self.estimator_ = clone(self.estimator).fit(X, codes, **fit_params)
        inner = getattr(self.estimator_, "classes_", None)
        if inner is not None and list(np.asarray(inner).tolist()) != list(range(len(classes))):
            raise ValueError(f"{type(self.estimator).__name__} learned classes "
                             f"{list(inner)[:5]}, not the indices of {len(classes)} classes")
        if hasattr(self.estimator_, "n_features_in_"):
            self.n_features_in_ = self.estimator_.n_features_in_
        if hasattr(self.estimator_, "feature_names_in_"):
            self.feature_names_in_ = self.estimator_.feature_names_in_
        return self

    def predict_proba(self, X):
        return self.estimator_.predict_proba(X)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.asarray(proba).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _final(estimator: Any) -> Any:
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def needs_numeric_labels(estimator: Any) -> bool:
    """Whether the (final) estimator is one of NUMERIC_LABEL_ESTIMATORS."""
    final = _final(estimator)
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(final).__mro__}
    return is_classifier(final) and bool(names.intersection(NUMERIC_LABEL_ESTIMATORS))


def are_indices(y: Any) -> bool:
    """Labels that are already 0..n-1 integers (every one of them present)."""
    values = np.unique(np.asarray(y))
    return values.dtype.kind in "iu" and values.tolist() == list(range(len(values)))


def encode_labels_for(estimator: Any, y: Any) -> Any:
    """`estimator` itself, or wrapped in EncodedLabelsClassifier when it needs numeric
    labels and `y`'s are not 0..n-1."""
    if isinstance(estimator, EncodedLabelsClassifier) or not needs_numeric_labels(estimator):
        return estimator
    return estimator if are_indices(y) else EncodedLabelsClassifier(estimator)
