"""A skl2onnx converter for HistGradientBoosting that keeps scikit-learn's float64
decisions: one `ai.onnx.ml` TreeEnsemble (opset 5) node over double inputs, with double
thresholds, leaf values and sums.

scikit-learn compares the float64 feature with a float64 threshold (`x <= t`, NaN to the
node's `missing_go_to_left` side) and adds float64 leaf values to a float64 baseline;
skl2onnx's own converter writes float32 thresholds (TreeEnsembleRegressor's float
attributes), so a value within float32 rounding of a threshold took the other branch.
TreeEnsemble (ai.onnx.ml 5) takes its thresholds and leaf weights as tensors of the
input's type and ONNX Runtime (>= 1.20) compares and sums in that type: with a double
input every decision is scikit-learn's own, missing values included
(`nodes_missing_value_tracks_true`). What remains is the order of float64 additions.

Converted: numeric splits, any number of trees per iteration; classifiers with the
binomial (sigmoid) or multinomial (softmax) loss, regressors with an identity link.
Refused (NotImplementedError, the conversion's reason): categorical splits (their
bitsets), a regressor whose loss has another link (poisson, gamma).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_assets.core.artifacts.onnx.contract import _lib

ML_DOMAIN = "ai.onnx.ml"
TREE_ENSEMBLE_OPSET = 5  # ai.onnx.ml TreeEnsemble: tensor thresholds in the input's type
# skl2onnx 1.20 refuses to write an ai.onnx.ml import above 3, so the node is added as
# version 3 and `convert` raises the graph's ai.onnx.ml import to TREE_ENSEMBLE_OPSET
# afterwards (`raise_ml_opset`; onnx.checker then validates every node against it).
_DECLARED_OPSET = 3
_BRANCH_LEQ = 0  # TreeEnsemble's nodes_modes value for `x <= threshold`
_SUM = 1  # aggregate_function SUM
_NONE = 0  # post_transform NONE


def _predictors(estimator) -> list[list[Any]]:
    predictors = getattr(estimator, "_predictors", None)
    if not isinstance(predictors, list) or not predictors:
        raise NotImplementedError("HistGradientBoosting has no fitted trees")
    return predictors


def tree_ensemble_attributes(estimator) -> dict[str, Any]:
    """The TreeEnsemble attributes of a fitted HistGradientBoosting: interior nodes of
    every tree (the root of a one-leaf tree becomes a split whose sides are that leaf),
    their double thresholds, and the leaves' double values per output."""
    from onnx import numpy_helper

    predictors = _predictors(estimator)
    width = len(predictors[0])
    roots: list[int] = []
    features: list[int] = []
    splits: list[float] = []
    missing_left: list[int] = []
    true_ids: list[int] = []
    true_leaf: list[int] = []
    false_ids: list[int] = []
    false_leaf: list[int] = []
    leaf_target: list[int] = []
    leaf_weight: list[float] = []
    for iteration in predictors:
        if len(iteration) != width:
            raise NotImplementedError("HistGradientBoosting's iterations have different "
                                      "numbers of trees")
        for target, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if bool(np.asarray(nodes["is_categorical"]).any()):
                raise NotImplementedError(
                    "HistGradientBoosting with categorical splits is not compiled (their "
                    "category bitsets have no TreeEnsemble form here): served by "
                    "scikit-learn")
            leaf = np.asarray(nodes["is_leaf"]).astype(bool)
            inner = np.flatnonzero(~leaf)
            leaves = np.flatnonzero(leaf)
            node_id = np.full(len(nodes), -1, dtype=np.int64)
            node_id[inner] = len(features) + np.arange(inner.size)
            leaf_id = np.full(len(nodes), -1, dtype=np.int64)
            leaf_id[leaves] = len(leaf_weight) + np.arange(leaves.size)
            leaf_target += [target] * leaves.size
            leaf_weight += np.asarray(nodes["value"][leaves], dtype=np.float64).tolist()
            if inner.size == 0:  # a single leaf: one split, both sides that leaf
                roots.append(len(features))
                features.append(0)
                splits.append(0.0)
                missing_left.append(1)
                true_ids.append(int(leaf_id[0]))
                false_ids.append(int(leaf_id[0]))
                true_leaf.append(1)
                false_leaf.append(1)
                continue
            roots.append(int(node_id[0]))
            for side, ids, flags in (("left", true_ids, true_leaf),
                                     ("right", false_ids, false_leaf)):
                child = np.asarray(nodes[side][inner], dtype=np.int64)
                child_leaf = leaf[child]
                ids += np.where(child_leaf, leaf_id[child], node_id[child]).tolist()
                flags += child_leaf.astype(np.int64).tolist()
            features += np.asarray(nodes["feature_idx"][inner], dtype=np.int64).tolist()
            splits += np.asarray(nodes["num_threshold"][inner], dtype=np.float64).tolist()
            missing_left += np.asarray(nodes["missing_go_to_left"][inner]).astype(
                np.int64).tolist()
    return {
        "n_targets": width, "aggregate_function": _SUM, "post_transform": _NONE,
        "tree_roots": roots,
        "nodes_modes": numpy_helper.from_array(np.zeros(len(features), dtype=np.uint8)),
        "nodes_featureids": features,
        "nodes_splits": numpy_helper.from_array(np.asarray(splits, dtype=np.float64)),
        "nodes_truenodeids": true_ids, "nodes_trueleafs": true_leaf,
        "nodes_falsenodeids": false_ids, "nodes_falseleafs": false_leaf,
        # x is NaN: the "true" (x <= t, left) side when scikit-learn sends it left
        "nodes_missing_value_tracks_true": missing_left,
        "leaf_targetids": leaf_target,
        "leaf_weights": numpy_helper.from_array(np.asarray(leaf_weight, dtype=np.float64)),
    }


def _raw(scope, operator, container) -> tuple[str, int]:
    """TreeEnsemble + baseline: the estimator's raw (link-space) predictions, double
    (N, trees per iteration)."""
    from onnx import TensorProto

    estimator = operator.raw_operator
    if not isinstance(operator.inputs[0].type,
                      _lib("skl2onnx.common.data_types").DoubleTensorType):
        raise NotImplementedError("HistGradientBoosting is compiled over double inputs only")
    attributes = tree_ensemble_attributes(estimator)
    trees = scope.get_unique_variable_name("tree_sum")
    container.add_node("TreeEnsemble", [operator.inputs[0].full_name], [trees],
                       op_domain=ML_DOMAIN, op_version=_DECLARED_OPSET,
                       name=scope.get_unique_operator_name("TreeEnsemble"), **attributes)
    width = int(attributes["n_targets"])
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(1, -1)
    if baseline.shape[1] != width:
        raise NotImplementedError(f"HistGradientBoosting's baseline has {baseline.shape[1]} "
                                  f"values for {width} trees per iteration")
    base = scope.get_unique_variable_name("baseline")
    container.add_initializer(base, TensorProto.DOUBLE, [1, width], baseline.ravel().tolist())
    raw = scope.get_unique_variable_name("raw")
    container.add_node("Add", [trees, base], [raw], name=scope.get_unique_operator_name("Add"))
    return raw, width


def convert_hist_gradient_boosting_regressor(scope, operator, container) -> None:
    estimator = operator.raw_operator
    link = type(estimator._loss.link).__name__
    if link != "IdentityLink":
        raise NotImplementedError(f"HistGradientBoostingRegressor(loss={estimator.loss!r}) "
                                  f"has a {link}; only identity-link losses are compiled")
    raw, _ = _raw(scope, operator, container)
    container.add_node("Identity", [raw], [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Identity"))


def convert_hist_gradient_boosting_classifier(scope, operator, container) -> None:
    from onnx import TensorProto

    estimator = operator.raw_operator
    classes = np.asarray(estimator.classes_)
    raw, width = _raw(scope, operator, container)
    probabilities = operator.outputs[1].full_name
    if width == 1:
        positive = scope.get_unique_variable_name("positive")
        container.add_node("Sigmoid", [raw], [positive],
                           name=scope.get_unique_operator_name("Sigmoid"))
        one = scope.get_unique_variable_name("one")
        container.add_initializer(one, TensorProto.DOUBLE, [1, 1], [1.0])
        negative = scope.get_unique_variable_name("negative")
        container.add_node("Sub", [one, positive], [negative],
                           name=scope.get_unique_operator_name("Sub"))
        container.add_node("Concat", [negative, positive], [probabilities], axis=1,
                           name=scope.get_unique_operator_name("Concat"))
    else:
        container.add_node("Softmax", [raw], [probabilities], axis=1,
                           name=scope.get_unique_operator_name("Softmax"))
    index = scope.get_unique_variable_name("argmax")
    container.add_node("ArgMax", [probabilities], [index], axis=1, keepdims=0,
                       name=scope.get_unique_operator_name("ArgMax"))
    table = scope.get_unique_variable_name("classes")
    if all(isinstance(c, str) for c in classes.tolist()):
        container.add_initializer(table, TensorProto.STRING, [len(classes)],
                                  [str(c).encode("utf-8") for c in classes.tolist()])
    else:
        numbers = classes.astype(np.int64)
        if not np.array_equal(numbers, classes):
            raise NotImplementedError("HistGradientBoostingClassifier's classes are neither "
                                      "strings nor integers")
        container.add_initializer(table, TensorProto.INT64, [len(classes)], numbers.tolist())
    picked = scope.get_unique_variable_name("picked")
    container.add_node("ArrayFeatureExtractor", [table, index], [picked], op_domain=ML_DOMAIN,
                       name=scope.get_unique_operator_name("ArrayFeatureExtractor"))
    shape = scope.get_unique_variable_name("flat")
    container.add_initializer(shape, TensorProto.INT64, [1], [-1])
    container.add_node("Reshape", [picked, shape], [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Reshape"))


def hist_gradient_boosting_converters() -> tuple[dict, dict]:
    """({estimator type: converter}, {estimator type: shape calculator}) for skl2onnx."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    shapes = _lib("skl2onnx.common.shape_calculator")
    return ({HistGradientBoostingClassifier: convert_hist_gradient_boosting_classifier,
             HistGradientBoostingRegressor: convert_hist_gradient_boosting_regressor},
            {HistGradientBoostingClassifier: shapes.calculate_linear_classifier_output_shapes,
             HistGradientBoostingRegressor: shapes.calculate_linear_regressor_output_shapes})


def raise_ml_opset(model) -> None:
    """The graph's ai.onnx.ml import set to TREE_ENSEMBLE_OPSET when it holds a
    TreeEnsemble node (see _DECLARED_OPSET)."""
    if not any(n.op_type == "TreeEnsemble" and n.domain == ML_DOMAIN for n in model.graph.node):
        return
    for opset in model.opset_import:
        if opset.domain == ML_DOMAIN:
            opset.version = max(opset.version, TREE_ENSEMBLE_OPSET)
            return
    model.opset_import.add(domain=ML_DOMAIN, version=TREE_ENSEMBLE_OPSET)


def uses_tree_ensemble(components) -> bool:
    """Whether a converted pipeline holding `components` needs ai.onnx.ml opset 5."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return any(isinstance(c, HistGradientBoostingClassifier | HistGradientBoostingRegressor)
               for c in components)
