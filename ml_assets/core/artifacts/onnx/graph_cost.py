"""What a graph costs per row, bounded before ONNX Runtime sees it: every tensor's shape
propagated from the inputs' [rows, 1] through the operators `graph_check` allows (no
shape inference the file could steer: its value_info is ignored), counting operations
and the bytes of every intermediate tensor; the graph is refused above
ML_ONNX_MAX_OPERATIONS_PER_ROW or ML_ONNX_MAX_TENSOR_BYTES_PER_ROW, or when its cost
grows faster than its rows.

The allow-list is not a cost bound: a chain of MatMuls, or a Gather fanning a row out to
millions of values that a Mul by 0 folds back, uses only allowed operators and keeps
the answers (and parity) while one row takes seconds. The figures are upper bounds:
a tree ensemble costs its node and leaf-weight count per row (a row visits at most
every node once, since every child must come after its parent, which also makes every
tree acyclic), an elementwise operator its output's elements, a MatMul its
multiply-adds, a reduction its input's elements; bytes are the sum over all tensors
the graph computes (strings counted at STRING_BYTES each), as if none were freed.

The cost is a polynomial in the number of rows with non-negative coefficients, so it is
computed at 1, 2 and 3 rows: a non-zero second difference means a term that grows
faster than the rows (a Reshape moving the rows into another axis, then a MatMul of
the rows with themselves), refused whatever the cap; otherwise the per-row figure is
the growth per row and the one-row figure (per-call constants included) is capped too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ml_assets.core.artifacts.onnx.contract import CompiledModelError

STRING_BYTES = 32  # an std::string; a string tensor's characters are not known statically
# Defaults: the largest of the platform's converted models (a 200-tree RandomForest of
# unlimited depth on 20,000 rows of a flights table: 372,104 tree nodes) costs 0.37 M
# operations a row; the preprocessing of any of them a few thousand, under 1 MiB.
MAX_OPERATIONS_PER_ROW = 20_000_000
MAX_TENSOR_BYTES_PER_ROW = 16 * 2**20


class GraphCostError(CompiledModelError):
    """A graph whose cost per row cannot be bounded, or is above a cap; `check` names the
    check (`onnx.cost.operations`, `onnx.cost.bytes`, `onnx.cost.growth`,
    `onnx.cost.shape`, `onnx.cost.trees`)."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{message} (check {check})")
        self.check = check


@dataclass(frozen=True)
class CostLimits:
    """The caps (settings ML_ONNX_MAX_OPERATIONS_PER_ROW, ML_ONNX_MAX_TENSOR_BYTES_PER_ROW)."""

    max_operations_per_row: int = MAX_OPERATIONS_PER_ROW
    max_tensor_bytes_per_row: int = MAX_TENSOR_BYTES_PER_ROW


@dataclass(frozen=True)
class GraphCost:
    """A graph's cost at a number of rows: operations, bytes of all tensors it computes,
    and the operator costing the most (its name and operations)."""

    rows: int
    operations: int
    tensor_bytes: int
    costliest: str
    costliest_operations: int


def cost_limits() -> CostLimits:
    """The caps from the ML_ONNX_MAX_* settings, read now."""
    from ml_assets.settings import PlatformSettings

    settings = PlatformSettings.from_env()
    return CostLimits(settings.onnx_max_operations_per_row,
                      settings.onnx_max_tensor_bytes_per_row)


# ONNX TensorProto element types -> bytes per element (STRING: an estimate).
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: STRING_BYTES, 9: 1, 10: 2,
             11: 8, 12: 4, 13: 8, 16: 2}
_FLOAT, _STRING, _INT64, _BOOL = 1, 8, 7, 9
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Equal", "Where"}
_SAME_SHAPE = {"Abs", "Identity", "IsNaN", "Sigmoid", "Softmax", "Imputer", "Scaler",
               "LabelEncoder", "Cast"}


@dataclass
class _Value:
    shape: tuple[int, ...]
    dtype: int
    constant: Any = None  # an initializer's values, for shapes and axes

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _fail(check: str, message: str) -> GraphCostError:
    return GraphCostError(check, message)


def _attributes(node, skip_lists: bool = False) -> dict[str, Any]:
    """A node's attributes as Python values; `skip_lists`: a tree ensemble's long node
    lists left out, except the few the shape rules read (`_tree_arrays` reads them)."""
    from onnx import AttributeProto, helper

    wanted = {"classlabels_strings", "classlabels_int64s", "n_targets"}
    lists = (AttributeProto.INTS, AttributeProto.FLOATS, AttributeProto.STRINGS,
             AttributeProto.TENSOR)
    return {a.name: helper.get_attribute_value(a) for a in node.attribute
            if not (skip_lists and a.type in lists and a.name not in wanted)}


def _broadcast(node, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded, strict=True):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise _fail("onnx.cost.shape", f"node {node.name or node.op_type!r} "
                        f"({node.op_type}) broadcasts shapes {list(shapes)} that do not agree")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _axis(node, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise _fail("onnx.cost.shape", f"node {node.name or node.op_type!r} "
                    f"({node.op_type}) has axis {axis} for a tensor of rank {rank}")
    return axis % max(rank, 1)


def _reshape(node, data: _Value, shape: _Value | None, allowzero: int) -> tuple[int, ...]:
    if shape is None or shape.constant is None:
        raise _fail("onnx.cost.shape", f"Reshape {node.name!r} takes a shape that is not a "
                    "constant of the graph; its cost cannot be bounded")
    target = [int(v) for v in shape.constant.reshape(-1)]
    out = [data.shape[i] if v == 0 and not allowzero and i < len(data.shape) else v
           for i, v in enumerate(target)]
    known = math.prod(v for v in out if v != -1)
    if out.count(-1) > 1 or any(v < -1 for v in out):
        raise _fail("onnx.cost.shape", f"Reshape {node.name!r} to {target} is not a shape")
    if -1 in out:
        if known == 0 or data.size % known:
            raise _fail("onnx.cost.shape", f"Reshape {node.name!r} cannot reshape "
                        f"{list(data.shape)} to {target}")
        out[out.index(-1)] = data.size // known
    if math.prod(out) != data.size:
        raise _fail("onnx.cost.shape", f"Reshape {node.name!r} cannot reshape "
                    f"{list(data.shape)} to {target}")
    return tuple(out)


def _reduce(node, data: _Value, axes_value: _Value | None, attrs: dict
            ) -> tuple[int, ...]:
    if axes_value is not None:
        if axes_value.constant is None:
            raise _fail("onnx.cost.shape", f"{node.op_type} {node.name!r} takes axes that "
                        "are not a constant of the graph")
        axes = [int(v) for v in axes_value.constant.reshape(-1)]
    else:
        axes = list(attrs.get("axes", []))
    rank = len(data.shape)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return data.shape
        axes = list(range(rank))
    reduced = {_axis(node, a, rank) for a in axes}
    keep = attrs.get("keepdims", 1)
    return tuple(1 if i in reduced else d for i, d in enumerate(data.shape)
                 if keep or i not in reduced)


def _matmul(node, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Output shape and multiply-adds of numpy's matmul."""
    if not a or not b:
        raise _fail("onnx.cost.shape", f"MatMul {node.name!r} of a scalar")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _fail("onnx.cost.shape", f"MatMul {node.name!r} of {list(a)} by {list(b)}")
    batch = _broadcast(node, [a2[:-2], b2[:-2]]) if len(a2) > 2 or len(b2) > 2 else ()
    out = (*batch, *([a2[-2]] if len(a) > 1 else []), *([b2[-1]] if len(b) > 1 else []))
    return out, math.prod(batch) * a2[-2] * b2[-1] * a2[-1]


def _tree_rows(node, x: _Value) -> int:
    if len(x.shape) not in (1, 2):
        raise _fail("onnx.cost.shape", f"{node.op_type} {node.name!r} takes a tensor of "
                    f"shape {list(x.shape)}; trees take [rows, features]")
    return 1 if len(x.shape) == 1 else x.shape[0]


def _tree_arrays(node) -> dict[str, Any]:
    """A tree ensemble's attributes as numpy arrays (lists of 10^5 ints and more)."""
    import numpy as np
    from onnx import AttributeProto, numpy_helper

    arrays: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == AttributeProto.INTS:
            arrays[a.name] = np.fromiter(a.ints, dtype=np.int64, count=len(a.ints))
        elif a.type == AttributeProto.FLOATS:
            arrays[a.name] = np.fromiter(a.floats, dtype=np.float32, count=len(a.floats))
        elif a.type == AttributeProto.STRINGS:
            arrays[a.name] = np.asarray(a.strings, dtype=object)
        elif a.type == AttributeProto.TENSOR:
            arrays[a.name] = numpy_helper.to_array(a.t).reshape(-1)
        elif a.type == AttributeProto.INT:
            arrays[a.name] = np.asarray([a.i], dtype=np.int64)
    return arrays


def _trees_refused(node, side: str) -> GraphCostError:
    return _fail("onnx.cost.trees", f"{node.op_type} {node.name!r} has a branch whose "
                 f"{side} child is not a later node of its own tree (or a leaf it holds)")


def _legacy_tree_cost(node, arrays: dict) -> int:
    """TreeEnsembleClassifier/Regressor: each branch's children are nodes of its own tree
    with larger ids (as every converter writes them), so no tree has a cycle and a row
    visits at most each node once."""
    import numpy as np

    empty = np.zeros(0, np.int64)
    trees, nodes = arrays.get("nodes_treeids", empty), arrays.get("nodes_nodeids", empty)
    true_ids = arrays.get("nodes_truenodeids", empty)
    false_ids = arrays.get("nodes_falsenodeids", empty)
    modes = arrays.get("nodes_modes", np.zeros(0, object))
    if not (len(trees) == len(nodes) == len(true_ids) == len(false_ids) == len(modes)):
        raise _fail("onnx.cost.trees", f"{node.op_type} {node.name!r} has node arrays of "
                    "different lengths")
    branch = modes != b"LEAF"
    keys = np.sort(trees * 2**32 + nodes)
    if np.any(np.diff(keys) == 0):
        raise _fail("onnx.cost.trees", f"{node.op_type} {node.name!r} repeats a "
                    "(tree, node) id")
    for side, children in (("true", true_ids), ("false", false_ids)):
        child, parent = children[branch], nodes[branch]
        wanted = trees[branch] * 2**32 + child
        at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
        if np.any(child <= parent) or (len(wanted) and np.any(keys[at] != wanted)):
            raise _trees_refused(node, side)
    weights = sum(len(arrays.get(name, empty)) for name in ("class_weights", "target_weights"))
    return len(modes) + weights


def _tree_cost(node) -> int:
    """Operations per row of a tree ensemble: its nodes plus leaf weights, once each."""
    import numpy as np

    arrays = _tree_arrays(node)
    if node.op_type != "TreeEnsemble":
        return _legacy_tree_cost(node, arrays)
    # ai.onnx.ml 5: global node indices; each tree's nodes lie between its root and the
    # next tree's root, children after parents: no tree shares a node or has a cycle.
    empty = np.zeros(0, np.int64)
    true_ids = arrays.get("nodes_truenodeids", empty)
    false_ids = arrays.get("nodes_falsenodeids", empty)
    true_leaf = arrays.get("nodes_trueleafs", empty)
    false_leaf = arrays.get("nodes_falseleafs", empty)
    roots, weights = arrays.get("tree_roots", empty), arrays.get("leaf_weights", empty)
    count = len(true_ids)
    if not (len(false_ids) == len(true_leaf) == len(false_leaf) == count):
        raise _fail("onnx.cost.trees", f"TreeEnsemble {node.name!r} has node arrays of "
                    "different lengths")
    if count and not len(roots):
        raise _fail("onnx.cost.trees", f"TreeEnsemble {node.name!r} has nodes and no "
                    "tree roots")
    bounds = np.append(roots, count).astype(np.int64)
    if len(roots) and (roots[0] != 0 or np.any(np.diff(bounds) <= 0)):
        raise _fail("onnx.cost.trees", f"TreeEnsemble {node.name!r} has tree roots that "
                    "are not increasing node indices")
    end = np.repeat(bounds[1:], np.diff(bounds))
    index = np.arange(count)
    for side, ids, is_leaf in (("true", true_ids, true_leaf), ("false", false_ids,
                                                              false_leaf)):
        to_node = is_leaf == 0
        if np.any(to_node & ((ids <= index) | (ids >= end))) or np.any(
                ~to_node & ((ids < 0) | (ids >= len(weights)))):
            raise _trees_refused(node, side)
    return count + len(weights) + len(arrays.get("membership_values", empty))


def _node_shapes(node, values: list[_Value | None], attrs: dict, tree_cost: int
                 ) -> Iterator[tuple[tuple[int, ...], int, int]]:
    """(shape, element type, operations) of each of `node`'s outputs."""
    op = node.op_type
    x = values[0]
    if x is None:
        raise _fail("onnx.cost.shape", f"node {node.name or op!r} ({op}) has no input")
    if op in _ELEMENTWISE:
        present = [v for v in values if v is not None]
        shape = _broadcast(node, [v.shape for v in present])
        dtype = _BOOL if op == "Equal" else present[-1].dtype
        yield shape, dtype, math.prod(shape)
    elif op in _SAME_SHAPE:
        dtype = {"IsNaN": _BOOL, "Scaler": _FLOAT, "Imputer": x.dtype,
                 "Cast": attrs.get("to", x.dtype)}.get(op, x.dtype)
        if op == "LabelEncoder":
            dtype = (_STRING if "values_strings" in attrs
                     else _INT64 if "values_int64s" in attrs else _FLOAT)
        yield x.shape, dtype, x.size
    elif op == "ArgMax":
        yield _reduce(node, x, None, {"axes": [attrs.get("axis", 0)],
                                      "keepdims": attrs.get("keepdims", 1)}), _INT64, x.size
    elif op == "ReduceSum":
        yield _reduce(node, x, values[1] if len(values) > 1 else None, attrs), x.dtype, x.size
    elif op == "Concat":
        axis = _axis(node, attrs.get("axis", 0), len(x.shape))
        if any(v is None or len(v.shape) != len(x.shape) or any(
                a != b for i, (a, b) in enumerate(zip(v.shape, x.shape, strict=True))
                if i != axis) for v in values):
            raise _fail("onnx.cost.shape", f"Concat {node.name!r} of shapes that differ")
        shape = tuple(sum(v.shape[axis] for v in values if v is not None) if i == axis
                      else d for i, d in enumerate(x.shape))
        yield shape, x.dtype, math.prod(shape)
    elif op == "Gather":
        indices = values[1] if len(values) > 1 else None
        if indices is None:
            raise _fail("onnx.cost.shape", f"Gather {node.name!r} has no indices")
        axis = _axis(node, attrs.get("axis", 0), len(x.shape))
        shape = (*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])
        yield shape, x.dtype, math.prod(shape)
    elif op == "MatMul":
        if len(values) < 2 or values[1] is None:
            raise _fail("onnx.cost.shape", f"MatMul {node.name!r} has one input")
        shape, operations = _matmul(node, x.shape, values[1].shape)
        yield shape, x.dtype, operations
    elif op == "Reshape":
        yield (_reshape(node, x, values[1] if len(values) > 1 else None,
                        attrs.get("allowzero", 0)), x.dtype, x.size)
    elif op == "ArrayFeatureExtractor":
        if len(values) < 2 or values[1] is None:
            raise _fail("onnx.cost.shape", f"ArrayFeatureExtractor {node.name!r} has no "
                        "indices")
        shape = (*(x.shape[:-1] or (1,)), values[1].size)
        yield shape, x.dtype, math.prod(shape)
    elif op == "OneHotEncoder":
        width = len(attrs.get("cats_int64s", [])) + len(attrs.get("cats_strings", []))
        shape = (*x.shape, width)
        yield shape, _FLOAT, math.prod(shape) + x.size
    elif op in ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"):
        rows = _tree_rows(node, x)
        operations = rows * tree_cost
        if op == "TreeEnsembleClassifier":
            labels = attrs.get("classlabels_strings") or attrs.get("classlabels_int64s") or []
            width = max(len(labels), 2)
            yield (rows,), _STRING if attrs.get("classlabels_strings") else _INT64, operations
            yield (rows, width), _FLOAT, 0
        else:
            width = int(attrs.get("n_targets", 1))
            yield (rows, width), x.dtype if op == "TreeEnsemble" else _FLOAT, operations
    else:  # graph_check refuses it first; never guess a cost
        raise _fail("onnx.cost.shape", f"no cost rule for operator {op!r}")


def _prepared(model) -> list[tuple[Any, dict, int]]:
    """Each node with its (small) attributes and, for a tree ensemble, its cost per row."""
    prepared = []
    for node in model.graph.node:
        tree = node.op_type.startswith("TreeEnsemble")
        attrs = _attributes(node, skip_lists=tree)
        prepared.append((node, attrs, _tree_cost(node) if tree else 0))
    return prepared


def graph_cost(model, rows: int, prepared: list | None = None) -> GraphCost:
    """The cost of running `model` (an onnx ModelProto that passed graph_check's operator
    checks) on `rows` rows. Raises GraphCostError when a shape cannot be followed."""
    from onnx import numpy_helper

    prepared = _prepared(model) if prepared is None else prepared
    graph = model.graph
    values: dict[str, _Value] = {}
    for tensor in graph.initializer:
        constant = None
        if tensor.data_type == _INT64 and math.prod(tensor.dims) <= 64:
            constant = numpy_helper.to_array(tensor)  # shapes and axes
        values[tensor.name] = _Value(tuple(tensor.dims), tensor.data_type, constant)
    for item in graph.input:
        if item.name not in values:
            values[item.name] = _Value((rows, 1), item.type.tensor_type.elem_type)
    operations = tensor_bytes = 0
    costliest, costliest_operations = "", -1
    for node, attrs, trees in prepared:
        inputs = [values.get(name) if name else None for name in node.input]
        missing = [name for name, v in zip(node.input, inputs, strict=True) if name and v is None]
        if missing:
            raise _fail("onnx.cost.shape", f"node {node.name or node.op_type!r} reads "
                        f"{missing[0]!r} before any node computes it")
        node_operations = 0
        for name, (shape, dtype, ops) in zip(node.output, _node_shapes(node, inputs, attrs,
                                                                       trees), strict=False):
            if any(d < 0 for d in shape):
                raise _fail("onnx.cost.shape", f"node {node.name or node.op_type!r} gives "
                            f"a negative dimension {list(shape)}")
            node_operations += ops
            tensor_bytes += math.prod(shape) * _ITEMSIZE.get(dtype, 8)
            if name:
                values[name] = _Value(shape, dtype)
        operations += node_operations
        if node_operations > costliest_operations:
            costliest = f"{node.op_type} {node.name!r}"
            costliest_operations = node_operations
    return GraphCost(rows, operations, tensor_bytes, costliest, max(costliest_operations, 0))


def check_cost(model, limits: CostLimits | None = None) -> GraphCost:
    """Refuse a graph whose cost grows faster than its rows, or whose operations or tensor
    bytes per row are above `limits` (default: the settings). Returns the cost per row
    (the larger of one row's cost and the growth per row)."""
    limits = limits or cost_limits()
    prepared = _prepared(model)
    one, two, three = (graph_cost(model, rows, prepared) for rows in (1, 2, 3))
    for what, a, b, c in (("operations", one.operations, two.operations, three.operations),
                          ("tensor bytes", one.tensor_bytes, two.tensor_bytes,
                           three.tensor_bytes)):
        if c - 2 * b + a != 0:
            raise _fail("onnx.cost.growth", f"the graph's {what} grow faster than its rows "
                        f"({a:,} for 1 row, {b:,} for 2, {c:,} for 3): it combines rows "
                        "with each other, which the platform's graphs never do")
    # Per row: one row's cost (per-call constants included) or the growth per row,
    # whichever is larger.
    per_row = GraphCost(1, max(one.operations, two.operations - one.operations),
                        max(one.tensor_bytes, two.tensor_bytes - one.tensor_bytes),
                        one.costliest, one.costliest_operations)
    if per_row.operations > limits.max_operations_per_row:
        raise _fail("onnx.cost.operations",
                    f"the graph costs {per_row.operations:,} operations a row, over the cap "
                    f"of {limits.max_operations_per_row:,} (ML_ONNX_MAX_OPERATIONS_PER_ROW); "
                    f"its costliest node is {one.costliest} with "
                    f"{one.costliest_operations:,}")
    if per_row.tensor_bytes > limits.max_tensor_bytes_per_row:
        raise _fail("onnx.cost.bytes",
                    f"the graph's intermediate tensors take {per_row.tensor_bytes:,} bytes a "
                    f"row, over the cap of {limits.max_tensor_bytes_per_row:,} "
                    "(ML_ONNX_MAX_TENSOR_BYTES_PER_ROW)")
    return per_row
