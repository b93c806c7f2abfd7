"""Checks on a CatBoost model's JSON export, run in Python before CatBoost parses it.

The platform stores a CatBoost model as CatBoost's own JSON export (`save_model(...,
format="json")`), never as its binary format, because the JSON can be read and checked
here first; CatBoost's C++ code then follows split feature indices and leaf offsets
without bounds checks. `check_catboost_model(text, ...)` parses the text (bounded: the
skops archive caps its size before this runs) and refuses, naming the check
(`catboost.*`), a model whose

- top level, features or trees hold anything but what CatBoost writes for a symmetric
  (oblivious) tree model over float features and one-hot categorical features
  (`catboost.kind`: CTR features, text or embedding features, non-symmetric trees are
  not checked, so not loaded);
- features are not numbered 0..n-1 in order, their flat indices are not a permutation
  of 0..n_features-1, or n_features is not the estimator's (`catboost.features`);
- borders are not finite and strictly increasing (`catboost.borders`);
- trees are deeper than MAX_DEPTH, split a feature outside the model's, split at a
  border (or one-hot value) that feature does not have, or carry a split_index that is
  not that border's place among all binary features (`catboost.splits`);
- leaf_values are not 2**depth x dimension numbers, leaf_weights not 2**depth, or the
  dimension is not the model's (`catboost.leaves`);
- leaf values, weights, scale or bias are not finite (`catboost.values`);
- class names are not the platform's label codes 0..k-1, or the loss function does
  not answer the task (`catboost.classes`, `catboost.loss`).

What passes is written back out with `json.dumps` (`canonical`), so CatBoost parses
exactly the document checked here (no duplicate keys, no NaN literals, no other
number spellings).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ml_assets.core.artifacts.checks import ModelCheckError, fail

MAX_DEPTH = 16  # CatBoost's own limit on a symmetric tree's depth
MAX_NESTING = 64  # a JSON document nested deeper is refused
TOP_LEVEL = frozenset({"features_info", "model_info", "oblivious_trees", "scale_and_bias",
                       "ctr_data"})
FEATURES_INFO = frozenset({"float_features", "categorical_features", "cat_features_hash"})
FLOAT_FEATURE = frozenset({"borders", "feature_id", "feature_index", "flat_feature_index",
                           "has_nans", "nan_value_treatment", "feature_name"})
CATEGORICAL_FEATURE = frozenset({"feature_id", "feature_index", "flat_feature_index",
                                 "feature_name", "values"})
TREE = frozenset({"leaf_values", "leaf_weights", "splits"})
FLOAT_SPLIT = frozenset({"border", "float_feature_index", "split_index", "split_type"})
ONE_HOT_SPLIT = frozenset({"cat_feature_index", "split_index", "split_type", "value"})
NAN_TREATMENTS = frozenset({"AsIs", "AsFalse", "AsTrue"})
# Loss functions by task, and the tree dimension they answer with (None: class count).
CLASSIFIER_LOSSES = {"Logloss": 1, "CrossEntropy": 1, "MultiClass": None,
                     "MultiClassOneVsAll": None}
REGRESSOR_LOSSES = frozenset({"RMSE", "MAE", "Quantile", "Expectile", "LogLinQuantile",
                              "MAPE", "Poisson", "Tweedie", "Huber", "Lq", "LogCosh",
                              "FairLoss"})
MAX_UINT32 = 2**32 - 1


def _keys(obj: Any, allowed: frozenset[str], where: str, required: tuple[str, ...] = ()
          ) -> dict:
    if not isinstance(obj, dict):
        raise fail("catboost.record", where, "is not a JSON object")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise fail("catboost.kind", where, f"holds {', '.join(extra)}, which the platform "
                   "does not check, so it is not loaded")
    missing = [key for key in required if key not in obj]
    if missing:
        raise fail("catboost.record", where, f"lacks {', '.join(missing)}")
    return obj


def _whole(value: Any, name: str, where: str, low: int = 0, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (
            high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise fail("catboost.record", where, f"{name} {value!r} is not a whole number "
                   f"{bound}")
    return value


def _finite(values: Any, name: str, where: str) -> list[float]:
    if not isinstance(values, list) or not {type(v) for v in values} <= {int, float}:
        raise fail("catboost.record", where, f"{name} is not a list of numbers")
    finite = np.isfinite(np.asarray(values, dtype=np.float64))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise fail("catboost.values", where, f"{name}[{bad}] {values[bad]!r} is not finite")
    return [float(v) for v in values]


def _depth(obj: Any, level: int = 0) -> int:
    """How deep `obj` nests (stops counting past MAX_NESTING)."""
    if level > MAX_NESTING:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level)
    return level


def parse(text: Any, where: str) -> dict:
    """The JSON document of a model export; refuses anything but a bounded object."""
    if not isinstance(text, str):
        raise fail("catboost.record", where, "the model is not stored as JSON text")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise fail("catboost.record", where, f"the model JSON cannot be read "
                   f"({type(exc).__name__}: {str(exc)[:120]})") from None
    document = _keys(document, TOP_LEVEL, where,
                     ("features_info", "model_info", "oblivious_trees", "scale_and_bias"))
    # Everything else is checked key by key below; model_info is passed on as it is.
    if _depth(document["model_info"]) > MAX_NESTING:
        raise fail("catboost.record", where, f"model_info nests over {MAX_NESTING} deep")
    return document


def _features(info: Any, n_features: int, n_categorical: int, where: str
              ) -> tuple[list[list[float]], list[list[int]]]:
    """Float features' borders and categorical features' one-hot values."""
    info = _keys(info, FEATURES_INFO, f"{where}: features_info")
    floats = info.get("float_features", [])
    cats = info.get("categorical_features", [])
    if not isinstance(floats, list) or not isinstance(cats, list):
        raise fail("catboost.record", where, "features_info's feature lists are not lists")
    if len(floats) + len(cats) != n_features or len(cats) != n_categorical:
        raise fail("catboost.features", where, f"the model has {len(floats)} float and "
                   f"{len(cats)} categorical features, the estimator takes {n_features} "
                   f"({n_categorical} categorical)")
    flat: list[int] = []
    borders: list[list[float]] = []
    for i, feature in enumerate(floats):
        here = f"{where}: float feature {i}"
        _keys(feature, FLOAT_FEATURE, here, ("borders", "feature_index", "flat_feature_index"))
        if _whole(feature["feature_index"], "feature_index", here) != i:
            raise fail("catboost.features", here, f"feature_index is "
                       f"{feature['feature_index']}, not {i}")
        flat.append(_whole(feature["flat_feature_index"], "flat_feature_index", here,
                           high=n_features - 1))
        values = _finite(feature["borders"], "borders", here)
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise fail("catboost.borders", here, "its borders are not strictly increasing")
        if feature.get("nan_value_treatment", "AsIs") not in NAN_TREATMENTS:
            raise fail("catboost.record", here, "nan_value_treatment "
                       f"{feature.get('nan_value_treatment')!r} is not one of "
                       f"{sorted(NAN_TREATMENTS)}")
        if not all(isinstance(feature.get(k, ""), str) for k in ("feature_id", "feature_name")):
            raise fail("catboost.record", here, "its feature_id or feature_name is not text")
        if not isinstance(feature.get("has_nans", False), bool):
            raise fail("catboost.record", here, "has_nans is not true or false")
        borders.append(values)
    one_hot: list[list[int]] = []
    for i, feature in enumerate(cats):
        here = f"{where}: categorical feature {i}"
        _keys(feature, CATEGORICAL_FEATURE, here, ("feature_index", "flat_feature_index"))
        if _whole(feature["feature_index"], "feature_index", here) != i:
            raise fail("catboost.features", here, f"feature_index is "
                       f"{feature['feature_index']}, not {i}")
        flat.append(_whole(feature["flat_feature_index"], "flat_feature_index", here,
                           high=n_features - 1))
        if not all(isinstance(feature.get(k, ""), str) for k in ("feature_id", "feature_name")):
            raise fail("catboost.record", here, "its feature_id or feature_name is not text")
        values = feature.get("values", [])
        if not isinstance(values, list):
            raise fail("catboost.record", here, "values is not a list")
        one_hot.append([_whole(v, "a one-hot value", here, low=-2**31, high=MAX_UINT32)
                        for v in values])
    if sorted(flat) != list(range(n_features)):
        raise fail("catboost.features", where, "the features' flat_feature_index values are "
                   f"not each of 0..{n_features - 1} once")
    hashes = info.get("cat_features_hash", [])
    if not isinstance(hashes, list) or not all(
            isinstance(h, dict) and set(h) == {"hash", "value"} and isinstance(h["value"], str)
            for h in hashes):
        raise fail("catboost.record", where, "cat_features_hash is not a list of "
                   "{hash, value} pairs")
    for h in hashes:
        _whole(h["hash"], "a category hash", where, high=MAX_UINT32)
    return borders, one_hot


def _loss(model_info: Any, where: str) -> str:
    if not isinstance(model_info, dict):
        raise fail("catboost.record", where, "model_info is not a JSON object")
    params = model_info.get("params")
    loss = params.get("loss_function") if isinstance(params, dict) else None
    name = loss.get("type") if isinstance(loss, dict) else None
    if not isinstance(name, str):
        raise fail("catboost.loss", where, "model_info names no loss function")
    return name


def _dimension(model_info: dict, loss: str, n_classes: int | None, where: str) -> int:
    """The number of values each leaf holds, as the task and loss require."""
    if n_classes is None:
        if loss not in REGRESSOR_LOSSES:
            raise fail("catboost.loss", where, f"loss function {loss!r} is not a "
                       "single-output regression loss the platform checks")
        return 1
    if loss not in CLASSIFIER_LOSSES:
        raise fail("catboost.loss", where, f"loss function {loss!r} is not a classification "
                   f"loss the platform checks ({', '.join(CLASSIFIER_LOSSES)})")
    dimension = CLASSIFIER_LOSSES[loss] or n_classes
    if dimension == 1 and n_classes != 2:
        raise fail("catboost.loss", where, f"loss function {loss!r} answers two classes, "
                   f"the estimator has {n_classes}")
    params = model_info.get("class_params")
    names = params.get("class_names") if isinstance(params, dict) else None
    if names != list(range(n_classes)):
        raise fail("catboost.classes", where, f"class_names {str(names)[:80]} are not the "
                   f"platform's label codes 0..{n_classes - 1}")
    return dimension


def _trees(trees: Any, borders: list[list[float]], one_hot: list[list[int]],
           dimension: int, where: str) -> None:
    if not isinstance(trees, list) or not trees:
        raise fail("catboost.record", where, "oblivious_trees is not a non-empty list")
    # Binary features are numbered float borders first, then one-hot values, in order.
    offsets, hot_offsets, total = [], [], 0
    for feature_borders in borders:
        offsets.append(total)
        total += len(feature_borders)
    for feature_values in one_hot:
        hot_offsets.append(total)
        total += len(feature_values)
    for t, tree in enumerate(trees):
        here = f"tree {t} of {where}"
        _keys(tree, TREE, here, ("leaf_values", "splits"))
        splits = tree["splits"]
        if not isinstance(splits, list):
            raise fail("catboost.record", here, "splits is not a list")
        if len(splits) > MAX_DEPTH:
            raise fail("catboost.splits", here, f"its depth {len(splits)} is over CatBoost's "
                       f"{MAX_DEPTH}")
        for s, split in enumerate(splits):
            _check_split(split, f"split {s} of {here}", borders, one_hot, offsets,
                         hot_offsets)
        leaves = 2 ** len(splits)
        values = _finite(tree["leaf_values"], "leaf_values", here)
        if len(values) != leaves * dimension:
            raise fail("catboost.leaves", here, f"it has {len(values)} leaf values, not "
                       f"{leaves * dimension} (2**depth {leaves} x dimension {dimension})")
        if "leaf_weights" in tree:
            weights = _finite(tree["leaf_weights"], "leaf_weights", here)
            if len(weights) != leaves:
                raise fail("catboost.leaves", here, f"it has {len(weights)} leaf weights, "
                           f"not 2**depth {leaves}")


def _check_split(split: Any, where: str, borders: list[list[float]], one_hot: list[list[int]],
                 offsets: list[int], hot_offsets: list[int]) -> None:
    kind = split.get("split_type") if isinstance(split, dict) else None
    if kind == "FloatFeature":
        _keys(split, FLOAT_SPLIT, where, tuple(FLOAT_SPLIT))
        feature = split["float_feature_index"]
        if not isinstance(feature, int) or isinstance(feature, bool) or not (
                0 <= feature < len(borders)):
            raise fail("catboost.splits", where, f"it splits float feature {feature!r}, "
                       f"outside 0..{len(borders) - 1}")
        border = split["border"]
        if not isinstance(border, int | float) or border not in borders[feature]:
            raise fail("catboost.splits", where, f"its border {border!r} is not one of float "
                       f"feature {feature}'s {len(borders[feature])} borders")
        expected = offsets[feature] + borders[feature].index(float(border))
    elif kind == "OneHotFeature":
        _keys(split, ONE_HOT_SPLIT, where, tuple(ONE_HOT_SPLIT))
        feature = split["cat_feature_index"]
        if not isinstance(feature, int) or isinstance(feature, bool) or not (
                0 <= feature < len(one_hot)):
            raise fail("catboost.splits", where, f"it splits categorical feature "
                       f"{feature!r}, outside 0..{len(one_hot) - 1}")
        value = split["value"]
        if value not in one_hot[feature] or isinstance(value, bool):
            raise fail("catboost.splits", where, f"its one-hot value {value!r} is not one of "
                       f"categorical feature {feature}'s values")
        expected = hot_offsets[feature] + one_hot[feature].index(value)
    else:
        raise fail("catboost.kind", where, f"split type {str(kind)[:40]!r} is not checked "
                   "(only FloatFeature and OneHotFeature), so not loaded")
    if split["split_index"] != expected or isinstance(split["split_index"], bool):
        raise fail("catboost.splits", where, f"split_index {split['split_index']!r} is not "
                   f"its binary feature's index {expected}")


def check_catboost_model(text: Any, where: str, n_features: int,
                         n_classes: int | None, n_categorical: int = 0) -> str:
    """Check a CatBoost JSON export (see the module docstring) for an estimator taking
    `n_features` columns (`n_categorical` of them categorical) and answering `n_classes`
    classes (None: a regressor); returns the document written back out (`canonical`).
    Raises ModelCheckError."""
    document = parse(text, where)
    if document.get("ctr_data"):
        raise fail("catboost.kind", where, "it holds CTR features (categorical features "
                   "with more values than one_hot_max_size), which the platform does not "
                   "check, so it is not loaded")
    borders, one_hot = _features(document["features_info"], n_features, n_categorical,
                                 where)
    loss = _loss(document["model_info"], where)
    dimension = _dimension(document["model_info"], loss, n_classes, where)
    scale_bias = document["scale_and_bias"]
    if not (isinstance(scale_bias, list) and len(scale_bias) == 2):
        raise fail("catboost.record", where, "scale_and_bias is not [scale, [bias...]]")
    _finite([scale_bias[0]], "scale", where)
    if len(_finite(scale_bias[1], "bias", where)) != dimension:
        raise fail("catboost.leaves", where, f"bias has {len(scale_bias[1])} values, not the "
                   f"dimension {dimension}")
    _trees(document["oblivious_trees"], borders, one_hot, dimension, where)
    return canonical(document)


def canonical(document: dict) -> str:
    """The checked document as the only text CatBoost is given."""
    return json.dumps(document, allow_nan=False)


__all__ = ["MAX_DEPTH", "ModelCheckError", "canonical", "check_catboost_model", "parse"]
