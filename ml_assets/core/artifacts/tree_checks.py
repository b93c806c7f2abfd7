"""Checks on the tree structures compiled prediction code follows without bounds checks:
scikit-learn's `Tree`, HistGradientBoosting's `TreePredictor`, and the ensembles that
hold them (forests, bagging, IsolationForest, GradientBoosting, HistGradientBoosting).

Each tree must be a tree: children within 0..node_count-1 (-1 on both sides of a
leaf), every node but the root the child of exactly one node, every node reachable
from the root (no cycle, nothing detached), split features within the input, no NaN
threshold, value arrays shaped for the outputs; and each ensemble must hand its trees
the columns and output buffers they were built for. All vectorised with numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder
from sklearn.tree import BaseDecisionTree, DecisionTreeRegressor
from sklearn.tree._tree import Tree

from ml_assets.core.artifacts.checks import fail, n_features_of, name_of

_LEAF = -1  # sklearn's TREE_LEAF: no child


def _check_links(where: str, left: np.ndarray, right: np.ndarray, split: np.ndarray) -> None:
    """Split nodes' children: each non-root node is the child of exactly one node, and
    every node is reachable from the root (node 0): a tree, no cycle, nothing detached.
    Children must already be in 0..n-1."""
    n = left.shape[0]
    parents = np.flatnonzero(split)
    kids = np.concatenate([left[parents], right[parents]])
    if (kids == 0).any():
        at = int(np.flatnonzero(kids == 0)[0])
        node, side = int(parents[at % parents.size]), ("left", "right")[at // parents.size]
        raise fail("tree.cycle", where, f"node {node}'s {side} child is the root (node 0): "
                   "the tree has a cycle")
    counts = np.bincount(kids, minlength=n)
    shared = np.flatnonzero(counts > 1)
    if shared.size:
        node = int(shared[0])
        owners = sorted({int(p) for p in parents[(left[parents] == node)
                                                 | (right[parents] == node)]})
        raise fail("tree.cycle", where, f"node {node} is the child of {int(counts[node])} "
                   f"links (nodes {', '.join(map(str, owners[:5]))}): a node must have "
                   "exactly one parent; the tree has a cycle or a shared subtree")
    if np.all(kids > np.concatenate([parents, parents])):
        return  # children after parents, one parent each: every node leads back to 0
    reached = np.zeros(n, dtype=bool)
    frontier = np.zeros(1, dtype=np.intp)
    for _ in range(n):
        reached[frontier] = True
        inner = frontier[split[frontier]]
        frontier = np.concatenate([left[inner], right[inner]]).astype(np.intp)
        if frontier.size == 0:
            break
        if reached[frontier].any():
            node = int(frontier[reached[frontier]][0])
            raise fail("tree.cycle", where, f"node {node} is reached twice from the root: "
                       "the tree has a cycle")
    if not reached.all():
        node = int(np.flatnonzero(~reached)[0])
        raise fail("tree.unreachable", where, f"node {node} is not reachable from the "
                   "root (node 0); it is part of a detached cycle")


def _check_children_range(where: str, left: np.ndarray, right: np.ndarray,
                          split: np.ndarray, n: int) -> None:
    for side, kids in (("left", left), ("right", right)):
        bad = split & ((kids < 0) | (kids >= n))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise fail("tree.children", where, f"node {node}'s {side} child "
                       f"{int(kids[node])} is outside 0..{n - 1} (node_count {n})")


def check_tree(tree: Tree, where: str) -> None:
    """sklearn's Tree (every DecisionTree*, forest and GradientBoosting tree)."""
    n = int(tree.node_count)
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature, threshold = np.asarray(tree.feature), np.asarray(tree.threshold)
    value = np.asarray(tree.value)
    n_outputs, n_classes = int(tree.n_outputs), np.asarray(tree.n_classes)
    if n < 1 or int(tree.capacity) < n:
        raise fail("tree.node_count", where, f"node_count {n} does not fit its capacity "
                   f"{int(tree.capacity)}")
    lengths = {len(a) for a in (left, right, feature, threshold, tree.impurity,
                                tree.n_node_samples, tree.weighted_n_node_samples)}
    if lengths != {n}:
        raise fail("tree.lengths", where, f"node arrays have lengths {sorted(lengths)}, not "
                   f"node_count {n}")
    if n_outputs < 1 or n_classes.shape != (n_outputs,) or (n_classes < 1).any():
        raise fail("tree.outputs", where, f"n_classes {n_classes.tolist()} does not match "
                   f"n_outputs {n_outputs}")
    expected = (n, n_outputs, int(n_classes.max()))
    if value.shape != expected or int(tree.max_n_classes) != expected[2]:
        raise fail("tree.values", where, f"value array has shape {value.shape}, not "
                   f"(node_count, n_outputs, max_n_classes) = {expected}")
    leaf_left, leaf_right = left == _LEAF, right == _LEAF
    half = leaf_left != leaf_right
    if half.any():
        node = int(np.flatnonzero(half)[0])
        raise fail("tree.leaves", where, f"node {node} has children {int(left[node])} and "
                   f"{int(right[node])}: -1 (no child) must be on both sides of a leaf")
    split = ~leaf_left
    _check_children_range(where, left, right, split, n)
    _check_links(where, left, right, split)
    n_features = int(tree.n_features)
    bad = split & ((feature < 0) | (feature >= n_features))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise fail("tree.features", where, f"node {node}'s feature {int(feature[node])} is "
                   f"outside 0..{n_features - 1} (n_features {n_features})")
    if np.isnan(threshold[split]).any():
        node = int(np.flatnonzero(split & np.isnan(threshold))[0])
        raise fail("tree.thresholds", where, f"node {node}'s threshold is NaN")
    if not np.isfinite(value).all():
        raise fail("tree.values", where, "value array holds NaN or infinity")


def check_tree_predictor(predictor: TreePredictor, where: str) -> None:
    """A HistGradientBoosting tree: node records, leaves, links and bitset rows (the
    feature indices are checked against the estimator by check_hist_gradient_boosting)."""
    nodes = predictor.nodes
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE \
            or nodes.ndim != 1 or nodes.shape[0] < 1:
        raise fail("predictor.nodes", where, "nodes is not a non-empty 1-d array of "
                   "sklearn's predictor records")
    n = nodes.shape[0]
    is_leaf = nodes["is_leaf"]
    if (is_leaf > 1).any():
        raise fail("predictor.leaves", where, f"node {int(np.flatnonzero(is_leaf > 1)[0])}"
                   "'s is_leaf is neither 0 nor 1")
    split = is_leaf == 0
    left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
    linked_leaf = ~split & ((left != 0) | (right != 0))
    if linked_leaf.any():
        node = int(np.flatnonzero(linked_leaf)[0])
        raise fail("predictor.leaves", where, f"node {node} is a leaf with children "
                   f"{int(left[node])} and {int(right[node])}")
    _check_children_range(where, left, right, split, n)
    _check_links(where, left, right, split)
    if (nodes["feature_idx"][split] < 0).any():
        node = int(np.flatnonzero(split & (nodes["feature_idx"] < 0))[0])
        raise fail("predictor.features", where, f"node {node}'s feature "
                   f"{int(nodes['feature_idx'][node])} is negative")
    if np.isnan(nodes["num_threshold"][split]).any():
        node = int(np.flatnonzero(split & np.isnan(nodes["num_threshold"]))[0])
        raise fail("predictor.thresholds", where, f"node {node}'s threshold is NaN")
    if not np.isfinite(nodes["value"][~split]).all():
        raise fail("predictor.values", where, "a leaf value is NaN or infinity")
    categorical = split & (nodes["is_categorical"] != 0)
    for name in ("binned_left_cat_bitsets", "raw_left_cat_bitsets"):
        bitsets = getattr(predictor, name)
        if not isinstance(bitsets, np.ndarray) or bitsets.ndim != 2 \
                or bitsets.shape[1] != 8 or bitsets.dtype != np.uint32:
            raise fail("predictor.bitsets", where, f"{name} is not an (n, 8) uint32 array")
        bad = categorical & (nodes["bitset_idx"] >= bitsets.shape[0])
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise fail("predictor.bitsets", where, f"node {node}'s bitset index "
                       f"{int(nodes['bitset_idx'][node])} is outside "
                       f"0..{bitsets.shape[0] - 1} ({name} has {bitsets.shape[0]} rows)")


# -- estimators whose arrays reach compiled code -----------------------------------------

def _same_classes(a: Any, b: Any) -> bool:
    return np.array_equal(np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b)))


def check_decision_tree(est: BaseDecisionTree, where: str) -> None:
    """A fitted decision tree: its Tree is built for the estimator's features/outputs."""
    tree = vars(est).get("tree_")
    if tree is None:
        return  # unfitted (a forest's template)
    if not isinstance(tree, Tree):
        raise fail("tree.type", where, f"tree_ is a {name_of(tree)}, not sklearn's Tree")
    n = n_features_of(est, where)
    if n is not None and int(tree.n_features) != n:
        raise fail("tree.n_features", where, f"its tree is built for {int(tree.n_features)} "
                   f"features but the estimator declares n_features_in_ {n}")
    n_outputs = vars(est).get("n_outputs_")
    if n_outputs is not None and int(tree.n_outputs) != n_outputs:
        raise fail("tree.outputs", where, f"its tree has {int(tree.n_outputs)} outputs, "
                   f"the estimator n_outputs_ {n_outputs}")
    if "n_classes_" in vars(est):  # a classifier
        if not _same_classes(est.n_classes_, tree.n_classes):
            raise fail("tree.classes", where, f"its tree has n_classes "
                       f"{np.asarray(tree.n_classes).tolist()}, the estimator {est.n_classes_}")


def _check_trees_fit(est: Any, trees: Iterable[tuple[Any, str]], where: str,
                     widths: list[int] | None = None) -> None:
    """Each fitted sub-tree reads the parent's input columns (or its own subset)."""
    n = n_features_of(est, where)
    for i, (sub, label) in enumerate(trees):
        tree = vars(sub).get("tree_") if hasattr(sub, "__dict__") else None
        if not isinstance(tree, Tree) or n is None:
            continue
        width = n if widths is None else widths[i]
        if int(tree.n_features) != width or vars(sub).get("n_features_in_", width) != width:
            raise fail("tree.n_features", label, f"it is built for {int(tree.n_features)} "
                       f"features but {where} passes it {width}")
        if "n_classes_" in vars(est) and "n_classes_" in vars(sub) \
                and not _same_classes(est.n_classes_, sub.n_classes_):
            raise fail("tree.classes", label, f"it has n_classes {sub.n_classes_}, "
                       f"{where} {est.n_classes_}")


def check_forest(est: Any, where: str) -> None:
    """RandomForest*, ExtraTrees*, RandomTreesEmbedding; Bagging* and IsolationForest
    (whose trees each see `estimators_features_`)."""
    subs = vars(est).get("estimators_")
    if subs is None:
        return
    if not isinstance(subs, list):
        raise fail("ensemble.estimators", where, "estimators_ is not a list")
    labels = [(sub, f"tree {i} of {where}") for i, sub in enumerate(subs)]
    features = vars(est).get("estimators_features_")
    widths = None
    if features is not None:
        n = n_features_of(est, where)
        if len(features) != len(subs):
            raise fail("ensemble.features", where, f"{len(features)} estimators_features_ "
                       f"for {len(subs)} estimators")
        for i, columns in enumerate(features):
            columns = np.asarray(columns)
            if columns.ndim != 1 or columns.dtype.kind not in "iu" or (
                    n is not None and columns.size and (columns.min() < 0
                                                        or columns.max() >= n)):
                raise fail("ensemble.features", f"estimator {i} of {where}", "its feature "
                           f"indices are not whole numbers in 0..{(n or 0) - 1}")
        widths = [len(columns) for columns in features]
        if isinstance(est, IsolationForest) and n is not None \
                and vars(est).get("_max_features") == n:
            widths = [n] * len(widths)  # no feature subsampling: each tree sees X whole
    _check_trees_fit(est, labels, where, widths)


def check_gradient_boosting(est: Any, where: str) -> None:
    """GradientBoosting*: `predict_stages` reads estimators_[i, k].tree_ directly into
    an (n_samples, K) buffer sized by the init estimator."""
    stages = vars(est).get("estimators_")
    if stages is None:
        return
    k = vars(est).get("n_trees_per_iteration_")
    if not isinstance(stages, np.ndarray) or stages.ndim != 2 or stages.dtype != object \
            or stages.shape[1] != k:
        raise fail("boosting.stages", where, f"estimators_ is not an (n_stages, "
                   f"n_trees_per_iteration_={k}) array of trees")
    for sub in stages.ravel():
        if not isinstance(sub, DecisionTreeRegressor):
            raise fail("boosting.stages", where, f"a stage holds a {name_of(sub)}, not a "
                       "DecisionTreeRegressor")
        tree = vars(sub).get("tree_")
        if isinstance(tree, Tree) and (int(tree.n_outputs) != 1 or int(tree.max_n_classes)
                                       != 1):
            raise fail("boosting.stages", where, "a stage's tree is not a single-output "
                       "regression tree")
    _check_trees_fit(est, ((sub, f"tree {i // k}{f' (output {i % k})' if k > 1 else ''} "
                                 f"of {where}") for i, sub in enumerate(stages.ravel())), where)
    init, loss = vars(est).get("init_"), vars(est).get("_loss")
    if isinstance(init, str) or init is None:
        return  # "zero": a buffer of n_trees_per_iteration_ columns
    width = 1
    if is_classifier(est) and getattr(loss, "is_multiclass", False):
        width = len(np.atleast_1d(vars(init).get("classes_", ())))
    elif not is_classifier(est):
        width = int(vars(init).get("n_outputs_", 1))
    if width != k:
        raise fail("boosting.init", where, f"its init estimator predicts {width} columns "
                   f"for n_trees_per_iteration_ {k}")


def _check_hgb_preprocessor(est: Any, where: str, n: int) -> None:
    """The categorical pre-encoder must give the predictors n columns, one per input."""
    pre = vars(est).get("_preprocessor")
    if pre is None:
        return
    if not isinstance(pre, ColumnTransformer):
        raise fail("boosting.preprocessor", where, f"_preprocessor is a {name_of(pre)}")
    width = 0
    for _, transformer, columns in pre.transformers_:
        mask = np.asarray(columns)
        if transformer == "drop" or (mask.dtype == bool and not mask.any()):
            continue
        one_to_one = (transformer == "passthrough" or isinstance(transformer, OrdinalEncoder)
                      or (type(transformer) is FunctionTransformer
                          and getattr(transformer.func, "func", transformer.func)
                          in (None, _check_array())))
        if not one_to_one or mask.dtype != bool or mask.shape != (n,):
            raise fail("boosting.preprocessor", where, "its categorical pre-encoder is not "
                       "the column-for-column one HistGradientBoosting builds")
        width += int(mask.sum())
    if width != n:
        raise fail("boosting.preprocessor", where, f"its categorical pre-encoder outputs "
                   f"{width} columns for n_features_in_ {n}")


def _check_array() -> Callable:
    from sklearn.utils import check_array

    return check_array


def check_hist_gradient_boosting(est: Any, where: str) -> None:
    """HistGradientBoosting*: every predictor's split features within the preprocessed
    input, categorical splits only on categorical features (their row of the known
    categories bitsets), one predictor per output per iteration."""
    predictors = vars(est).get("_predictors")
    n = n_features_of(est, where)
    if predictors is None or n is None:
        return
    k = vars(est).get("n_trees_per_iteration_")
    _check_hgb_preprocessor(est, where, n)
    mapper = vars(est).get("_bin_mapper")
    is_cat = vars(mapper).get("is_categorical_") if hasattr(mapper, "__dict__") else None
    is_cat = np.zeros(n, dtype=bool) if is_cat is None else np.asarray(is_cat)
    if is_cat.ndim != 1 or is_cat.shape[0] != n:
        raise fail("boosting.categorical", where, f"_bin_mapper.is_categorical_ has shape "
                   f"{is_cat.shape}, not ({n},)")
    is_cat = is_cat.astype(bool)
    known = vars(mapper).get("bin_thresholds_") if hasattr(mapper, "__dict__") else None
    for f in np.flatnonzero(is_cat):  # known categories become bits of an 8 x 32 bitset
        values = np.asarray(known[f]) if isinstance(known, list) and len(known) == n else None
        if values is None or values.ndim != 1 or not np.isfinite(values).all() or (
                values.size and (values.min() < 0 or values.max() > 255)):
            raise fail("boosting.categorical", where, f"the known categories of feature {f} "
                       "are not codes in 0..255")
    for i, row in enumerate(predictors):
        if not isinstance(row, list) or len(row) != k:
            raise fail("boosting.predictors", where, f"iteration {i} holds "
                       f"{len(row) if isinstance(row, list) else name_of(row)} predictors, "
                       f"not n_trees_per_iteration_ {k}")
        for j, predictor in enumerate(row):
            label = f"predictor {i}{f' (output {j})' if k > 1 else ''} of {where}"
            if not isinstance(predictor, TreePredictor):
                raise fail("boosting.predictors", label, f"it is a {name_of(predictor)}")
            nodes = predictor.nodes
            if nodes.dtype != PREDICTOR_RECORD_DTYPE:
                continue  # check_tree_predictor refuses it
            split = nodes["is_leaf"] == 0
            feature = nodes["feature_idx"]
            bad = split & ((feature < 0) | (feature >= n))
            if bad.any():
                node = int(np.flatnonzero(bad)[0])
                raise fail("predictor.features", label, f"node {node}'s feature "
                           f"{int(feature[node])} is outside 0..{n - 1} (n_features {n})")
            categorical = split & (nodes["is_categorical"] != 0)
            wrong = categorical & ~is_cat[np.clip(feature, 0, n - 1)]
            if wrong.any():
                node = int(np.flatnonzero(wrong)[0])
                raise fail("predictor.categorical", label, f"node {node} makes a categorical "
                           f"split on feature {int(feature[node])}, which is not categorical")


