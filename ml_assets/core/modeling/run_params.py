"""The MLflow params of a training run: the platform's settings, and for the user's own
estimator its effective parameters (defaults included) instead of the built-in model's.

A user's estimator is logged with `get_params()` of what was fitted (the final
estimator's, or a factory Pipeline's deep parameters: `classifier__C`), every default
included (CatBoost's: `get_all_params()` of the fitted model, the platform's quiet
defaults among them); parameters a library leaves at None to mean "its own default" (XGBoost) are
filled from the fitted booster's configuration where it records them. The built-in
model's settings (`model_type`, `n_estimators`, ...), unused then, are not logged; the
platform's own (folds, seed, scoring, preprocessing, tuning) are. A platform setting
with an estimator parameter's name is logged as `platform.<name>`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from ml_assets.core.modeling.catboost_model import CatBoostModel
from ml_assets.core.modeling.labels import EncodedLabelsClassifier

# TrainingConfig fields that configure the built-in estimator only.
BUILT_IN_MODEL_SETTINGS = frozenset({"model_type", "n_estimators", "max_depth",
                                     "min_samples_leaf", "learning_rate", "max_iter",
                                     "n_jobs"})
MAX_VALUE_CHARS = 500  # MLflow keeps up to 6000; a long repr says little more
# XGBoost's aliases: the booster's configuration names the parameter otherwise.
_ALIASES = {"learning_rate": "eta", "reg_alpha": "alpha", "reg_lambda": "lambda",
            "random_state": "seed", "min_split_loss": "gamma"}


def _served(fitted: Any) -> Any:
    """The user's fitted estimator: the Pipeline's `model` step (a factory's Pipeline as
    a whole), the platform's label encoding unwrapped."""
    if isinstance(fitted, Pipeline):
        fitted = fitted.steps[-1][1]
    while isinstance(fitted, EncodedLabelsClassifier | CatBoostModel):
        fitted = fitted.estimator_
    return fitted


def _flat(config: Any, into: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    if isinstance(config, dict) and depth < 8:
        for key, value in config.items():
            if isinstance(value, dict):
                _flat(value, into, depth + 1)
            else:
                into.setdefault(str(key), value)
    return into


def _library_defaults(estimator: Any) -> dict[str, Any]:
    """Values a fitted XGBoost booster's configuration records (empty for others)."""
    booster = getattr(estimator, "get_booster", None)
    if booster is None:
        return {}
    try:
        return _flat(json.loads(booster().save_config()), {})
    except Exception:  # noqa: BLE001 - unfitted or another library: nothing to add
        return {}


def _value(value: Any) -> str | None:
    if isinstance(value, BaseEstimator) or callable(value):
        return None  # a sub-estimator's own parameters are listed beside it
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_VALUE_CHARS]


def estimator_params(fitted: Any) -> dict[str, str]:
    """The fitted user estimator's effective parameters as MLflow param values."""
    final = fitted.steps[-1][1] if isinstance(fitted, Pipeline) else fitted
    estimator = _served(fitted)
    if isinstance(final, CatBoostModel):  # CatBoost's get_params lists only what was set
        params = final.effective_params()
    else:
        params = estimator.get_params(deep=isinstance(estimator, Pipeline))
    recorded = _library_defaults(estimator)
    values: dict[str, str] = {}
    for name, value in sorted(params.items()):
        if value is None:
            found = recorded.get(_ALIASES.get(name, name), recorded.get(name))
            value = found if found is not None else None
        text = _value(value)
        if text is not None:
            values[name] = text
    return values


def run_params(settings: Mapping[str, Any], fitted: Any, user: bool,
               extra: Mapping[str, Any]) -> dict[str, Any]:
    """The run's params: `settings` (the TrainingConfig) with `extra` (rows, features);
    for the user's estimator, its effective parameters instead of the built-in model's
    settings."""
    platform = {**settings, **extra}
    if not user:
        return platform
    platform = {k: v for k, v in platform.items() if k not in BUILT_IN_MODEL_SETTINGS}
    own = estimator_params(fitted)
    return {**{(f"platform.{k}" if k in own else k): v for k, v in platform.items()}, **own}
