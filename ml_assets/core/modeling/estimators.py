"""The user's own model: an estimator class or a factory function, named by import path.

`ML_ESTIMATOR=sklearn.linear_model:LogisticRegression` (with `ML_ESTIMATOR_PARAMS`, a
JSON object) names a class; `ML_MODEL_FACTORY=my_project.model:build` names a function
returning an unfitted estimator or a whole `Pipeline`. Modules are imported from the
project directory (the working directory) or any installed package. What was imported
is recorded: its module, file, package version and a hash of its source, so a model's
code version covers the user's code as well as the platform's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sklearn.base import BaseEstimator, clone, is_classifier, is_regressor
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags


class UserModelError(ValueError):
    """The configured estimator or factory cannot be used; the message says why and
    what to change."""


@dataclass(frozen=True)
class UserCode:
    """Where the user's estimator came from, for the run's record."""

    import_path: str
    module_file: str | None
    package_version: str | None
    source_sha256: str | None

    def as_tags(self, prefix: str = "user_model.") -> dict[str, str]:
        tags = {f"{prefix}import_path": self.import_path}
        if self.module_file:
            tags[f"{prefix}module_file"] = self.module_file
        if self.package_version:
            tags[f"{prefix}package_version"] = self.package_version
        if self.source_sha256:
            tags[f"{prefix}source_sha256"] = self.source_sha256
        return tags

    @property
    def version(self) -> str:
        """A short version string: the package version, else the source hash."""
        if self.package_version:
            return self.package_version
        return (self.source_sha256 or "unknown")[:12]


@dataclass(frozen=True)
class UserModel:
    """An unfitted estimator (or whole Pipeline) from the user, and its provenance."""

    estimator: Any
    code: UserCode
    # False: the estimator is fitted on the platform's preprocessed columns; True: it
    # takes the raw feature columns itself (a factory's own Pipeline).
    owns_preprocessing: bool
    params: dict = field(default_factory=dict)

    def fresh(self):
        return clone(self.estimator)


def _split_path(path: str) -> tuple[str, str]:
    path = path.strip()
    if ":" in path:
        module, _, attribute = path.partition(":")
    else:
        module, _, attribute = path.rpartition(".")
    if not module or not attribute or not all(
            part.isidentifier() for part in [*module.split("."), *attribute.split(".")]):
        raise UserModelError(f"{path!r} is not an import path; write it as "
                             "package.module:Name (e.g. sklearn.linear_model:LogisticRegression)")
    return module, attribute


def resolve(path: str, project_dir: str | Path | None = None) -> tuple[Any, UserCode]:
    """Import `package.module:attr` (or `package.module.attr`), looking in the project
    directory first, then installed packages."""
    module_name, attribute = _split_path(path)
    project = str(Path(project_dir or os.getcwd()).resolve())
    if project not in sys.path:
        sys.path.insert(0, project)
    fresh = module_name not in sys.modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserModelError(f"cannot import module {module_name!r} of {path!r} ({exc}); "
                             f"it must be in the project directory ({project}) or an "
                             "installed package") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserModelError(f"module {module_name!r} has no attribute {part!r} "
                                 f"(from {path!r})")
        target = getattr(target, part)
    return target, _code_of(path, module, fresh)


# module name -> sha256 of its source when it was imported: a module is imported once
# per process, so the hash must be of the code that runs, not of the file as it is now.
_IMPORTED_SOURCE: dict[str, str | None] = {}


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> distributions (scans every installed package: ~1 s)."""
    return dict(importlib.metadata.packages_distributions())


def _code_of(path: str, module, fresh: bool) -> UserCode:
    file = getattr(module, "__file__", None)
    if fresh or module.__name__ not in _IMPORTED_SOURCE:
        digest = None
        if file and Path(file).is_file():
            digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
        _IMPORTED_SOURCE[module.__name__] = digest
    digest = _IMPORTED_SOURCE[module.__name__]
    version = None
    top = module.__name__.split(".")[0]
    try:
        distributions = _distributions().get(top, [])
        if distributions:
            version = f"{distributions[0]}=={importlib.metadata.version(distributions[0])}"
    except Exception:  # noqa: BLE001 - metadata is a nicety, never a failure
        version = None
    return UserCode(path, file, version, digest)


def parse_params(text: str, source: str = "ML_ESTIMATOR_PARAMS") -> dict:
    """A JSON object of keyword arguments ("" → {})."""
    if not text or not text.strip():
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserModelError(f"{source} is not valid JSON ({exc.msg} at column "
                             f"{exc.colno}); write an object like {{\"C\": 0.5}}") from None
    if not isinstance(params, dict):
        raise UserModelError(f"{source} must be a JSON object like {{\"C\": 0.5}}, "
                             f"not {type(params).__name__}")
    return params


# What the platform calls on an estimator, deriving from scikit-learn's base classes or
# not (CatBoost's do not): fit and predict; get_params and set_params, which clone and
# tuning use; __sklearn_tags__, which scikit-learn 1.6+ reads to tell a classifier from a
# regressor (a Pipeline, cross-validation and scoring fail without it); predict_proba on
# a classifier (checked below, once the task is known).
PROTOCOL = ("fit", "predict", "get_params", "set_params", "__sklearn_tags__")


def _check_estimator(estimator, origin: str, task: str) -> None:
    """The scikit-learn estimator protocol, subclassing scikit-learn or not: each
    missing method is named."""
    missing = [name for name in PROTOCOL if not callable(getattr(estimator, name, None))]
    if missing:
        raise UserModelError(f"{origin} returned {type(estimator).__name__}, which does not "
                             f"follow scikit-learn's estimator protocol: it has no "
                             f"{', '.join(missing)} (the platform needs "
                             f"{', '.join(PROTOCOL)}, and predict_proba for a classifier; "
                             "sklearn.base.BaseEstimator gives get_params, set_params and "
                             "__sklearn_tags__, with ClassifierMixin or RegressorMixin "
                             "saying which it is)")
    try:
        kind = get_tags(estimator).estimator_type
    except Exception as exc:  # noqa: BLE001 - the user's tags: named, never a traceback
        raise UserModelError(f"{origin}: scikit-learn cannot read its __sklearn_tags__ "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(estimator, BaseEstimator) and kind not in ("classifier", "regressor"):
        raise UserModelError(f"{origin} returned {type(estimator).__name__}, whose "
                             f"__sklearn_tags__ says estimator_type {kind!r}, neither "
                             "'classifier' nor 'regressor'")
    if task == "regression" and is_classifier(estimator):
        raise UserModelError(f"{origin} is a classifier but the target is a regression "
                             "target; use a regressor or set ML_TASK=classification")
    if task != "regression" and is_regressor(estimator):
        raise UserModelError(f"{origin} is a regressor but the target is a "
                             f"{task} classification target; use a classifier or set "
                             "ML_TASK=regression")
    if task != "regression" and not hasattr(estimator, "predict_proba"):
        raise UserModelError(f"{origin} has no predict_proba; the platform serves class "
                             "probabilities, so pick a classifier that has it (for SVC, "
                             "probability=True)")
    try:
        clone(estimator)
    except Exception as exc:  # noqa: BLE001 - sklearn's clone contract is the check
        raise UserModelError(f"{origin} cannot be cloned by scikit-learn ({exc}); its "
                             "__init__ must store its parameters unchanged") from None


def from_class(path: str, params: dict, task: str,
               project_dir: str | Path | None = None) -> UserModel:
    """`ML_ESTIMATOR`: the class at `path`, built with `params`."""
    cls, code = resolve(path, project_dir)
    if not inspect.isclass(cls):
        raise UserModelError(f"{path!r} is not a class; use ML_MODEL_FACTORY for a function")
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise UserModelError(f"{path} does not accept the parameters {params} ({exc})") from None
    _check_estimator(estimator, path, task)
    return UserModel(estimator, code, owns_preprocessing=False, params=dict(params))


def _fitted(estimator: Any) -> bool:
    """Whether `estimator` was fitted: its own `is_fitted()` where it has one (CatBoost's
    `n_features_in_` is a property, there before fitting), else `n_features_in_`."""
    is_fitted = getattr(estimator, "is_fitted", None)
    if callable(is_fitted):
        return bool(is_fitted())
    return hasattr(estimator, "n_features_in_")


def from_factory(path: str, task: str, owns_preprocessing: bool,
                 project_dir: str | Path | None = None, params: dict | None = None
                 ) -> UserModel:
    """`ML_MODEL_FACTORY`: call the function at `path` (with `params` as keyword
    arguments, e.g. tuned values) for an unfitted estimator or Pipeline."""
    factory, code = resolve(path, project_dir)
    if not callable(factory) or inspect.isclass(factory):
        raise UserModelError(f"{path!r} is not a function; use ML_ESTIMATOR for a class")
    try:
        estimator = factory(**(params or {}))
    except Exception as exc:  # noqa: BLE001 - the user's code: named, never a traceback
        raise UserModelError(f"the model factory {path} failed: {exc}") from None
    _check_estimator(estimator, path, task)
    if _fitted(estimator) or (isinstance(estimator, Pipeline)
                              and _fitted(estimator.steps[-1][1])):
        raise UserModelError(f"the model factory {path} returned a fitted estimator; "
                             "return it unfitted (the platform fits it on the training split)")
    return UserModel(estimator, code, owns_preprocessing=owns_preprocessing,
                     params=dict(params or {}))


def user_model(estimator: str, estimator_params: str, model_factory: str,
               model_preprocessing: str, task: str) -> UserModel | None:
    """The user's estimator (ML_ESTIMATOR, with ML_ESTIMATOR_PARAMS) or factory
    (ML_MODEL_FACTORY), behind the platform's preprocessing or its own
    (ML_MODEL_PREPROCESSING=own); None for the built-in model."""
    if estimator and model_factory:
        raise UserModelError(
            "both ML_ESTIMATOR (estimator) and ML_MODEL_FACTORY (model_factory) are set; "
            "set one of them")
    params = parse_params(estimator_params)
    own = model_preprocessing == "own"
    if estimator:
        user = from_class(estimator, params, task)
        return replace(user, owns_preprocessing=own)
    if model_factory:
        return from_factory(model_factory, task, own, params=params)
    if own:
        raise UserModelError(
            "ML_MODEL_PREPROCESSING=own needs your own model (ML_MODEL_FACTORY or "
            "ML_ESTIMATOR); the built-in estimators take the platform's preprocessing")
    return None


def describe(estimator: Any) -> str:
    """`module.Class` of an estimator (the last step's, for a Pipeline)."""
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    return f"{type(final).__module__}.{type(final).__name__}"
