"""Running a graph: `CompiledModel` checks graph bytes (`graph_check`) and runs them
with ONNX Runtime straight from the service's validated rows (or a DataFrame).

The graph's probabilities are returned as they are: rows whose top two probabilities
are within TIE_TOLERANCE (`near_ties`) are for the caller to answer with the Pipeline,
as float32 sums cannot tell which class scikit-learn's argmax picks.

Trees and some operators compute in float32. A value the preprocessing pushes past
float32's range (a huge value scaled up) gives non-finite outputs: callers must check
`np.isfinite` on what `predict_proba` / `predict_values` return and fall back to the
Pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from operator import itemgetter

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.onnx.contract import (
    _META_PREFIX,
    NAN_STRING,
    NONE_STRING,
    PROBABILITIES_OUTPUT,
    TASKS,
    VALUE_OUTPUT,
    CompiledModelError,
    _lib,
    _short,
)
from ml_assets.core.artifacts.onnx.graph_check import MAX_BYTES, _check_graph
from ml_assets.core.artifacts.onnx.graph_cost import CostLimits

# A row whose top two probabilities are within this is a near tie (`near_ties`): float32
# sums cannot say which class scikit-learn's float64 argmax picks (an even forest's exact
# 0.5/0.5 comes out as 0.50000006/0.49999997; a real [0.499996, 0.500004] is class 1),
# so the service answers those rows with the Pipeline, and `check_parity` leaves them
# out of the label comparison (counted as pipeline_rows; their probabilities are still
# compared). Above float32 accumulation error (<= 1e-6 for 200 trees), far below a
# forest's 1/n_trees steps.
TIE_TOLERANCE = 1e-5

# Rows per session.run: a tree ensemble walks each row through every tree, and in pieces
# whose rows stay in the CPU's cache it ran 12% faster per row than in pieces of 65,536
# (a 50-tree forest, 30 features, 1M rows: 1.84 s against 2.11 s of CPU).
RUN_ROWS = 8192


class CompiledModel:
    """An ONNX graph of a served Pipeline, run by ONNX Runtime on one thread per call.

    Build it with `from_bytes`. `predict_proba` / `predict_values` take the service's
    validated rows (lists in feature order; None for a missing value) with no pandas on
    the way; the `_frame` variants take a DataFrame. Calls are thread-safe (ONNX
    Runtime's `run` is). Answers are float64 but trees and some operators compute in
    float32: check `np.isfinite` and fall back to the Pipeline when they are not finite."""

    def __init__(self, session, feature_names: Sequence[str], kinds: Sequence[str],
                 task: str, classes: Sequence | None, sha256: str, opset: str,
                 none_string: str = NONE_STRING, nan_string: str = NAN_STRING):
        self.session = session
        self.feature_names = tuple(feature_names)
        self.kinds = tuple(kinds)  # "number" | "string" per feature
        self.task = task
        self.classes = [] if classes is None else list(classes)
        self.sha256 = sha256
        self.opset = opset
        self.none_string = none_string
        self.nan_string = nan_string
        self._output = [VALUE_OUTPUT if task == "regression" else PROBABILITIES_OUTPUT]
        self._number_index = [i for i, k in enumerate(self.kinds) if k == "number"]
        self._string_index = [i for i, k in enumerate(self.kinds) if k == "string"]
        self._number_names = [self.feature_names[i] for i in self._number_index]
        self._string_names = [self.feature_names[i] for i in self._string_index]
        self._all_numbers = len(self._number_index) == len(self.feature_names)
        self._number_get = itemgetter(*self._number_index or [0])

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    @classmethod
    def from_bytes(cls, data: bytes, feature_names: Sequence[str], task: str,
                   classes: Sequence | None, limits: CostLimits | None = None
                   ) -> CompiledModel:
        """Check and load graph bytes, treated as untrusted: at most MAX_BYTES, only the
        operators of ALLOWED_OPS (no control flow, sequences or data-sized allocations),
        no subgraphs, external data or local functions, constant tensors of sane sizes
        (all checked before ONNX Runtime sees the bytes, which it loads with basic
        optimizations and no constant folding: no node runs at load), inputs exactly
        `feature_names` in order (double or string, [None, 1]), the task's output with one
        column per class, a cost per row under `limits` (operations and tensor bytes,
        `graph_cost`; default: the ML_ONNX_MAX_* settings). Raises CompiledModelError
        naming what is wrong."""
        import onnx
        from onnx import TensorProto

        ort = _lib("onnxruntime")

        if task not in TASKS:
            raise CompiledModelError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        if len(data) > MAX_BYTES:
            raise CompiledModelError(f"the graph is {len(data) / 2**20:.0f} MiB, over the "
                                     f"{MAX_BYTES // 2**20} MiB limit")
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and kin
            raise CompiledModelError(f"the file is not an ONNX model ({_short(exc, 120)})"
                                     ) from exc
        if not model.HasField("graph"):
            raise CompiledModelError("the file is not an ONNX model (it has no graph)")
        names = [str(n) for n in feature_names]
        if task != "regression" and (classes is None or len(classes) == 0):
            raise CompiledModelError("a classifier's graph needs its classes")
        _check_graph(model, names, task, classes, limits)
        meta = {p.key: p.value for p in model.metadata_props}
        declared = meta.get(f"{_META_PREFIX}task")
        if declared is not None and declared != task:
            raise CompiledModelError(f"the graph was compiled for task {declared!r}, not "
                                     f"{task!r}")
        kinds = ["string" if item.type.tensor_type.elem_type == TensorProto.STRING else "number"
                 for item in model.graph.input]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Basic optimizations without constant folding, which would run the untrusted
        # graph's nodes at session creation (ENABLE_ALL's layout and fusion passes are
        # not measurably faster on a 200-tree forest, 1 or 1000 rows).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=["ConstantFolding"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors
            raise CompiledModelError(f"ONNX Runtime refused the graph ({_short(exc, 200)})"
                                     ) from exc
        opset = ",".join(f"{o.domain or 'ai.onnx'}={o.version}"
                         for o in sorted(model.opset_import, key=lambda o: o.domain))
        compiled = cls(session, names, kinds, task, classes, hashlib.sha256(data).hexdigest(),
                       opset, none_string=meta.get(f"{_META_PREFIX}none_string", NONE_STRING),
                       nan_string=meta.get(f"{_META_PREFIX}nan_string", NAN_STRING))
        compiled._probe()
        return compiled

    def _probe(self) -> None:
        """A row of missing values must give one answer of the expected width."""
        try:
            out = self.run(self.inputs([[None] * len(self.feature_names)]))
        except Exception as exc:  # noqa: BLE001
            raise CompiledModelError(f"the graph failed on a probe row ({_short(exc, 200)})"
                                     ) from exc
        width = 1 if self.is_regression else len(self.classes)
        if out.shape != (1, width):
            raise CompiledModelError(f"the graph answers a row with shape {out.shape}, not "
                                     f"(1, {width})")

    # inputs ---------------------------------------------------------------------------

    def _strings(self, values) -> np.ndarray:
        none, nan = self.none_string, self.nan_string
        column = [v if type(v) is str else none if v is None else
                  nan if v is pd.NA or v != v else str(v) for v in values]
        return np.array(column, dtype=object).reshape(-1, 1)

    def inputs(self, rows: list[list]) -> dict[str, np.ndarray]:
        """The graph's feed for validated rows (lists in feature order): float64 (n, 1)
        per number or boolean column (None -> NaN), object (n, 1) of str per categorical
        column (None, the service's missing value, -> `nan_string`: the Pipeline gets
        it as NaN)."""
        n = len(rows)
        feed: dict[str, np.ndarray] = {}
        if n == 0:
            for name, kind in zip(self.feature_names, self.kinds, strict=True):
                feed[name] = np.empty((0, 1), dtype=np.float64 if kind == "number" else object)
            return feed
        if self._number_index:
            if self._all_numbers:
                block = np.array(rows, dtype=np.float64)
            elif len(self._number_index) == 1:
                get = self._number_get
                block = np.array([[get(row)] for row in rows], dtype=np.float64)
            else:
                get = self._number_get
                block = np.array([get(row) for row in rows], dtype=np.float64)
            if block.shape != (n, len(self._number_index)):
                raise ValueError(f"rows give numbers of shape {block.shape}, not "
                                 f"({n}, {len(self._number_index)})")
            # One contiguous (n, 1) column per feature, views of one transposed copy.
            columns = block.reshape(-1, 1, 1) if n == 1 else block.T.copy()
            for j, name in enumerate(self._number_names):
                feed[name] = columns[j].reshape(n, 1)
        nan = self.nan_string
        for name, i in zip(self._string_names, self._string_index, strict=True):
            # A served row's None is a missing value, given to the Pipeline as NaN
            # (serving's frame_from_rows), as training frames hold it: the NaN marker.
            column = [v if type(v) is str else nan if v is None or v != v else str(v)
                      for v in (row[i] for row in rows)]
            feed[name] = np.array(column, dtype=object).reshape(-1, 1)
        return feed

    def inputs_from_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The graph's feed for a DataFrame holding (at least) the feature columns; a
        string column's NaN is fed as `nan_string`, its None as `none_string` (as
        scikit-learn tells them apart)."""
        feed: dict[str, np.ndarray] = {}
        for name, kind in zip(self.feature_names, self.kinds, strict=True):
            series = frame[name]
            if kind == "number":
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                feed[name] = np.ascontiguousarray(values, dtype=np.float64).reshape(-1, 1)
            else:
                feed[name] = self._strings(series.astype(object).tolist())
        return feed

    # outputs --------------------------------------------------------------------------

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The task's raw output (probabilities (n, k) or values (n, 1)) for a feed, run
        RUN_ROWS rows at a time."""
        n = len(next(iter(feed.values()))) if feed else 0
        if n <= RUN_ROWS:
            return self.session.run(self._output, feed)[0]
        pieces = [self.session.run(self._output, {name: values[start:start + RUN_ROWS]
                                                  for name, values in feed.items()})[0]
                  for start in range(0, n, RUN_ROWS)]
        try:
            return np.concatenate(pieces)
        except ValueError as exc:  # a graph whose outputs are no rows
            raise ValueError(f"the graph's outputs for {n} rows, run {RUN_ROWS} at a time, "
                             f"do not join: {exc}") from exc

    def _proba(self, feed: dict[str, np.ndarray], n: int) -> np.ndarray:
        if self.is_regression:
            raise TypeError("a regressor has no class probabilities; use predict_values")
        width = len(self.classes)
        if n == 0:
            return np.empty((0, width), dtype=np.float64)
        proba = self.run(feed).astype(np.float64)
        if proba.shape != (n, width):
            raise ValueError(f"the graph gave probabilities of shape {proba.shape} for {n} "
                             f"rows of {width} classes")
        return proba

    def _values(self, feed: dict[str, np.ndarray], n: int) -> np.ndarray:
        if not self.is_regression:
            raise TypeError("a classifier has no predicted values; use predict_proba")
        if n == 0:
            return np.empty(0, dtype=np.float64)
        values = np.asarray(self.run(feed), dtype=np.float64).reshape(-1)
        if values.shape != (n,):
            raise ValueError(f"the graph gave {values.shape[0]} values for {n} rows")
        return values

    def predict_proba(self, rows: list[list]) -> np.ndarray:
        """Class probabilities (float64 (n, n_classes), classes in the Pipeline's order)
        of validated rows, as the graph computes them. Rows where `near_ties` is True
        (top two within TIE_TOLERANCE) are to be answered with the Pipeline: float32 sums
        cannot tell which class its argmax picks."""
        return self._proba(self.inputs(rows), len(rows))

    def predict_values(self, rows: list[list]) -> np.ndarray:
        """A regressor's predicted values (float64 (n,)) of validated rows."""
        return self._values(self.inputs(rows), len(rows))

    def predict_proba_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """`predict_proba` of a DataFrame's rows."""
        return self._proba(self.inputs_from_frame(frame), len(frame))

    def predict_values_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """`predict_values` of a DataFrame's rows."""
        return self._values(self.inputs_from_frame(frame), len(frame))


def near_ties(proba: np.ndarray, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Per row of probabilities (n, k): whether its top two are within `tolerance` (bool
    (n,); all False for one class). The graph's float32 sums cannot say which of them
    scikit-learn's argmax picks, so the service answers these rows with the Pipeline."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"probabilities must be (n, k), not {proba.shape}")
    if proba.shape[1] < 2 or proba.shape[0] == 0:
        return np.zeros(proba.shape[0], dtype=bool)
    top_two = np.partition(proba, -2, axis=1)[:, -2:]
    with np.errstate(invalid="ignore"):
        return np.asarray(top_two[:, 1] - top_two[:, 0] <= tolerance)
