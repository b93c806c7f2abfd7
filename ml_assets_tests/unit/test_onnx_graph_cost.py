"""A compiled graph's cost bounded before it serves (`graph_cost`): graphs of allowed
operators only, crafted here as an attacker with write access to a version's artifacts
would (a MatMul chain, a Gather fan-out, rows multiplied with each other, a tree with a
cycle), each folded into a real graph's output by a Mul by 0 so its answers are
unchanged, are refused by `CompiledModel.from_bytes` (the one way a graph is opened)
in bounded time and memory, naming the check and the figure; every model the
platform's converters emit passes with a wide margin."""

from __future__ import annotations

import resource
import time

import lightgbm
import numpy as np
import onnx
import pytest
import xgboost
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from ml_assets.core.artifacts.onnx.contract import PROBABILITIES_OUTPUT, CompiledModelError
from ml_assets.core.artifacts.onnx.gate import compile_and_check
from ml_assets.core.artifacts.onnx.graph_cost import (
    MAX_OPERATIONS_PER_ROW,
    MAX_TENSOR_BYTES_PER_ROW,
    CostLimits,
    GraphCostError,
    check_cost,
)
from ml_assets.core.artifacts.onnx.parity import rows_of
from ml_assets.core.artifacts.onnx.runtime import CompiledModel
from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
from ml_assets.core.data.schema_inference import infer_schema
from ml_assets.core.data.schemas import feature_columns
from ml_assets.core.modeling.labels import encode_labels_for
from ml_assets.core.modeling.pipeline import fit_final_pipeline
from ml_assets_tests.support.big_tables import TARGET, flights_frame

UNBOUNDED = CostLimits(10**18, 10**18)

FAMILIES = {
    "random_forest": lambda: RandomForestClassifier(n_estimators=100, random_state=0,
                                                    n_jobs=1),
    "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=0),
    "lightgbm": lambda: lightgbm.LGBMClassifier(verbose=-1, random_state=0, n_jobs=1),
    "xgboost": lambda: xgboost.XGBClassifier(random_state=0, n_jobs=1),
    "logistic_regression": lambda: LogisticRegression(max_iter=2000),
}


@pytest.fixture(scope="module")
def flights():
    """A flights-like table: a categorical of a few hundred values (one-hot top-K), a
    16-value one (one-hot), numbers with missing values; split as training splits it."""
    frame = flights_frame(4_000, seed=3).drop(columns=["rownames"])
    frame["tailnum"] = frame["tailnum"].str[:4]  # 400 values: not an identifier
    schema = infer_schema(frame, TARGET)
    split = split_frame(frame, TARGET, seed=42)
    kinds = feature_columns(schema, TARGET)
    preprocessor = build_preprocessor(split.X_train, kinds, task=split.task).fit(
        split.X_train, split.y_train)
    return split, kinds, preprocessor


def _compile(flights, estimator) -> tuple[bytes, list, list, list]:
    split, kinds, preprocessor = flights
    assert preprocessor is not None and "tailnum" in kinds
    with threadpool_limits(1):
        pipeline = fit_final_pipeline(preprocessor, encode_labels_for(estimator, split.y_train),
                                      split.X_train, split.y_train)
        data, report = compile_and_check(pipeline, split.X_train, split.X_test[list(kinds)],
                                         split.task)
    assert data is not None and report.passed, report.reason
    return data, list(split.X_train.columns), list(pipeline.classes_), rows_of(
        split.X_test[list(kinds)].head(20))


@pytest.fixture(scope="module")
def forest(flights):
    return _compile(flights, FAMILIES["random_forest"]())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_converted_family_costs_far_below_the_caps(flights, family):
    data, names, classes, rows = _compile(flights, FAMILIES[family]())
    cost = check_cost(onnx.load_from_string(data))
    # Margins: the default caps are at least 20x what the platform's own graphs cost.
    assert 0 < cost.operations * 20 < MAX_OPERATIONS_PER_ROW, cost
    assert 0 < cost.tensor_bytes * 100 < MAX_TENSOR_BYTES_PER_ROW, cost
    assert CompiledModel.from_bytes(data, names, "binary", classes).predict_proba(
        rows).shape == (len(rows), 2)


def _folded(data: bytes, branch) -> bytes:
    """The graph with `branch` (nodes, initializers and the name of an [N, 1] float
    tensor, from the graph's first input cast to float) added to its probabilities times
    0: the answers are unchanged, and only allowed operators are used."""
    model = onnx.load_from_string(data)
    graph = model.graph
    first = graph.input[0].name
    producer = next(n for n in graph.node if PROBABILITIES_OUTPUT in n.output)
    producer.output[list(producer.output).index(PROBABILITIES_OUTPUT)] = "cr_proba_before"
    nodes, initializers, out = branch("cr_x_float")
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "cr_zero")
    graph.initializer.extend([*initializers, zero])
    graph.node.extend([
        helper.make_node("Cast", [first], ["cr_x_float"], to=TensorProto.FLOAT),
        *nodes,
        helper.make_node("Mul", [out, "cr_zero"], ["cr_branch_zero"]),
        helper.make_node("Add", ["cr_proba_before", "cr_branch_zero"], [PROBABILITIES_OUTPUT]),
    ])
    return model.SerializeToString()


def _axes(name: str, *values: int):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def matmul_chain(width: int, links: int):
    """x [N,1] -> [N,width] -> `links` MatMuls by one [width,width] matrix -> [N,1]."""
    def branch(x):
        rng = np.random.default_rng(0)
        weights = [numpy_helper.from_array(np.ones((1, width), np.float32), "cr_w_in"),
                   numpy_helper.from_array(rng.normal(0, 1 / width, (width, width))
                                           .astype(np.float32), "cr_w_square"),
                   _axes("cr_axes_1", 1)]
        nodes = [helper.make_node("MatMul", [x, "cr_w_in"], ["cr_h0"])]
        for i in range(links):
            nodes.append(helper.make_node("MatMul", [f"cr_h{i}", "cr_w_square"], [f"cr_h{i + 1}"]))
        nodes.append(helper.make_node("ReduceSum", [f"cr_h{links}", "cr_axes_1"], ["cr_chain_sum"],
                                      keepdims=1))
        return nodes, weights, "cr_chain_sum"
    return branch


def gather_fan_out(first: int, second: int):
    """x [N,1] -> Gather to [N,first] -> Reshape [N,first,1] -> Gather to
    [N,first,second] -> summed back to [N,1]."""
    def branch(x):
        weights = [numpy_helper.from_array(np.zeros(first, np.int64), "cr_fan_1"),
                   numpy_helper.from_array(np.zeros(second, np.int64), "cr_fan_2"),
                   _axes("cr_shape_3d", -1, first, 1), _axes("cr_axes_12", 1, 2)]
        nodes = [helper.make_node("Gather", [x, "cr_fan_1"], ["cr_wide"], axis=1),
                 helper.make_node("Reshape", ["cr_wide", "cr_shape_3d"], ["cr_wide_3d"]),
                 helper.make_node("Gather", ["cr_wide_3d", "cr_fan_2"], ["cr_cube"], axis=2),
                 helper.make_node("ReduceSum", ["cr_cube", "cr_axes_12"], ["cr_fan_sum"],
                                  keepdims=0),
                 helper.make_node("Reshape", ["cr_fan_sum", "cr_shape_col"], ["cr_fan_col"])]
        return nodes, [*weights, _axes("cr_shape_col", -1, 1)], "cr_fan_col"
    return branch


def rows_times_rows(x):
    """x [N,1] -> Reshape [1,N] -> MatMul [N,1] x [1,N] = [N,N]: rows multiplied with
    each other (quadratic in the rows), summed back to [N,1]."""
    nodes = [helper.make_node("Reshape", [x, "cr_shape_row"], ["cr_x_row"]),
             helper.make_node("MatMul", [x, "cr_x_row"], ["cr_square"]),
             helper.make_node("ReduceSum", ["cr_square", "cr_axes_1"], ["cr_square_sum"],
                              keepdims=1)]
    return nodes, [_axes("cr_shape_row", 1, -1), _axes("cr_axes_1", 1)], "cr_square_sum"


def _refused(data: bytes, names, classes, check: str) -> GraphCostError:
    """from_bytes refuses `data` with `check`, in under 5 s and 500 MB more peak RSS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(GraphCostError) as refused:
        CompiledModel.from_bytes(data, names, "binary", classes)
    assert time.perf_counter() - started < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) * 1024 < 500 * 2**20
    assert refused.value.check == check, refused.value
    assert f"(check {check})" in str(refused.value)
    return refused.value


def test_a_matmul_chain_is_refused_by_its_operations_and_accepted_when_small(forest):
    data, names, classes, rows = forest
    expected = CompiledModel.from_bytes(data, names, "binary", classes).predict_proba(rows)
    # Small: the same construction is a valid graph with the same answers (the refusal
    # below is the cost, nothing else).
    small = _folded(data, matmul_chain(width=16, links=3))
    answers = CompiledModel.from_bytes(small, names, "binary", classes).predict_proba(rows)
    np.testing.assert_array_equal(answers, expected)
    # Large: 80 MatMuls of [1,2048] by [2048,2048], 335 M multiply-adds a row.
    large = _folded(data, matmul_chain(width=2048, links=80))
    assert check_cost(onnx.load_from_string(large), UNBOUNDED).operations > 300_000_000
    error = _refused(large, names, classes, "onnx.cost.operations")
    assert "operations a row, over the cap of 20,000,000" in str(error)
    assert "ML_ONNX_MAX_OPERATIONS_PER_ROW" in str(error) and "MatMul" in str(error)


def test_a_gather_fan_out_is_refused_by_its_operations_or_its_bytes(forest):
    data, names, classes, _ = forest
    # 10^4 x 10^4 values a row: over both caps; the operations are checked first.
    _refused(_folded(data, gather_fan_out(10_000, 10_000)), names, classes,
             "onnx.cost.operations")
    # 2,500 x 2,000 float32 a row (20 MB): few operations, too many bytes.
    error = _refused(_folded(data, gather_fan_out(2_500, 2_000)), names, classes,
                     "onnx.cost.bytes")
    assert "ML_ONNX_MAX_TENSOR_BYTES_PER_ROW" in str(error)
    # The small version passes: the construction itself is a valid graph.
    CompiledModel.from_bytes(_folded(data, gather_fan_out(10, 10)), names, "binary", classes)


def test_rows_multiplied_with_each_other_are_refused_at_any_size(forest):
    data, names, classes, _ = forest
    error = _refused(_folded(data, rows_times_rows), names, classes, "onnx.cost.growth")
    assert "grow faster than its rows" in str(error)


def _tree_edited(data: bytes, edit) -> bytes:
    model = onnx.load_from_string(data)
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    attributes = {a.name: a for a in node.attribute}
    edit(attributes)
    return model.SerializeToString()


def test_a_tree_with_a_cycle_or_a_child_outside_its_tree_is_refused(forest):
    data, names, classes, _ = forest

    def cycle(attributes):  # the root's first branch leads back to the root
        attributes["nodes_truenodeids"].ints[1] = 0

    def outside(attributes):  # a child id that is no node of the tree
        attributes["nodes_falsenodeids"].ints[0] = 10**6

    for edit in (cycle, outside):
        error = _refused(_tree_edited(data, edit), names, classes, "onnx.cost.trees")
        assert "not a later node of its own tree" in str(error)


def test_the_caps_are_settings(forest, monkeypatch):
    data, names, classes, _ = forest
    cost = check_cost(onnx.load_from_string(data))
    monkeypatch.setenv("ML_ONNX_MAX_OPERATIONS_PER_ROW", str(cost.operations - 1))
    with pytest.raises(CompiledModelError, match=f"costs {cost.operations:,} operations a "
                       f"row, over the cap of {cost.operations - 1:,}"):
        CompiledModel.from_bytes(data, names, "binary", classes)
    monkeypatch.setenv("ML_ONNX_MAX_OPERATIONS_PER_ROW", str(cost.operations))
    monkeypatch.setenv("ML_ONNX_MAX_TENSOR_BYTES_PER_ROW", str(cost.tensor_bytes - 1))
    with pytest.raises(CompiledModelError, match="onnx.cost.bytes"):
        CompiledModel.from_bytes(data, names, "binary", classes)
    monkeypatch.setenv("ML_ONNX_MAX_TENSOR_BYTES_PER_ROW", str(cost.tensor_bytes))
    CompiledModel.from_bytes(data, names, "binary", classes)
