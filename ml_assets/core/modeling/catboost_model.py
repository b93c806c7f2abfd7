"""CatBoost as the platform trains, stores and serves it: `CatBoostModel` holds a user's
`CatBoostClassifier` / `CatBoostRegressor` (no wrapper of theirs needed).

- Labels: a classifier is fitted on the labels' index in the sorted classes and
  answers with the labels themselves (`classes_`), its probabilities in that order
  (`class_names` is refused; a `class_weights` list is in that order).
- Native categorical handling: on a DataFrame (the user's own preprocessing,
  ML_MODEL_PREPROCESSING=own), the non-numeric columns are CatBoost's `cat_features`
  unless the user names them, their missing values fed as MISSING_CATEGORY; with
  categorical features, `one_hot_max_size` defaults to ONE_HOT_MAX_SIZE, so categories
  are one-hot splits (CTR features are not stored: `catboost_checks`).
- Quiet by default: unless set, `logging_level="Silent"` and `allow_writing_files=False`
  (CatBoost otherwise prints every iteration and writes `catboost_info/` into the
  working directory).
- Stored as CatBoost's JSON export, never its binary format: `__getstate__` writes the
  class, its parameters and the JSON text (no CatBoost object reaches the skops file);
  `__setstate__` checks the JSON (`catboost_checks.check_catboost_model`) before
  CatBoost parses it. The fitted model itself is loaded back from that checked JSON at
  the end of `fit`, so what is evaluated is exactly what is served.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if

from ml_assets.core.artifacts.catboost_checks import check_catboost_model
from ml_assets.core.artifacts.checks import fail

CLASSES = ("CatBoostClassifier", "CatBoostRegressor")  # what a stored model may name
ONE_HOT_MAX_SIZE = 255  # CatBoost's largest on CPU
MISSING_CATEGORY = "\x1fmissing\x1f"
QUIET = {"allow_writing_files": False, "logging_level": "Silent"}
_LOGGING = ("logging_level", "verbose", "silent", "verbose_eval")


def is_catboost(estimator: Any) -> bool:
    """A CatBoost scikit-learn estimator (by its class's module, without importing it)."""
    return any(kind.__module__.split(".")[0] == "catboost" for kind in type(estimator).__mro__)


def wrap_catboost(estimator: Any) -> Any:
    """`estimator` itself, or (a CatBoost estimator, or a Pipeline ending in one) with
    the CatBoost estimator held by a CatBoostModel."""
    if isinstance(estimator, Pipeline):
        name, final = estimator.steps[-1]
        if is_catboost(final):
            return clone(estimator).set_params(**{name: CatBoostModel(clone(final))})
        return estimator
    return CatBoostModel(estimator) if is_catboost(estimator) else estimator


def _catboost(where: str) -> Any:
    """The catboost package, or a refusal saying how to install it."""
    try:
        import catboost
    except ImportError:
        raise fail("catboost.installed", where, "the catboost package is not installed "
                   "where this model is opened; install the platform's `catboost` extra "
                   "(pip install -c requirements.lock -e \".[catboost]\")") from None
    return catboost


def _is_classifier(estimator: Any) -> bool:
    return get_tags(estimator).estimator_type == "classifier"


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


class CatBoostModel(MetaEstimatorMixin, BaseEstimator):
    """A CatBoost estimator fitted, stored and served the platform's way (see the module
    docstring)."""

    def __init__(self, estimator: Any = None):
        self.estimator = estimator

    # -- fitting and predicting ------------------------------------------------------

    def _cat_features(self, X: Any) -> list[str]:
        params = self.estimator.get_params()
        named = params.get("cat_features")
        if not isinstance(X, pd.DataFrame):
            if named:
                raise ValueError(
                    "cat_features names raw columns, but the estimator is fed the platform's "
                    "preprocessed matrix (categoricals one-hot encoded already); set "
                    "ML_MODEL_PREPROCESSING=own to use CatBoost's categorical handling")
            return []
        if named is None:
            return [str(c) for c in X.columns if not _numeric(X[c])]
        columns = [str(c) for c in X.columns]
        chosen = [columns[c] if isinstance(c, int | np.integer) else str(c) for c in named]
        unknown = [c for c in chosen if c not in columns]
        if unknown:
            raise ValueError(f"cat_features names columns the data does not have: {unknown}")
        return chosen

    def _frame(self, X: Any) -> Any:
        """X as CatBoost takes it: categorical columns as strings, missing ones marked."""
        if not self.cat_features_:
            return X
        frame = X.copy()
        for column in self.cat_features_:
            values = frame[column]
            frame[column] = values.astype(object).where(values.notna(), MISSING_CATEGORY
                                                        ).astype(str)
        return frame

    def fit(self, X, y, **fit_params):
        if self.estimator is None or not is_catboost(self.estimator):
            raise ValueError("CatBoostModel needs a CatBoost estimator")
        self.cat_features_ = self._cat_features(X)
        params = self.estimator.get_params()
        defaults = {k: v for k, v in QUIET.items() if k not in params}
        if "logging_level" in defaults and any(k in params for k in _LOGGING):
            del defaults["logging_level"]
        if self.cat_features_:
            defaults["cat_features"] = self.cat_features_
            if "one_hot_max_size" not in params:
                defaults["one_hot_max_size"] = ONE_HOT_MAX_SIZE
        if "class_names" in params:
            raise ValueError("class_names is set; the platform encodes class labels itself "
                             "(remove class_names)")
        estimator = clone(self.estimator).set_params(**defaults)
        if _is_classifier(estimator):
            classes, target = np.unique(np.asarray(y), return_inverse=True)
            self.classes_ = classes
        else:
            target = np.asarray(y, dtype=np.float64)
        estimator.fit(self._frame(X), target, **fit_params)
        self.n_features_in_ = int(estimator.n_features_in_ if hasattr(
            estimator, "n_features_in_") else np.shape(X)[1])
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.params_ = dict(estimator.get_params())
        text = self._export(estimator, X, target)
        self.estimator_ = self._load(type(estimator).__name__, text)
        self.model_json_ = text
        return self

    def _export(self, estimator: Any, X: Any, target: np.ndarray) -> str:
        from catboost import Pool

        pool = Pool(self._frame(X), target, cat_features=self.cat_features_ or None) \
            if self.cat_features_ else None
        with tempfile.TemporaryDirectory(prefix="catboost-") as tmp:
            path = Path(tmp) / "model.json"
            estimator.save_model(str(path), format="json", pool=pool)
            text = path.read_text(encoding="utf-8")
        # The same check as on load: a model the platform could not open is refused now.
        return self._checked(text, "the trained CatBoost model")

    def _checked(self, text: Any, where: str) -> str:
        classes = getattr(self, "classes_", None)
        return check_catboost_model(text, where, self.n_features_in_,
                                    None if classes is None else len(classes),
                                    len(self.cat_features_))

    @staticmethod
    def _load(name: str, checked_json: str) -> Any:
        """A CatBoost estimator of class `name` (one of CLASSES) from JSON that passed
        `check_catboost_model`."""
        estimator = getattr(_catboost("CatBoostModel"), name)()
        with tempfile.TemporaryDirectory(prefix="catboost-") as tmp:
            path = Path(tmp) / "model.json"
            path.write_text(checked_json, encoding="utf-8")
            estimator.load_model(str(path), format="json")
        return estimator

    @available_if(lambda self: _is_classifier(self.estimator))
    def predict_proba(self, X):
        return np.asarray(self.estimator_.predict_proba(self._frame(X)), dtype=np.float64)

    def predict(self, X):
        if hasattr(self, "classes_"):
            return self.classes_[self.predict_proba(X).argmax(axis=1)]
        return np.asarray(self.estimator_.predict(self._frame(X)), dtype=np.float64)

    def effective_params(self) -> dict[str, Any]:
        """Every parameter the fitted model trained with, CatBoost's defaults included."""
        params = dict(self.estimator_.get_all_params())
        params.update(self.params_)
        return params

    def onnx_bytes(self) -> bytes:
        """CatBoost's own ONNX export of the fitted model (float features only)."""
        with tempfile.TemporaryDirectory(prefix="catboost-") as tmp:
            path = Path(tmp) / "model.onnx"
            self.estimator_.save_model(str(path), format="onnx")
            return path.read_bytes()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator) if self.estimator is not None else tags
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.input_tags.allow_nan = True
        return tags

    # -- storage: JSON, checked before CatBoost parses it ------------------------------

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("estimator", "estimator_")}
        if self.estimator is not None:
            state["estimator"] = {"class": type(self.estimator).__name__,
                                  "params": dict(self.estimator.get_params())}
        return state

    def __setstate__(self, state: dict) -> None:
        where = "CatBoostModel"
        if not isinstance(state, dict):
            raise fail("catboost.record", where, "its state is not a dictionary")
        state = dict(state)
        spec = state.pop("estimator", None)
        text = state.get("model_json_")
        self.__dict__.update(state)
        self.estimator = None
        if spec is not None:
            name, params = self._spec(spec, where)
            self.estimator = getattr(_catboost(where), name)(**params)
        if text is None:
            return
        n = state.get("n_features_in_")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise fail("catboost.features", where, f"n_features_in_ {n!r} is not a count")
        classes = state.get("classes_")
        if classes is not None and not (isinstance(classes, np.ndarray) and classes.ndim == 1
                                        and len(classes) >= 2):
            raise fail("catboost.classes", where, "classes_ is not a list of two or more "
                       "classes")
        cats = state.get("cat_features_")
        names = state.get("feature_names_in_")
        known = set(names.tolist()) if isinstance(names, np.ndarray) else set()
        if not (isinstance(cats, list) and all(isinstance(c, str) and c in known
                                               for c in cats)):
            raise fail("catboost.record", where, "cat_features_ is not a list of the "
                       "estimator's feature names")
        checked = self._checked(text, where)
        if self.estimator is None:
            raise fail("catboost.record", where, "it names no CatBoost class")
        if not isinstance(state.get("params_"), dict):
            raise fail("catboost.record", where, "params_ is not a dictionary")
        self.estimator_ = self._load(type(self.estimator).__name__, checked)

    @staticmethod
    def _spec(spec: Any, where: str) -> tuple[str, dict]:
        if not (isinstance(spec, dict) and spec.get("class") in CLASSES
                and isinstance(spec.get("params"), dict)):
            raise fail("catboost.record", where, f"its estimator is not one of {CLASSES} "
                       "with a parameter dictionary")
        return spec["class"], spec["params"]
