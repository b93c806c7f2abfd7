"""What makes an untrusted graph acceptable, checked before ONNX Runtime sees it: only
the operators of ALLOWED_OPS from the allowed domains, no subgraphs, local functions or
external data, constant tensors and Reshape shapes of sane sizes (MAX_BYTES, the file's
own cap, is checked by `runtime.CompiledModel.from_bytes` before parsing), inputs
exactly the model's features, the task's output of the right width, and a cost per row
under the caps (`graph_cost`)."""

from __future__ import annotations

from collections.abc import Sequence

from ml_assets.core.artifacts.onnx.contract import (
    PROBABILITIES_OUTPUT,
    VALUE_OUTPUT,
    CompiledModelError,
    _short,
)
from ml_assets.core.artifacts.onnx.graph_cost import CostLimits, check_cost

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MAX_BYTES = 512 * 2**20  # a larger file is refused unread
MAX_INITIALIZER_BYTES = 512 * 2**20  # the graph's constant tensors, all together
MAX_DIMENSION = 2**31  # any constant tensor's dimension, or value of a Reshape shape

# The only operators a graph may use: what skl2onnx 1.20 emits (with custom_converters'
# imputer and one-hot converters and float32 casts) for the estimators the platform
# serves, collected by converting RandomForest / GradientBoosting / DecisionTree
# classifiers and regressors, LogisticRegression and Ridge behind the platform
# preprocessor (SimpleImputer, StandardScaler, OneHotEncoder, SelectKBest,
# ColumnTransformer) on breast cancer, penguins and diabetes, plus a few elementwise
# operators of the same converters' variants (Equal: an imputer's non-NaN marker;
# Imputer, Scaler, Mul); and TreeEnsemble (ai.onnx.ml 5), the one node of
# `hist_gradient_boosting`'s converter (a tree ensemble like the two before it: a bounded
# walk per tree, its size the graph's own constants). onnxmltools' LightGBM and XGBoost
# converters (`boosters`) emit nothing beyond this list. Nothing here loops, branches or
# allocates a tensor whose size comes from data (Loop, Scan, If, ConstantOfShape, Expand,
# Tile, Range, Resize, Pad, sequences...): a hostile file cannot hang or exhaust the
# loader through them.
ALLOWED_OPS = frozenset({
    ("", "Abs"), ("", "Add"), ("", "ArgMax"), ("", "Cast"), ("", "Concat"), ("", "Div"),
    ("", "Equal"), ("", "Gather"), ("", "Identity"), ("", "IsNaN"), ("", "MatMul"),
    ("", "Mul"), ("", "ReduceSum"), ("", "Reshape"), ("", "Sigmoid"), ("", "Softmax"),
    ("", "Sub"), ("", "Where"),
    ("ai.onnx.ml", "ArrayFeatureExtractor"), ("ai.onnx.ml", "Imputer"),
    ("ai.onnx.ml", "LabelEncoder"), ("ai.onnx.ml", "OneHotEncoder"),
    ("ai.onnx.ml", "Scaler"), ("ai.onnx.ml", "TreeEnsemble"),
    ("ai.onnx.ml", "TreeEnsembleClassifier"),
    ("ai.onnx.ml", "TreeEnsembleRegressor"),
})


def _external(tensor) -> bool:
    from onnx import TensorProto

    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _constants(graph) -> list:
    """Every constant tensor of `graph` (dense; a sparse one's values and indices):
    initializers and node attributes."""
    tensors = [*graph.initializer]
    sparse = [*graph.sparse_initializer]
    for node in graph.node:
        for attribute in node.attribute:
            tensors += [*attribute.tensors, *([attribute.t] if attribute.HasField("t") else [])]
            sparse += [*attribute.sparse_tensors,
                       *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor")
                         else [])]
    for item in sparse:
        tensors += [item.values, item.indices]
    return tensors


def _shape_values(graph) -> list[int]:
    """The values of constant tensors a Reshape takes as its shape."""
    from onnx import numpy_helper

    shapes = {node.input[1] for node in graph.node
              if node.op_type == "Reshape" and len(node.input) > 1}
    constant = {item.name: item for item in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    constant[node.output[0]] = attribute.t
    values: list[int] = []
    for name in shapes & set(constant):
        values += [int(v) for v in numpy_helper.to_array(constant[name]).reshape(-1)]
    return values


def _check_operators(graph) -> None:
    """Refuse what could hang or exhaust the loader before ONNX Runtime sees the graph:
    an operator not in ALLOWED_OPS (control flow, sequences, operators allocating a
    tensor whose size comes from data), a subgraph attribute, external data, constant
    tensors over MAX_INITIALIZER_BYTES together or a dimension over MAX_DIMENSION, a
    Reshape to an absurd shape."""
    from onnx import AttributeProto

    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if domain not in ALLOWED_DOMAINS:
            raise CompiledModelError(f"node {node.name or node.op_type!r} uses operator "
                                     f"domain {node.domain!r}; only ai.onnx and "
                                     "ai.onnx.ml are run")
        if (domain, node.op_type) not in ALLOWED_OPS:
            raise CompiledModelError(f"node {node.name or node.op_type!r} is a "
                                     f"{node.op_type!r} operator, which the platform's "
                                     "graphs never use; only "
                                     f"{', '.join(sorted(op for _, op in ALLOWED_OPS))} "
                                     "are run")
        for attribute in node.attribute:
            if (attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
                    or attribute.HasField("g") or len(attribute.graphs)):
                raise CompiledModelError(f"node {node.name or node.op_type!r} "
                                         f"({node.op_type}) has a subgraph attribute "
                                         f"{attribute.name!r}; subgraphs are not run")
    tensors = _constants(graph)
    if any(_external(t) for t in tensors):
        raise CompiledModelError("the graph refers to external data; a compiled model "
                                 "must be one self-contained file")
    total = 0
    for tensor in tensors:
        if any(d < 0 or d > MAX_DIMENSION for d in tensor.dims):
            raise CompiledModelError(f"constant tensor {tensor.name!r} has dimensions "
                                     f"{list(tensor.dims)[:8]}, over {MAX_DIMENSION}")
        total += tensor.ByteSize()
        if total > MAX_INITIALIZER_BYTES:
            raise CompiledModelError(f"the graph's constant tensors are over the "
                                     f"{MAX_INITIALIZER_BYTES // 2**20} MiB limit")
    try:
        shape = _shape_values(graph)
    except Exception as exc:  # noqa: BLE001 - a malformed constant
        raise CompiledModelError(f"a Reshape's shape cannot be read ({_short(exc, 120)})"
                                 ) from exc
    if any(abs(v) > MAX_DIMENSION for v in shape):
        raise CompiledModelError(f"a Reshape's shape has a dimension over {MAX_DIMENSION}")


def _check_graph(model, feature_names: list[str], task: str, classes: Sequence | None,
                 limits: CostLimits | None = None) -> None:
    """Refuse a graph the platform did not make, that does not fit the served model, or
    whose cost per row is over `limits` (`graph_cost.check_cost`; default: the
    settings)."""
    from onnx import TensorProto

    if len(model.functions):
        raise CompiledModelError("the graph defines local functions; only plain operators "
                                 "are run")
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise CompiledModelError(f"the graph imports operator domain {opset.domain!r}; "
                                     "only ai.onnx and ai.onnx.ml are run")
    _check_operators(model.graph)
    inputs = [item.name for item in model.graph.input]
    if inputs != list(feature_names):
        raise CompiledModelError(f"the graph's inputs {inputs[:5]}{'…' if len(inputs) > 5 else ''} "
                                 f"({len(inputs)}) are not the model's features "
                                 f"{list(feature_names)[:5]}"
                                 f"{'…' if len(feature_names) > 5 else ''} "
                                 f"({len(feature_names)}) in order")
    for item in model.graph.input:
        kind = item.type.tensor_type
        dims = kind.shape.dim
        if kind.elem_type not in (TensorProto.DOUBLE, TensorProto.STRING) or len(dims) != 2 or (
                dims[1].HasField("dim_value") and dims[1].dim_value != 1):
            raise CompiledModelError(f"graph input {item.name!r} is not a double or string "
                                     "tensor of shape [None, 1]")
    wanted = VALUE_OUTPUT if task == "regression" else PROBABILITIES_OUTPUT
    found = {item.name: item for item in model.graph.output}
    if wanted not in found:
        raise CompiledModelError(f"the graph has no {wanted!r} output (it has "
                                 f"{sorted(found)})")
    tensor = found[wanted].type.tensor_type
    if tensor.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE) or len(
            tensor.shape.dim) != 2:
        raise CompiledModelError(f"the graph's {wanted!r} output is not a float matrix")
    width = tensor.shape.dim[1]
    expected = 1 if task == "regression" else (0 if classes is None else len(classes))
    if width.HasField("dim_value") and expected and width.dim_value != expected:
        what = "value" if task == "regression" else "classes"
        raise CompiledModelError(f"the graph's {wanted!r} output has {width.dim_value} "
                                 f"columns for {expected} {what}")
    check_cost(model, limits)
