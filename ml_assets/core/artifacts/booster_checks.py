"""Checks on LightGBM and XGBoost boosters, run on the skops file's own record of them
before skops builds them.

A booster is not a Python structure: skops rebuilds `lightgbm.basic.Booster` from its
model text and `xgboost.core.Booster` from its raw model bytes, each parsed by the
library's C++ code, whose prediction then follows child and feature indices without
bounds checks (a crafted index reads out of bounds, a cycle never returns), and whose
LightGBM parser locates trees by the text's own `tree_sizes`. So the record is read here
first, in Python, from the archive `archive.check_archive` has already bounded:
`check_booster_records(path)` finds every booster in the file's schema and checks

- LightGBM (model text): `tree_sizes` lands on each `Tree=` section inside the text;
  per tree, every array has the length `num_leaves` gives, children are internal nodes
  (0..num_leaves-2) or leaves (~leaf, 0..num_leaves-1), each reached exactly once from
  the root (a tree: no cycle, nothing detached), split features within
  `max_feature_idx`, categorical splits within `cat_boundaries` / `cat_threshold`,
  thresholds not NaN, leaf values finite; linear trees are refused (not checked);
- XGBoost (UBJSON or JSON model, alone or as a serialized Booster's "Model"): per
  tree, arrays of `num_nodes` entries, children within 0..num_nodes-1 (-1 on both
  sides of a leaf), each non-root node reached exactly once from the root, split
  features within `num_feature`; `tree_info` one class index per tree within
  `num_class`; categorical splits are refused (not checked).

A failed check raises `ModelCheckError` (check `booster.*`), naming the booster, the
tree and the node.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ml_assets.core.artifacts.checks import ModelCheckError, fail
from ml_assets.core.artifacts.tree_checks import _check_children_range, _check_links

LIGHTGBM_BOOSTER = ("lightgbm.basic", "Booster")
XGBOOST_BOOSTER = ("xgboost.core", "Booster")
MAX_NESTING = 200  # a skops schema or XGBoost model nested deeper is refused


# -- finding the boosters in a skops file ------------------------------------------------

def _nodes(node: Any, depth: int = 0) -> Iterator[dict]:
    if depth > MAX_NESTING:
        raise fail("booster.record", "the skops schema", f"is nested over {MAX_NESTING} deep")
    if isinstance(node, dict):
        if "__class__" in node:
            yield node
        for value in node.values():
            yield from _nodes(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value, depth + 1)


def _state(node: dict, where: str) -> dict:
    """The DictNode of a booster's ObjectNode: {attribute: node}."""
    content = node.get("content")
    if not (isinstance(content, dict) and content.get("__loader__") == "DictNode"
            and isinstance(content.get("content"), dict)):
        raise fail("booster.record", where, "its state is not a plain dictionary")
    return content["content"]


def check_booster_records(path: Path) -> int:
    """Check every LightGBM / XGBoost booster the skops file at `path` holds, before it is
    built; returns how many were checked. Raises ModelCheckError."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
        checked = 0
        for node in _nodes(schema):
            kind = (node.get("__module__"), node.get("__class__"))
            if kind == LIGHTGBM_BOOSTER:
                where = f"LightGBM booster {checked}"
                handle = _state(node, where).get("_handle")
                if not (isinstance(handle, dict) and handle.get("__loader__") == "JsonNode"
                        and isinstance(handle.get("content"), str)):
                    raise fail("booster.record", where, "its model is not stored as text")
                text = json.loads(handle["content"])
                if not isinstance(text, str):
                    raise fail("booster.record", where, "its model text is not a string")
                check_lightgbm_model(text, where)
            elif kind == XGBOOST_BOOSTER:
                where = f"XGBoost booster {checked}"
                handle = _state(node, where).get("handle")
                name = handle.get("file") if isinstance(handle, dict) else None
                if not (isinstance(handle, dict) and handle.get("__loader__") == "BytearrayNode"
                        and isinstance(name, str) and name in archive.namelist()):
                    raise fail("booster.record", where, "its model is not stored as bytes "
                               "in the file")
                check_xgboost_model(archive.read(name), where)
            else:
                continue
            checked += 1
    return checked


# -- LightGBM ----------------------------------------------------------------------------

def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _numbers(fields: dict[str, str], key: str, size: int, where: str, kind: type) -> np.ndarray:
    text = fields.get(key, "")
    try:
        values: np.ndarray = np.asarray([kind(v) for v in text.split()] if text else [],
                                        dtype=kind)
    except ValueError:
        raise fail("booster.arrays", where, f"{key} is not a list of numbers") from None
    if values.shape != (size,):
        raise fail("booster.arrays", where, f"{key} has {values.size} values, not {size}")
    return values


def _integer(fields: dict[str, str], key: str, where: str, low: int = 0) -> int:
    try:
        value = int(fields[key])
    except (KeyError, ValueError):
        raise fail("booster.header", where, f"{key} is missing or not a whole number"
                   ) from None
    if value < low:
        raise fail("booster.header", where, f"{key} {value} is below {low}")
    return value


def check_lightgbm_model(text: str, where: str) -> None:
    """A LightGBM model text (see the module docstring). Raises ModelCheckError."""
    start = text.find("\nTree=")
    if start < 0:
        raise fail("booster.trees", where, "the model text has no trees")
    header = _fields(text[:start])
    features = _integer(header, "max_feature_idx", where) + 1
    per_iteration = _integer(header, "num_tree_per_iteration", where, low=1)
    classes = _integer(header, "num_class", where, low=1)
    if per_iteration != classes:  # predictions write one output per tree of an iteration
        raise fail("booster.header", where, f"num_tree_per_iteration {per_iteration} is not "
                   f"num_class {classes}")
    body = text[start + 1:].partition("end of trees")[0]
    blocks = body.split("\nTree=")
    if "tree_sizes" in header:
        sizes = [int(s) for s in header["tree_sizes"].split()] if header["tree_sizes"] else []
        raw = text.encode("utf-8")
        offset = len(text[:start + 1].encode("utf-8"))
        for i, size in enumerate(sizes):
            if size < 0 or offset + size > len(raw) or not raw.startswith(b"Tree=", offset):
                raise fail("booster.tree_sizes", where, f"tree_sizes[{i}] {size} does not "
                           "land on a tree of the model text")
            offset += size
        if len(sizes) != len(blocks):
            raise fail("booster.tree_sizes", where, f"tree_sizes lists {len(sizes)} trees, "
                       f"the text has {len(blocks)}")
    if len(blocks) % per_iteration:
        raise fail("booster.trees", where, f"{len(blocks)} trees are not whole iterations "
                   f"of num_tree_per_iteration {per_iteration}")
    for i, block in enumerate(blocks):
        _check_lightgbm_tree(_fields(block), f"tree {i} of {where}", features)


def _check_lightgbm_tree(fields: dict[str, str], where: str, features: int) -> None:
    leaves = _integer(fields, "num_leaves", where, low=1)
    leaf_value = _numbers(fields, "leaf_value", leaves, where, float)
    if not np.isfinite(leaf_value).all():
        raise fail("booster.values", where, "a leaf value is not finite")
    if fields.get("is_linear", "0") not in ("0", ""):
        raise fail("booster.linear", where, "linear trees are not checked, so not loaded")
    inner = leaves - 1
    if inner == 0:
        return
    feature = _numbers(fields, "split_feature", inner, where, int)
    threshold = _numbers(fields, "threshold", inner, where, float)
    decision = _numbers(fields, "decision_type", inner, where, int)
    left = _numbers(fields, "left_child", inner, where, int)
    right = _numbers(fields, "right_child", inner, where, int)
    bad = np.flatnonzero((feature < 0) | (feature >= features))
    if bad.size:
        raise fail("booster.features", where, f"node {int(bad[0])} splits on feature "
                   f"{int(feature[bad[0]])}, outside 0..{features - 1}")
    if np.isnan(threshold).any():
        raise fail("booster.values", where, f"node {int(np.flatnonzero(np.isnan(threshold))[0])}"
                   " has a NaN threshold")
    categorical = (decision & 1).astype(bool)
    if categorical.any():
        cats = _integer(fields, "num_cat", where)
        bounds = _numbers(fields, "cat_boundaries", cats + 1, where, int)
        words = len(fields.get("cat_threshold", "").split())
        if bounds[0] != 0 or (np.diff(bounds) < 0).any() or bounds[-1] != words:
            raise fail("booster.categories", where, "cat_boundaries do not index "
                       f"cat_threshold ({words} words)")
        index = threshold[categorical]
        if ((index < 0) | (index >= cats) | (index != np.floor(index))).any():
            raise fail("booster.categories", where, f"a categorical split's threshold is "
                       f"not a category set in 0..{cats - 1}")
    # One node array: internal nodes 0..inner-1, then leaf l at inner + l.
    total = inner + leaves

    def node_of(child: np.ndarray) -> np.ndarray:
        return np.where(child >= 0, child, inner + ~child)

    for side, child in (("left", left), ("right", right)):
        wrong = np.flatnonzero((child >= inner) | (child < -leaves))
        if wrong.size:
            node = int(wrong[0])
            raise fail("booster.children", where, f"node {node}'s {side} child "
                       f"{int(child[node])} is neither an internal node (0..{inner - 1}) nor "
                       f"a leaf (-1..-{leaves})")
    split = np.zeros(total, dtype=bool)
    split[:inner] = True
    all_left = np.full(total, -1, dtype=np.int64)
    all_right = np.full(total, -1, dtype=np.int64)
    all_left[:inner], all_right[:inner] = node_of(left), node_of(right)
    _check_children_range(where, all_left, all_right, split, total)
    _check_links(where, all_left, all_right, split)


# -- XGBoost -----------------------------------------------------------------------------

_UBJ_NUMBERS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q", b"d": ">f",
                b"D": ">d"}


class _UBJ:
    """A bounded UBJSON reader for XGBoost's model format (objects, arrays, typed and
    counted arrays, numbers, strings, booleans, null)."""

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise fail("booster.record", self.where, "the model bytes end early")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def _number(self, marker: bytes) -> Any:
        fmt = _UBJ_NUMBERS.get(marker)
        if fmt is None:
            raise fail("booster.record", self.where, f"unexpected UBJSON marker {marker!r}")
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _length(self) -> int:
        value = self._number(self._take(1))
        if not isinstance(value, int) or value < 0 or value > len(self.data):
            raise fail("booster.record", self.where, f"a length {value} exceeds the model")
        return int(value)

    def value(self, marker: bytes | None = None, depth: int = 0) -> Any:
        if depth > MAX_NESTING:
            raise fail("booster.record", self.where, f"nested over {MAX_NESTING} deep")
        marker = marker or self._take(1)
        if marker in _UBJ_NUMBERS:
            return self._number(marker)
        if marker == b"S":
            return self._take(self._length()).decode("utf-8", "replace")
        if marker in (b"T", b"F", b"Z"):
            return {b"T": True, b"F": False, b"Z": None}[marker]
        if marker in (b"[", b"{"):
            return self._container(marker == b"{", depth)
        raise fail("booster.record", self.where, f"unexpected UBJSON marker {marker!r}")

    def _container(self, mapping: bool, depth: int) -> Any:
        kind, count = None, None
        if self.data[self.pos:self.pos + 1] == b"$":
            self.pos += 1
            kind = self._take(1)
        if self.data[self.pos:self.pos + 1] == b"#":
            self.pos += 1
            count = self._length()
        if kind in _UBJ_NUMBERS and not mapping and count is not None:
            dtype = np.dtype(_UBJ_NUMBERS[kind])
            return np.frombuffer(self._take(dtype.itemsize * count), dtype=dtype).tolist()
        items: Any = {} if mapping else []
        while count is None or len(items) < count:
            if count is None and self.data[self.pos:self.pos + 1] in (b"]", b"}"):
                self.pos += 1
                break
            key = self._take(self._length()).decode("utf-8", "replace") if mapping else None
            item = self.value(kind, depth + 1)
            if mapping:
                items[key] = item
            else:
                items.append(item)
        return items


def _xgboost_document(data: bytes, where: str) -> dict:
    try:
        document = (json.loads(data) if data[:1] == b"{" and data[1:2] != b"L"
                    else _UBJ(data, where).value())
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        if isinstance(exc, ModelCheckError):
            raise
        raise fail("booster.record", where, f"the model cannot be read ({exc})") from None
    if isinstance(document, dict) and "Model" in document:  # a serialized Booster:
        document = document["Model"]  # {"Config": ..., "Model": ...}
    if not isinstance(document, dict):
        raise fail("booster.record", where, "the model is not a JSON object")
    return document


def _get(document: Any, path: str, where: str) -> Any:
    node = document
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise fail("booster.record", where, f"the model has no {path}")
        node = node[part]
    return node


def _whole(value: Any, name: str, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise fail("booster.header", where, f"{name} {value!r} is not a whole number"
                   ) from None
    if number < 0:
        raise fail("booster.header", where, f"{name} {number} is negative")
    return number


def check_xgboost_model(data: bytes, where: str) -> None:
    """An XGBoost model (UBJSON, or JSON) (see the module docstring)."""
    document = _xgboost_document(data, where)
    learner = _get(document, "learner", where)
    features = _whole(_get(learner, "learner_model_param/num_feature", where), "num_feature",
                      where)
    classes = max(1, _whole(_get(learner, "learner_model_param/num_class", where),
                            "num_class", where))
    booster = _get(learner, "gradient_booster", where)
    name = booster.get("name") if isinstance(booster, dict) else None
    if name != "gbtree":
        raise fail("booster.kind", where, f"gradient booster {name!r} is not checked, so "
                   "not loaded (only gbtree)")
    model = _get(booster, "model", where)
    trees = _get(model, "trees", where)
    info = _get(model, "tree_info", where)
    if not isinstance(trees, list) or not isinstance(info, list) or len(info) != len(trees):
        raise fail("booster.trees", where, "tree_info does not list one class per tree")
    groups = np.asarray(info, dtype=np.int64) if info else np.zeros(0, dtype=np.int64)
    if groups.size and (groups.min() < 0 or groups.max() >= classes):
        raise fail("booster.trees", where, f"tree_info names a class outside 0..{classes - 1}")
    indptr = model.get("iteration_indptr") if isinstance(model, dict) else None
    if indptr is not None:
        bounds = np.asarray(indptr if isinstance(indptr, list) else [-1], dtype=np.int64)
        if bounds.ndim != 1 or bounds.size == 0 or bounds[0] != 0 or bounds[-1] != len(
                trees) or (np.diff(bounds) < 0).any():
            raise fail("booster.trees", where, f"iteration_indptr does not split the "
                       f"{len(trees)} trees into iterations")
    for i, tree in enumerate(trees):
        _check_xgboost_tree(tree, f"tree {i} of {where}", features)


def _array(tree: dict, key: str, size: int, where: str) -> np.ndarray:
    values = tree.get(key)
    if not isinstance(values, list) or len(values) != size:
        raise fail("booster.arrays", where, f"{key} does not hold {size} values")
    return np.asarray(values)


def _check_xgboost_tree(tree: Any, where: str, features: int) -> None:
    if not isinstance(tree, dict):
        raise fail("booster.record", where, "the tree is not an object")
    n = _whole(_get(tree, "tree_param/num_nodes", where), "num_nodes", where)
    if n < 1:
        raise fail("booster.arrays", where, "the tree has no nodes")
    if _whole(tree.get("tree_param", {}).get("size_leaf_vector", 1), "size_leaf_vector",
              where) > 1:
        raise fail("booster.kind", where, "multi-output trees are not checked, so not loaded")
    if tree.get("categories_nodes"):
        raise fail("booster.categories", where, "categorical splits are not checked, so "
                   "not loaded")
    left = _array(tree, "left_children", n, where).astype(np.int64)
    right = _array(tree, "right_children", n, where).astype(np.int64)
    split_index = _array(tree, "split_indices", n, where).astype(np.int64)
    conditions = _array(tree, "split_conditions", n, where).astype(np.float64)
    for key in ("default_left", "base_weights"):
        _array(tree, key, n, where)
    leaf = (left == -1) & (right == -1)
    split = ~leaf
    _check_children_range(where, left, right, split, n)
    _check_links(where, left, right, split)
    bad = np.flatnonzero(split & ((split_index < 0) | (split_index >= features)))
    if bad.size:
        raise fail("booster.features", where, f"node {int(bad[0])} splits on feature "
                   f"{int(split_index[bad[0]])}, outside 0..{features - 1}")
    if not all(math.isfinite(v) for v in conditions[leaf].tolist()):
        raise fail("booster.values", where, "a leaf value is not finite")
    if np.isnan(conditions[split]).any():
        raise fail("booster.values", where, "a split has a NaN threshold")


# -- after load: the scikit-learn wrappers agree with their booster -----------------------

def check_lightgbm_estimator(est: Any, where: str) -> None:
    """LGBMClassifier / LGBMRegressor: the booster's feature count is the estimator's,
    and a classifier's classes agree with its class count."""
    state = vars(est)
    booster = state.get("_Booster")
    if booster is None:
        return
    n = state.get("_n_features")
    if isinstance(n, int) and n >= 0 and booster.num_feature() != n:
        raise fail("booster.features", where, f"the booster takes {booster.num_feature()} "
                   f"features, the estimator {n}")
    classes, count = state.get("_classes"), state.get("_n_classes")
    if classes is not None and (not isinstance(count, int) or len(classes) != count):
        raise fail("booster.classes", where, f"{len(classes)} classes for n_classes {count!r}")


def check_xgboost_estimator(est: Any, where: str) -> None:
    """XGBClassifier / XGBRegressor: a classifier's class count is a whole number >= 2
    that the booster's trees were built for (checked before load: tree_info)."""
    state = vars(est)
    count = state.get("n_classes_")
    if count is not None and (not isinstance(count, int | np.integer) or count < 2):
        raise fail("booster.classes", where, f"n_classes_ {count!r} is not a class count")


def checked_before_load(obj: Any, where: str) -> None:
    """A Booster: its model was checked in the file (`check_booster_records`) before the
    library parsed it; nothing of it is held in Python arrays."""
