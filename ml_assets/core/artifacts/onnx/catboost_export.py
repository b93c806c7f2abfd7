"""CatBoost in the compiled flavour: a skl2onnx converter for the platform's
`CatBoostModel` that places CatBoost's own ONNX export (`save_model(format="onnx")`:
one `ai.onnx.ml` TreeEnsembleClassifier or TreeEnsembleRegressor node) in the graph of
the whole Pipeline, behind the platform's preprocessing.

CatBoost compares float32 feature values with float32 borders, so the graph casts the
preprocessed matrix to float32 in front of the node (`convertible._float32_input`), as
for the other tree libraries. The node's label output is the class index (the classes
travel in the graph's metadata, as for the platform's label encoding). CatBoost's
exporter supports float features only: a model with categorical features (the user's
own preprocessing with `cat_features`) is not converted, and says so; the parity gate
decides every graph that is.
"""

from __future__ import annotations

import threading

from ml_assets.core.artifacts.onnx.contract import _lib

ALIAS = "MlAssetsCatBoostModel"
_EXPORTED_OPS = {"TreeEnsembleClassifier", "TreeEnsembleRegressor"}
_registered = False
_lock = threading.Lock()


def _is_classifier(model) -> bool:
    return hasattr(model, "classes_")


def _parse(scope, model, inputs, custom_parsers=None):
    """The operator and its outputs: a classifier's label (class index) and
    probabilities (no ZipMap: the platform reads the tensor), a regressor's value."""
    types = _lib("skl2onnx.common.data_types")
    operator = scope.declare_local_operator(ALIAS, model)
    operator.inputs = inputs
    if _is_classifier(model):
        names = [("label", types.Int64TensorType()),
                 ("probabilities", types.FloatTensorType())]
    else:
        names = [("variable", types.FloatTensorType())]
    for name, kind in names:
        operator.outputs.append(scope.declare_local_variable(name, kind))
    return list(operator.outputs)


def _shapes(operator) -> None:
    types = _lib("skl2onnx.common.data_types")
    model = operator.raw_operator
    rows = operator.inputs[0].get_first_dimension()
    if _is_classifier(model):
        operator.outputs[0].set_type(types.Int64TensorType(shape=[rows]))
        operator.outputs[1].set_type(types.FloatTensorType(shape=[rows, len(model.classes_)]))
    else:
        operator.outputs[0].set_type(types.FloatTensorType(shape=[rows, 1]))


def not_exportable(model) -> str | None:
    """Why CatBoost's exporter cannot export the fitted CatBoostModel `model`, or None."""
    categorical = list(getattr(model, "cat_features_", []) or [])
    if categorical:
        return (f"CatBoost's ONNX export does not support categorical features "
                f"({', '.join(categorical)}); the model is served by scikit-learn's runtime")
    return None


def exported_node(model):
    """The one tree-ensemble node of CatBoost's ONNX export of `model` (a fitted
    CatBoostModel). Raises ValueError when CatBoost cannot export it."""
    import onnx

    problem = not_exportable(model)
    if problem:
        raise ValueError(problem)
    graph = onnx.load_model_from_string(model.onnx_bytes()).graph
    trees = [node for node in graph.node if node.op_type in _EXPORTED_OPS]
    others = sorted({node.op_type for node in graph.node} - _EXPORTED_OPS - {"ZipMap"})
    if len(trees) != 1 or others:
        raise ValueError(f"CatBoost's ONNX export holds {len(trees)} tree ensembles and "
                         f"{others or 'no other'} operators; one tree ensemble was expected")
    return trees[0]


def _convert(scope, operator, container) -> None:
    from onnx import helper

    model = operator.raw_operator
    node = exported_node(model)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    outputs = [output.full_name for output in operator.outputs]
    expected = "TreeEnsembleClassifier" if _is_classifier(model) else "TreeEnsembleRegressor"
    if node.op_type != expected:
        raise ValueError(f"CatBoost exported a {node.op_type} for a model answering as a "
                         f"{expected}")
    if _is_classifier(model) and attributes.get("classlabels_int64s") != list(
            range(len(model.classes_))):
        raise ValueError("CatBoost's exported classes are not the platform's label codes")
    container.add_node(node.op_type, [operator.inputs[0].full_name],
                       outputs[:2] if _is_classifier(model) else outputs[:1],
                       op_domain="ai.onnx.ml", op_version=1,
                       name=scope.get_unique_operator_name("CatBoost"), **attributes)


def register_catboost_converter() -> bool:
    """Register the converter with skl2onnx (global, idempotent); False when CatBoost is
    not installed."""
    global _registered
    from ml_assets.core.artifacts.onnx.boosters import installed

    with _lock:
        if _registered:
            return True
        if not installed("catboost"):
            return False
        from ml_assets.core.modeling.catboost_model import CatBoostModel

        _lib("skl2onnx").update_registered_converter(
            CatBoostModel, ALIAS, _shapes, _convert, parser=_parse,
            options={"nocl": [True, False], "zipmap": [False]})
        _registered = True
        return True
