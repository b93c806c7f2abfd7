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

Every check is vectorised with numpy (a 200-tree forest: a few milliseconds). A failed
check raises `ModelCheckError`, whose sentence names where and what, e.g. "tree 3 of
RandomForestClassifier step 'model': node 17's right child 912 is outside 0..540
(node_count 541)"; the loader turns it into its UntrustedModelError. To support a new
array-carrying type, write `def check_x(obj, where: str) -> None` raising
`ModelCheckError` and add it to `VALIDATORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sparse
from sklearn.base import BaseEstimator, is_classifier
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
from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.feature_selection import SelectKBest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
    TargetEncoder,
)
from sklearn.tree import (
    BaseDecisionTree,
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)
from sklearn.tree._tree import Tree


class ModelCheckError(ValueError):
    """A model (or its skops file) failed a check; `check` names it (`tree.children`,
    `archive.entries`, ...) and the message says where and what, in one sentence."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


Validator = Callable[[Any, str], None]

# Fitted arrays whose last axis is one entry per input feature, wherever they appear.
PER_FEATURE_ARRAYS = (
    "feature_names_in_", "mean_", "var_", "scale_", "statistics_", "scores_", "pvalues_",
    "data_min_", "data_max_", "data_range_", "min_", "max_abs_", "center_", "variances_",
    "coef_", "theta_", "components_", "means_", "cluster_centers_", "lambdas_",
    "quantiles_", "feature_log_prob_", "feature_count_", "bin_edges_", "n_bins_",
)
_PER_FEATURE = frozenset(PER_FEATURE_ARRAYS)
_LEAF = -1  # sklearn's TREE_LEAF: no child


def _fail(check: str, where: str, what: str) -> ModelCheckError:
    return ModelCheckError(check, f"{where}: {what}")


def _n_features(obj: Any, where: str) -> int | None:
    """`n_features_in_` when fitted (a whole number >= 0), else None."""
    n = vars(obj).get("n_features_in_") if hasattr(obj, "__dict__") else None
    if n is None:
        return None
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0:
        raise _fail("n_features", where, f"n_features_in_ {n!r} is not a whole number")
    return int(n)


def _name(obj: Any) -> str:
    return type(obj).__name__


# -- the two tree structures ------------------------------------------------------------

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
        raise _fail("tree.cycle", where, f"node {node}'s {side} child is the root (node 0): "
                    "the tree has a cycle")
    counts = np.bincount(kids, minlength=n)
    shared = np.flatnonzero(counts > 1)
    if shared.size:
        node = int(shared[0])
        owners = sorted({int(p) for p in parents[(left[parents] == node)
                                                 | (right[parents] == node)]})
        raise _fail("tree.cycle", where, f"node {node} is the child of {int(counts[node])} "
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
            raise _fail("tree.cycle", where, f"node {node} is reached twice from the root: "
                        "the tree has a cycle")
    if not reached.all():
        node = int(np.flatnonzero(~reached)[0])
        raise _fail("tree.unreachable", where, f"node {node} is not reachable from the "
                    "root (node 0); it is part of a detached cycle")


def _check_children_range(where: str, left: np.ndarray, right: np.ndarray,
                          split: np.ndarray, n: int) -> None:
    for side, kids in (("left", left), ("right", right)):
        bad = split & ((kids < 0) | (kids >= n))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _fail("tree.children", where, f"node {node}'s {side} child "
                        f"{int(kids[node])} is outside 0..{n - 1} (node_count {n})")


def check_tree(tree: Tree, where: str) -> None:
    """sklearn's Tree (every DecisionTree*, forest and GradientBoosting tree)."""
    n = int(tree.node_count)
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature, threshold = np.asarray(tree.feature), np.asarray(tree.threshold)
    value = np.asarray(tree.value)
    n_outputs, n_classes = int(tree.n_outputs), np.asarray(tree.n_classes)
    if n < 1 or int(tree.capacity) < n:
        raise _fail("tree.node_count", where, f"node_count {n} does not fit its capacity "
                    f"{int(tree.capacity)}")
    lengths = {len(a) for a in (left, right, feature, threshold, tree.impurity,
                                tree.n_node_samples, tree.weighted_n_node_samples)}
    if lengths != {n}:
        raise _fail("tree.lengths", where, f"node arrays have lengths {sorted(lengths)}, not "
                    f"node_count {n}")
    if n_outputs < 1 or n_classes.shape != (n_outputs,) or (n_classes < 1).any():
        raise _fail("tree.outputs", where, f"n_classes {n_classes.tolist()} does not match "
                    f"n_outputs {n_outputs}")
    expected = (n, n_outputs, int(n_classes.max()))
    if value.shape != expected or int(tree.max_n_classes) != expected[2]:
        raise _fail("tree.values", where, f"value array has shape {value.shape}, not "
                    f"(node_count, n_outputs, max_n_classes) = {expected}")
    leaf_left, leaf_right = left == _LEAF, right == _LEAF
    half = leaf_left != leaf_right
    if half.any():
        node = int(np.flatnonzero(half)[0])
        raise _fail("tree.leaves", where, f"node {node} has children {int(left[node])} and "
                    f"{int(right[node])}: -1 (no child) must be on both sides of a leaf")
    split = ~leaf_left
    _check_children_range(where, left, right, split, n)
    _check_links(where, left, right, split)
    n_features = int(tree.n_features)
    bad = split & ((feature < 0) | (feature >= n_features))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise _fail("tree.features", where, f"node {node}'s feature {int(feature[node])} is "
                    f"outside 0..{n_features - 1} (n_features {n_features})")
    if np.isnan(threshold[split]).any():
        node = int(np.flatnonzero(split & np.isnan(threshold))[0])
        raise _fail("tree.thresholds", where, f"node {node}'s threshold is NaN")
    if not np.isfinite(value).all():
        raise _fail("tree.values", where, "value array holds NaN or infinity")


def check_tree_predictor(predictor: TreePredictor, where: str) -> None:
    """A HistGradientBoosting tree: node records, leaves, links and bitset rows (the
    feature indices are checked against the estimator by check_hist_gradient_boosting)."""
    nodes = predictor.nodes
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE \
            or nodes.ndim != 1 or nodes.shape[0] < 1:
        raise _fail("predictor.nodes", where, "nodes is not a non-empty 1-d array of "
                    "sklearn's predictor records")
    n = nodes.shape[0]
    is_leaf = nodes["is_leaf"]
    if (is_leaf > 1).any():
        raise _fail("predictor.leaves", where, f"node {int(np.flatnonzero(is_leaf > 1)[0])}"
                    "'s is_leaf is neither 0 nor 1")
    split = is_leaf == 0
    left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
    linked_leaf = ~split & ((left != 0) | (right != 0))
    if linked_leaf.any():
        node = int(np.flatnonzero(linked_leaf)[0])
        raise _fail("predictor.leaves", where, f"node {node} is a leaf with children "
                    f"{int(left[node])} and {int(right[node])}")
    _check_children_range(where, left, right, split, n)
    _check_links(where, left, right, split)
    if (nodes["feature_idx"][split] < 0).any():
        node = int(np.flatnonzero(split & (nodes["feature_idx"] < 0))[0])
        raise _fail("predictor.features", where, f"node {node}'s feature "
                    f"{int(nodes['feature_idx'][node])} is negative")
    if np.isnan(nodes["num_threshold"][split]).any():
        node = int(np.flatnonzero(split & np.isnan(nodes["num_threshold"]))[0])
        raise _fail("predictor.thresholds", where, f"node {node}'s threshold is NaN")
    if not np.isfinite(nodes["value"][~split]).all():
        raise _fail("predictor.values", where, "a leaf value is NaN or infinity")
    categorical = split & (nodes["is_categorical"] != 0)
    for name in ("binned_left_cat_bitsets", "raw_left_cat_bitsets"):
        bitsets = getattr(predictor, name)
        if not isinstance(bitsets, np.ndarray) or bitsets.ndim != 2 \
                or bitsets.shape[1] != 8 or bitsets.dtype != np.uint32:
            raise _fail("predictor.bitsets", where, f"{name} is not an (n, 8) uint32 array")
        bad = categorical & (nodes["bitset_idx"] >= bitsets.shape[0])
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _fail("predictor.bitsets", where, f"node {node}'s bitset index "
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
        raise _fail("tree.type", where, f"tree_ is a {_name(tree)}, not sklearn's Tree")
    n = _n_features(est, where)
    if n is not None and int(tree.n_features) != n:
        raise _fail("tree.n_features", where, f"its tree is built for {int(tree.n_features)} "
                    f"features but the estimator declares n_features_in_ {n}")
    n_outputs = vars(est).get("n_outputs_")
    if n_outputs is not None and int(tree.n_outputs) != n_outputs:
        raise _fail("tree.outputs", where, f"its tree has {int(tree.n_outputs)} outputs, "
                    f"the estimator n_outputs_ {n_outputs}")
    if "n_classes_" in vars(est):  # a classifier
        if not _same_classes(est.n_classes_, tree.n_classes):
            raise _fail("tree.classes", where, f"its tree has n_classes "
                        f"{np.asarray(tree.n_classes).tolist()}, the estimator {est.n_classes_}")


def _check_trees_fit(est: Any, trees: Iterable[tuple[Any, str]], where: str,
                     widths: list[int] | None = None) -> None:
    """Each fitted sub-tree reads the parent's input columns (or its own subset)."""
    n = _n_features(est, where)
    for i, (sub, label) in enumerate(trees):
        tree = vars(sub).get("tree_") if hasattr(sub, "__dict__") else None
        if not isinstance(tree, Tree) or n is None:
            continue
        width = n if widths is None else widths[i]
        if int(tree.n_features) != width or vars(sub).get("n_features_in_", width) != width:
            raise _fail("tree.n_features", label, f"it is built for {int(tree.n_features)} "
                        f"features but {where} passes it {width}")
        if "n_classes_" in vars(est) and "n_classes_" in vars(sub) \
                and not _same_classes(est.n_classes_, sub.n_classes_):
            raise _fail("tree.classes", label, f"it has n_classes {sub.n_classes_}, "
                        f"{where} {est.n_classes_}")


def check_forest(est: Any, where: str) -> None:
    """RandomForest*, ExtraTrees*, RandomTreesEmbedding; Bagging* and IsolationForest
    (whose trees each see `estimators_features_`)."""
    subs = vars(est).get("estimators_")
    if subs is None:
        return
    if not isinstance(subs, list):
        raise _fail("ensemble.estimators", where, "estimators_ is not a list")
    labels = [(sub, f"tree {i} of {where}") for i, sub in enumerate(subs)]
    features = vars(est).get("estimators_features_")
    widths = None
    if features is not None:
        n = _n_features(est, where)
        if len(features) != len(subs):
            raise _fail("ensemble.features", where, f"{len(features)} estimators_features_ "
                        f"for {len(subs)} estimators")
        for i, columns in enumerate(features):
            columns = np.asarray(columns)
            if columns.ndim != 1 or columns.dtype.kind not in "iu" or (
                    n is not None and columns.size and (columns.min() < 0
                                                        or columns.max() >= n)):
                raise _fail("ensemble.features", f"estimator {i} of {where}", "its feature "
                            f"indices are not whole numbers in 0..{(n or 0) - 1}")
        widths = [len(columns) for columns in features]
        if isinstance(est, IsolationForest) and vars(est).get("_max_features") == n:
            widths = [n if n is not None else w for w in widths]  # X is used whole
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
        raise _fail("boosting.stages", where, f"estimators_ is not an (n_stages, "
                    f"n_trees_per_iteration_={k}) array of trees")
    for sub in stages.ravel():
        if not isinstance(sub, DecisionTreeRegressor):
            raise _fail("boosting.stages", where, f"a stage holds a {_name(sub)}, not a "
                        "DecisionTreeRegressor")
        tree = vars(sub).get("tree_")
        if isinstance(tree, Tree) and (int(tree.n_outputs) != 1 or int(tree.max_n_classes)
                                       != 1):
            raise _fail("boosting.stages", where, "a stage's tree is not a single-output "
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
        raise _fail("boosting.init", where, f"its init estimator predicts {width} columns "
                    f"for n_trees_per_iteration_ {k}")


def _check_hgb_preprocessor(est: Any, where: str, n: int) -> None:
    """The categorical pre-encoder must give the predictors n columns, one per input."""
    pre = vars(est).get("_preprocessor")
    if pre is None:
        return
    if not isinstance(pre, ColumnTransformer):
        raise _fail("boosting.preprocessor", where, f"_preprocessor is a {_name(pre)}")
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
            raise _fail("boosting.preprocessor", where, "its categorical pre-encoder is not "
                        "the column-for-column one HistGradientBoosting builds")
        width += int(mask.sum())
    if width != n:
        raise _fail("boosting.preprocessor", where, f"its categorical pre-encoder outputs "
                    f"{width} columns for n_features_in_ {n}")


def _check_array() -> Callable:
    from sklearn.utils import check_array

    return check_array


def check_hist_gradient_boosting(est: Any, where: str) -> None:
    """HistGradientBoosting*: every predictor's split features within the preprocessed
    input, categorical splits only on categorical features (their row of the known
    categories bitsets), one predictor per output per iteration."""
    predictors = vars(est).get("_predictors")
    n = _n_features(est, where)
    if predictors is None or n is None:
        return
    k = vars(est).get("n_trees_per_iteration_")
    _check_hgb_preprocessor(est, where, n)
    mapper = vars(est).get("_bin_mapper")
    is_cat = vars(mapper).get("is_categorical_") if hasattr(mapper, "__dict__") else None
    is_cat = np.zeros(n, dtype=bool) if is_cat is None else np.asarray(is_cat)
    if is_cat.ndim != 1 or is_cat.shape[0] != n:
        raise _fail("boosting.categorical", where, f"_bin_mapper.is_categorical_ has shape "
                    f"{is_cat.shape}, not ({n},)")
    is_cat = is_cat.astype(bool)
    for i, row in enumerate(predictors):
        if not isinstance(row, list) or len(row) != k:
            raise _fail("boosting.predictors", where, f"iteration {i} holds "
                        f"{len(row) if isinstance(row, list) else _name(row)} predictors, "
                        f"not n_trees_per_iteration_ {k}")
        for j, predictor in enumerate(row):
            label = f"predictor {i}{f' (output {j})' if k > 1 else ''} of {where}"
            if not isinstance(predictor, TreePredictor):
                raise _fail("boosting.predictors", label, f"it is a {_name(predictor)}")
            nodes = predictor.nodes
            if nodes.dtype != PREDICTOR_RECORD_DTYPE:
                continue  # check_tree_predictor refuses it
            split = nodes["is_leaf"] == 0
            feature = nodes["feature_idx"]
            bad = split & ((feature < 0) | (feature >= n))
            if bad.any():
                node = int(np.flatnonzero(bad)[0])
                raise _fail("predictor.features", label, f"node {node}'s feature "
                            f"{int(feature[node])} is outside 0..{n - 1} (n_features {n})")
            categorical = split & (nodes["is_categorical"] != 0)
            wrong = categorical & ~is_cat[np.clip(feature, 0, n - 1)]
            if wrong.any():
                node = int(np.flatnonzero(wrong)[0])
                raise _fail("predictor.categorical", label, f"node {node} makes a categorical "
                            f"split on feature {int(feature[node])}, which is not categorical")


# -- preprocessing -----------------------------------------------------------------------

def check_categories(est: Any, where: str) -> None:
    """OneHotEncoder, OrdinalEncoder, TargetEncoder: one category array per feature."""
    categories = vars(est).get("categories_")
    n = _n_features(est, where)
    if categories is None or n is None:
        return
    if not isinstance(categories, list) or len(categories) != n or any(
            not isinstance(c, np.ndarray) or c.ndim != 1 for c in categories):
        size = len(categories) if isinstance(categories, list) else _name(categories)
        raise _fail("encoder.categories", where, f"categories_ holds {size} 1-d arrays, "
                    f"not n_features_in_ {n}")
    drop = vars(est).get("drop_idx_")
    if isinstance(drop, np.ndarray):
        ok = drop.shape == (n,) and all(
            d is None or (isinstance(d, int | np.integer) and 0 <= int(d) < len(c))
            for d, c in zip(drop.tolist(), categories, strict=True))
        if not ok:
            raise _fail("encoder.drop", where, "drop_idx_ does not index into categories_")


def check_standard_scaler(est: StandardScaler, where: str) -> None:
    """mean_, var_, scale_: one finite value per feature."""
    n = _n_features(est, where)
    for name in ("mean_", "var_", "scale_"):
        value = vars(est).get(name)
        if value is None or n is None:
            continue
        if not isinstance(value, np.ndarray) or value.shape != (n,) \
                or not np.isfinite(value).all():
            raise _fail("scaler.arrays", where, f"{name} is not {n} finite numbers "
                        f"(n_features_in_ {n})")


def check_simple_imputer(est: SimpleImputer, where: str) -> None:
    """statistics_: one fill value per feature."""
    value, n = vars(est).get("statistics_"), _n_features(est, where)
    if value is not None and n is not None and (not isinstance(value, np.ndarray)
                                                or value.shape != (n,)):
        raise _fail("imputer.statistics", where, f"statistics_ has shape "
                    f"{getattr(value, 'shape', None)}, not ({n},)")


def check_select_k_best(est: SelectKBest, where: str) -> None:
    """scores_ / pvalues_: one per feature; k within them."""
    n = _n_features(est, where)
    if n is None:
        return
    for name in ("scores_", "pvalues_"):
        value = vars(est).get(name)
        if value is not None and (not isinstance(value, np.ndarray) or value.shape != (n,)):
            raise _fail("selector.scores", where, f"{name} has shape "
                        f"{getattr(value, 'shape', None)}, not ({n},)")
    k = est.k
    if not (k == "all" or (isinstance(k, int | np.integer) and 0 <= int(k) <= n)):
        raise _fail("selector.k", where, f"k {k!r} is not 'all' nor in 0..{n}")


def _column_problem(columns: Any, n: int, names: set[str] | None) -> str | None:
    if callable(columns) or columns is None:
        return None
    if isinstance(columns, slice):
        columns = [c for c in (columns.start, columns.stop) if c is not None]
    if isinstance(columns, list | tuple) and columns and all(
            isinstance(c, bool | np.bool_) for c in columns):
        columns = np.asarray(columns, dtype=bool)  # a mask (e.g. the remainder's)
    values = np.asarray(columns, dtype=object if isinstance(columns, list | tuple) else None)
    if values.dtype == bool:
        return None if values.shape == (n,) else f"a {values.shape} mask for {n} columns"
    for value in np.atleast_1d(values).tolist():
        if isinstance(value, bool):
            return f"mixed column selector {value!r}"
        if isinstance(value, int | np.integer):
            if not -n <= int(value) < n:
                return f"column {value} outside 0..{n - 1}"
        elif isinstance(value, str):
            if names is not None and value not in names:
                return f"column {value!r} that is not among its input columns"
        else:
            return f"column selector {value!r}"
    return None


def check_column_transformer(est: ColumnTransformer, where: str) -> None:
    """Every transformer's columns lie within the input (indices, masks, names)."""
    n = _n_features(est, where)
    fitted = vars(est).get("transformers_")
    if n is None or fitted is None:
        return
    names_in = vars(est).get("feature_names_in_")
    names = None if names_in is None else {str(c) for c in names_in}
    for name, _, columns in fitted:
        problem = _column_problem(columns, n, names)
        if problem:
            raise _fail("columns.range", where, f"transformer {name!r} selects {problem}")


def check_sparse(matrix: Any, where: str) -> None:
    """A CSR/CSC/BSR matrix: indices and indptr consistent and in range."""
    try:
        matrix.check_format(full_check=True)
    except (ValueError, TypeError) as exc:
        raise _fail("sparse.indices", where, f"sparse matrix is malformed: {exc}") from exc


def check_coo(matrix: Any, where: str) -> None:
    """A COO matrix: every coordinate inside its shape."""
    for axis, coords in enumerate(matrix.coords):
        if coords.size and (coords.min() < 0 or coords.max() >= matrix.shape[axis]):
            raise _fail("sparse.indices", where, f"sparse matrix has an index outside its "
                        f"shape {matrix.shape}")


def check_feature_arrays(obj: Any, where: str) -> None:
    """For anything fitted with n_features_in_: each PER_FEATURE_ARRAYS attribute has
    n_features_in_ entries on its last axis."""
    n = _n_features(obj, where)
    if n is None:
        return
    state = vars(obj)
    for name in _PER_FEATURE.intersection(state):
        value = state[name]
        if isinstance(value, np.ndarray) and (value.ndim == 0 or value.shape[-1] != n):
            raise _fail("n_features", where, f"{name} has shape {value.shape} but "
                        f"n_features_in_ is {n}")


# -- the registry: type -> validator (looked up along the MRO) ---------------------------

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
    sparse.csr_matrix: check_sparse,
    sparse.csc_matrix: check_sparse,
    sparse.bsr_matrix: check_sparse,
    sparse.csr_array: check_sparse,
    sparse.csc_array: check_sparse,
    sparse.bsr_array: check_sparse,
    sparse.coo_matrix: check_coo,
    sparse.coo_array: check_coo,
}


def validator_for(kind: type) -> Validator | None:
    return next((VALIDATORS[c] for c in kind.__mro__ if c in VALIDATORS), None)


# -- the walk ----------------------------------------------------------------------------

_LEAVES = (str, bytes, int, float, complex, type, FunctionType, BuiltinFunctionType,
           MethodType, ModuleType, np.dtype, np.generic)


def type_name(kind: type) -> str:
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
            yield step, f"{_name(step)} step {name!r}{of}"
    if isinstance(obj, ColumnTransformer | FeatureUnion):
        pairs = state.get("transformers_") or state.get("transformer_list") or []
        for name, transformer, *_ in pairs:
            yield transformer, f"{_name(transformer)} transformer {name!r}{of}"
    if isinstance(obj, BaseDecisionTree) and "tree_" in state:
        yield state["tree_"], where if where.startswith("tree ") else f"the tree of {where}"
    subs = state.get("estimators_")
    if isinstance(subs, list):
        for i, sub in enumerate(subs):
            kind = "tree" if isinstance(sub, BaseDecisionTree) else f"{_name(sub)} estimator"
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
                yield item, f"{_name(item)} {attr}[{i}] of {where}"
        elif isinstance(value, dict):
            for key, item in value.items():
                yield item, f"{_name(item)} {attr}[{key!r}] of {where}"
        elif isinstance(value, np.ndarray) and value.dtype == object:
            for i, item in enumerate(value.ravel()):
                yield item, f"{_name(item)} {attr}[{i}] of {where}"
        else:
            yield value, f"{_name(value)} {attr} of {where}"


def validate_model(model: Any, needed_types: Iterable[str] = (),
                   operator_types: Iterable[str] = ()) -> int:
    """Run every check on everything `model` holds; raises ModelCheckError. Returns
    how many objects were checked. `needed_types`: the types the file needs beyond
    skops' defaults; `operator_types`: those the operator trusted explicitly."""
    needed, explicit = set(needed_types), set(operator_types)
    seen: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(model, _name(model), True)]
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
        elif type_name(type(obj)) in needed and type_name(type(obj)) not in explicit \
                and _holds_arrays(obj):
            raise _fail("unvalidated_type", where, f"{type_name(type(obj))} carries arrays "
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
