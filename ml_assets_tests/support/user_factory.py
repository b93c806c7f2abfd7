"""A user's own model code, as ML_MODEL_FACTORY would name it: a custom transformer and
a factory returning a Pipeline of it and a regressor. Loading a model that holds it
needs `ml_assets_tests.support.user_factory.ClipScaler` in ML_SKOPS_TRUSTED_TYPES."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

TRUSTED = "ml_assets_tests.support.user_factory.ClipScaler"


class ClipScaler(TransformerMixin, BaseEstimator):
    """Centre and scale each column, then clip it to +/- `limit` standard deviations."""

    def __init__(self, limit: float = 3.0):
        self.limit = limit

    def fit(self, X, y=None):
        values = np.asarray(X, dtype=np.float64)
        self.mean_ = values.mean(axis=0)
        self.scale_ = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
        self.n_features_in_ = values.shape[1]
        return self

    def transform(self, X):
        values = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        return np.clip(values, -self.limit, self.limit)


def make_model(limit: float = 3.0) -> Pipeline:
    """The factory: the user's whole model, preprocessing included."""
    return Pipeline([("clip", ClipScaler(limit)), ("ridge", Ridge(alpha=1.0))])


class OverflowRegressor(RegressorMixin, BaseEstimator):
    """Predicts the training mean, except infinity where the first feature exceeds
    `limit`: a stand-in for a model extrapolating beyond float64."""

    def __init__(self, limit: float = 1.0):
        self.limit = limit

    def fit(self, X, y):
        self.mean_ = float(np.mean(y))
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        first = np.asarray(X, dtype=np.float64)[:, 0]
        return np.where(first > self.limit, np.inf, self.mean_)


OVERFLOW_TRUSTED = "ml_assets_tests.support.user_factory.OverflowRegressor"


class SlowClassifier:
    """A challenger that answers like `pipeline` but sleeps `seconds` in every
    predict_proba call first: a model far slower than the champion, as a shadow."""

    def __init__(self, pipeline, seconds: float):
        self.pipeline = pipeline
        self.seconds = seconds
        self.calls = 0

    def predict_proba(self, X):
        self.calls += 1
        time.sleep(self.seconds)
        return self.pipeline.predict_proba(X)
