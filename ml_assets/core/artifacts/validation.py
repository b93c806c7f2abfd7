"""Checks on a loaded model's arrays, run after skops builds it and before its first prediction.

skops decides which *types* may be built; it does not look inside their arrays. Some
of those arrays are read by compiled code without bounds checks: a `Tree`'s child and
feature indices, a HistGradientBoosting `TreePredictor`'s node records and bitset
indices, a GradientBoosting stage table. A crafted file with an out-of-range index
crashes the process (SIGSEGV) on the first prediction; one with a cycle never returns.

`validate_model` walks the whole object graph (Pipeline steps, ColumnTransformer and
FeatureUnion transformers, forests' and boosters' fitted trees, any estimator's fitted
sub-estimators, lists, tuples, dicts and object arrays of them) and runs, on each object:

- the validator registered for its type in `VALIDATORS` (looked up along its MRO);
- for anything with `n_features_in_`: every per-feature array it carries
  (`PER_FEATURE_ARRAYS`: `mean_`, `scale_`, `statistics_`, `coef_`, ...) must have
  `n_features_in_` entries on its last axis;
- a type the file needs beyond skops' defaults (the platform's reviewed list) that
  carries arrays and has no validator is refused, unless the operator trusted it
  explicitly (ML_SKOPS_TRUSTED_TYPES): someone has to say its arrays are safe.

The checks live in `tree_checks.py` (trees and the ensembles holding them) and
`checks.py` (preprocessing, sparse matrices, per-feature arrays); they are vectorised
with numpy (a 200-tree forest: tens of milliseconds, about a tenth of skops' load). A
failed check raises `ModelCheckError`, whose sentence names where and what, e.g. "tree
3 of RandomForestClassifier step 'model': node 17's right child 912 is outside 0..540
(node_count 541)"; the loader turns it into its UntrustedModelError. To support a new
array-carrying type, write `def check_x(obj, where: str) -> None` raising
`ModelCheckError` and add it to `VALIDATORS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sparse
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    BaggingClassifier,
    BaggingRegressor,
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
    RandomTreesEmbedding,
)
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.feature_selection import SelectKBest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder
from sklearn.tree import (
    BaseDecisionTree,
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)
from sklearn.tree._tree import Tree

from ml_assets.core.artifacts.booster_checks import (
    check_lightgbm_estimator,
    check_xgboost_estimator,
    checked_before_load,
)
from ml_assets.core.artifacts.checks import (
    ModelCheckError,
    Validator,
    check_categories,
    check_column_transformer,
    check_coo,
    check_feature_arrays,
    check_select_k_best,
    check_simple_imputer,
    check_sparse,
    check_standard_scaler,
    fail,
    name_of,
)
from ml_assets.core.artifacts.tree_checks import (
    check_decision_tree,
    check_forest,
    check_gradient_boosting,
    check_hist_gradient_boosting,
    check_tree,
    check_tree_predictor,
)
from ml_assets.core.modeling.catboost_model import CatBoostModel
from ml_assets.core.modeling.labels import EncodedLabelsClassifier

__all__ = ["NAMED_VALIDATORS", "VALIDATORS", "ModelCheckError", "validate_model",
           "validator_for"]


# -- the registry: type -> validator (looked up along the MRO) ---------------------------

def check_encoded_labels(est: EncodedLabelsClassifier, where: str) -> None:
    """The platform's label encoding: one class per index its estimator answers."""
    classes, inner = vars(est).get("classes_"), vars(est).get("estimator_")
    if classes is None or inner is None:
        return
    count = getattr(inner, "n_classes_", None)
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or (
            count is not None and int(count) != len(classes)):
        raise fail("labels.classes", where, f"classes_ does not name the {count} classes "
                   "its estimator answers")


def check_catboost(est: CatBoostModel, where: str) -> None:
    """CatBoost: its JSON was checked before CatBoost parsed it (`__setstate__`); the
    model CatBoost built takes the estimator's features and answers its classes."""
    state = vars(est)
    inner = state.get("estimator_")
    if inner is None:
        return
    n = state.get("n_features_in_")
    if len(inner.feature_names_) != n:
        raise fail("catboost.features", where, f"the model takes {len(inner.feature_names_)} "
                   f"features, the estimator {n}")
    classes = state.get("classes_")
    if classes is not None and len(inner.classes_) != len(classes):
        raise fail("catboost.classes", where, f"the model answers {len(inner.classes_)} "
                   f"classes, the estimator names {len(classes)}")


VALIDATORS: dict[type, Validator] = {
    Tree: check_tree,
    TreePredictor: check_tree_predictor,
    DecisionTreeClassifier: check_decision_tree,
    DecisionTreeRegressor: check_decision_tree,
    ExtraTreeClassifier: check_decision_tree,
    ExtraTreeRegressor: check_decision_tree,
    RandomForestClassifier: check_forest,
    RandomForestRegressor: check_forest,
    ExtraTreesClassifier: check_forest,
    ExtraTreesRegressor: check_forest,
    RandomTreesEmbedding: check_forest,
    IsolationForest: check_forest,
    BaggingClassifier: check_forest,
    BaggingRegressor: check_forest,
    GradientBoostingClassifier: check_gradient_boosting,
    GradientBoostingRegressor: check_gradient_boosting,
    HistGradientBoostingClassifier: check_hist_gradient_boosting,
    HistGradientBoostingRegressor: check_hist_gradient_boosting,
    OneHotEncoder: check_categories,
    OrdinalEncoder: check_categories,
    TargetEncoder: check_categories,
    StandardScaler: check_standard_scaler,
    SimpleImputer: check_simple_imputer,
    SelectKBest: check_select_k_best,
    ColumnTransformer: check_column_transformer,
    EncodedLabelsClassifier: check_encoded_labels,
    CatBoostModel: check_catboost,
    sparse.csr_matrix: check_sparse,
    sparse.csc_matrix: check_sparse,
    sparse.bsr_matrix: check_sparse,
    sparse.csr_array: check_sparse,
    sparse.csc_array: check_sparse,
    sparse.bsr_array: check_sparse,
    sparse.coo_matrix: check_coo,
    sparse.coo_array: check_coo,
}


# Types of libraries that are not imported to validate (LightGBM, XGBoost), by
# `module.Class` along the MRO; their boosters are checked in the file before they are
# built (`booster_checks.check_booster_records`, run by the loader).
NAMED_VALIDATORS: dict[str, Validator] = {
    "lightgbm.sklearn.LGBMModel": check_lightgbm_estimator,
    "lightgbm.basic.Booster": checked_before_load,
    "xgboost.sklearn.XGBModel": check_xgboost_estimator,
    "xgboost.core.Booster": checked_before_load,
}


def validator_for(kind: type) -> Validator | None:
    for cls in kind.__mro__:
        if cls in VALIDATORS:
            return VALIDATORS[cls]
        named = NAMED_VALIDATORS.get(f"{cls.__module__}.{cls.__qualname__}")
        if named is not None:
            return named
    return None


# -- the walk ----------------------------------------------------------------------------

_LEAVES = (str, bytes, int, float, complex, type, FunctionType, BuiltinFunctionType,
           MethodType, ModuleType, np.dtype, np.generic)


def typename_of(kind: type) -> str:
    return f"{kind.__module__}.{kind.__name__}"


def _holds_arrays(obj: Any) -> bool:
    """Does the object's state hold numpy arrays (one level of containers deep)?"""
    try:
        state = vars(obj) if hasattr(obj, "__dict__") else obj.__getstate__()
    except Exception:  # noqa: BLE001 - cannot tell: assume it does
        return True
    values = state.values() if isinstance(state, dict) else (
        state if isinstance(state, tuple | list) else [state])
    for value in values:
        items = value.values() if isinstance(value, dict) else (
            value if isinstance(value, list | tuple) else [value])
        if any(isinstance(item, np.ndarray) or sparse.issparse(item) for item in items):
            return True
    return False


def _children(obj: Any, where: str, root: bool) -> Iterator[tuple[Any, str]]:
    """The objects `obj` holds, with where they sit, named ones first."""
    of = "" if root and isinstance(obj, Pipeline) else f" of {where}"
    state = vars(obj) if hasattr(obj, "__dict__") else {}
    if isinstance(obj, Pipeline):
        for name, step in obj.steps:
            yield step, f"{name_of(step)} step {name!r}{of}"
    if isinstance(obj, ColumnTransformer | FeatureUnion):
        pairs = state.get("transformers_") or state.get("transformer_list") or []
        for name, transformer, *_ in pairs:
            yield transformer, f"{name_of(transformer)} transformer {name!r}{of}"
    if isinstance(obj, BaseDecisionTree) and "tree_" in state:
        yield state["tree_"], where if where.startswith("tree ") else f"the tree of {where}"
    subs = state.get("estimators_")
    if isinstance(subs, list):
        for i, sub in enumerate(subs):
            kind = "tree" if isinstance(sub, BaseDecisionTree) else f"{name_of(sub)} estimator"
            yield sub, f"{kind} {i} of {where}"
    elif isinstance(subs, np.ndarray) and subs.dtype == object and subs.ndim == 2:
        k = subs.shape[1]
        for i, sub in enumerate(subs.ravel()):
            yield sub, f"tree {i // k}{f' (output {i % k})' if k > 1 else ''} of {where}"
    predictors = state.get("_predictors")
    if isinstance(predictors, list):
        for i, row in enumerate(predictors):
            for j, predictor in enumerate(row if isinstance(row, list) else [row]):
                output = f" (output {j})" if isinstance(row, list) and len(row) > 1 else ""
                yield predictor, f"predictor {i}{output} of {where}"
    for attr, value in state.items():
        if value is None or isinstance(value, _LEAVES):
            continue
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                yield item, f"{name_of(item)} {attr}[{i}] of {where}"
        elif isinstance(value, dict):
            for key, item in value.items():
                yield item, f"{name_of(item)} {attr}[{key!r}] of {where}"
        elif isinstance(value, np.ndarray) and value.dtype == object:
            for i, item in enumerate(value.ravel()):
                yield item, f"{name_of(item)} {attr}[{i}] of {where}"
        else:
            yield value, f"{name_of(value)} {attr} of {where}"


def validate_model(model: Any, needed_types: Iterable[str] = (),
                   operator_types: Iterable[str] = ()) -> int:
    """Run every check on everything `model` holds; raises ModelCheckError. Returns
    how many objects were checked. `needed_types`: the types the file needs beyond
    skops' defaults; `operator_types`: those the operator trusted explicitly."""
    needed, explicit = set(needed_types), set(operator_types)
    seen: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(model, name_of(model), True)]
    checked = 0
    while stack:
        obj, where, root = stack.pop()
        if obj is None or isinstance(obj, _LEAVES) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend((item, f"item {i} of {where}", False)
                             for i, item in enumerate(obj.ravel()))
            continue
        if isinstance(obj, list | tuple | set | frozenset):
            stack.extend((item, where, False) for item in obj)
            continue
        if isinstance(obj, dict):
            stack.extend((item, where, False) for item in obj.values())
            continue
        checked += 1
        validator = validator_for(type(obj))
        if validator is not None:
            validator(obj, where)
        elif typename_of(type(obj)) in needed and typename_of(type(obj)) not in explicit \
                and _holds_arrays(obj):
            raise fail("unvalidated_type", where, f"{typename_of(type(obj))} carries arrays "
                       "that no validator checks; add one to VALIDATORS in "
                       "ml_assets/core/artifacts/validation.py, or, once a person has "
                       "reviewed that its arrays cannot crash the process, trust it "
                       "explicitly in ML_SKOPS_TRUSTED_TYPES")
        if isinstance(obj, BaseEstimator):
            check_feature_arrays(obj, where)
        if hasattr(obj, "__dict__"):
            stack.extend((child, label, False)
                         for child, label in reversed(list(_children(obj, where, root))))
    return checked
