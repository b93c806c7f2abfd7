"""Conversion: `compile_pipeline`, a fitted scikit-learn Pipeline to ONNX bytes with
skl2onnx, refusing what it cannot convert, or would convert with other semantics.

Preprocessing runs in float64 as scikit-learn's does, then a float32 cast in front of
the trees that are fed float32 (scikit-learn's forests, gradient boosting and decision
trees; XGBoost; onnxmltools' LightGBM trees). HistGradientBoosting keeps float64 end to
end: its converter (`hist_gradient_boosting`) writes one TreeEnsemble (ai.onnx.ml 5)
with double thresholds, so graphs holding it import ai.onnx.ml opset 5.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.onnx.boosters import register_booster_converters
from ml_assets.core.artifacts.onnx.catboost_export import register_catboost_converter
from ml_assets.core.artifacts.onnx.columns import _column_kind
from ml_assets.core.artifacts.onnx.contract import (
    _META_PREFIX,
    CONVERTER,
    LABEL_OUTPUT,
    NAN_STRING,
    NONE_STRING,
    PROBABILITIES_OUTPUT,
    TASKS,
    VALUE_OUTPUT,
    ConversionError,
    _lib,
    _short,
    _version_of,
)
from ml_assets.core.artifacts.onnx.convertible import (
    _float32_input,
    _nan_routing,
    _steps,
    _unsupported,
)
from ml_assets.core.artifacts.onnx.custom_converters import _custom_converters
from ml_assets.core.artifacts.onnx.hist_gradient_boosting import (
    hist_gradient_boosting_converters,
    raise_ml_opset,
)

# The opsets the converter may use (it picks the lowest each operator needs, up to
# these; the file's own imports are in its tags): ai.onnx 18 and ai.onnx.ml 3 are
# supported by every ONNX Runtime since 1.14. A graph holding HistGradientBoosting
# imports ai.onnx.ml 5 (TreeEnsemble with double thresholds; ONNX Runtime >= 1.20), where
# TreeEnsembleClassifier/Regressor are deprecated: only those graphs are raised to it
# (`hist_gradient_boosting.raise_ml_opset`).
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}


def _conversion_pipeline(pipeline, columns: list[str], kinds: dict[str, str], cast: bool):
    """What skl2onnx converts: the Pipeline flattened, with

    - in front, when its first step takes every numeric column at once, a passthrough
      ColumnTransformer (skl2onnx joins several inputs of one operator with a
      FeatureVectorizer, which rounds doubles to float32; a ColumnTransformer joins them
      with Concat);
    - a float32 cast in front of the final estimator when `cast`.
    The Pipeline itself when neither applies."""
    CastTransformer = _lib("skl2onnx.sklapi").CastTransformer
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    steps = _steps(pipeline)
    join = (len(columns) > 1 and not isinstance(steps[0], ColumnTransformer)
            and all(kinds[c] == "number" for c in columns))
    if not join and not cast and isinstance(pipeline, Pipeline) and list(
            steps) == [s for _, s in pipeline.steps]:
        return pipeline
    chain = list(steps)
    if join:
        empty = pd.DataFrame({c: np.zeros(1) for c in columns})
        chain.insert(0, ColumnTransformer([("columns", "passthrough", columns)]).fit(empty))
    if cast:
        chain.insert(len(chain) - 1, CastTransformer(dtype=np.float32))
    return Pipeline([(f"step{i}", step) for i, step in enumerate(chain)])


def _convert(pipeline, columns: list[str], kinds: dict[str, str], options: dict | None,
             cast: bool):
    skl2onnx, types = _lib("skl2onnx"), _lib("skl2onnx.common.data_types")
    initial = [(c, types.DoubleTensorType([None, 1]) if kinds[c] == "number"
                else types.StringTensorType([None, 1])) for c in columns]

    converters, shapes = _custom_converters()
    hist_converters, hist_shapes = hist_gradient_boosting_converters()
    converters, shapes = {**converters, **hist_converters}, {**shapes, **hist_shapes}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return skl2onnx.convert_sklearn(
                _conversion_pipeline(pipeline, columns, kinds, cast), initial_types=initial,
                target_opset=TARGET_OPSET, options=options,
                custom_conversion_functions=converters, custom_shape_calculators=shapes)
    except Exception as exc:  # noqa: BLE001 - any converter failure is a refusal
        raise ConversionError(f"skl2onnx could not convert the pipeline "
                              f"({type(exc).__name__}: {_short(exc, 200)})") from exc


def _runs(model) -> str | None:
    """Why ONNX Runtime refuses the graph (some operators have no double kernel), or
    None when it accepts it."""
    ort = _lib("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        return _short(exc, 200)
    return None


def _rename_inputs(model, names: list[str]) -> None:
    """Graph inputs renamed from skl2onnx's sanitized names back to the column names."""
    graph = model.graph
    current = [item.name for item in graph.input]
    if len(current) != len(names):
        raise ConversionError(f"the graph has {len(current)} inputs for {len(names)} feature "
                              "columns")
    mapping = {old: new for old, new in zip(current, names, strict=True) if old != new}
    if not mapping:
        return
    taken = {out for node in graph.node for out in node.output}
    taken |= {item.name for item in graph.initializer} | {item.name for item in graph.output}
    taken |= {item.name for item in graph.value_info}
    for new in mapping.values():
        if new in taken:
            raise ConversionError(f"feature column {new!r} has the name of a tensor of the "
                                  "graph; rename the column")
    for item in graph.input:
        item.name = mapping.get(item.name, item.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]


def compile_pipeline(pipeline, X_sample: pd.DataFrame, task: str,
                     missing: Collection[str] | None = None) -> bytes:
    """The whole fitted Pipeline as ONNX bytes (opset TARGET_OPSET; ai.onnx.ml 5 with
    HistGradientBoosting), one typed input per feature column in X_sample's column
    order (only the columns the Pipeline was fitted on, when it knows them). Raises
    ConversionError naming why it cannot be compiled: an estimator skl2onnx has no
    converter for (LightGBM and XGBoost are registered, `boosters`), an input that is
    neither a number, a boolean nor a string, a graph that would treat missing values
    otherwise, or one ONNX Runtime cannot run in float64 (not retried in float32:
    scikit-learn computes those in float64).

    `missing`: the features a served row may leave missing (the schema's nullable ones;
    default: every feature). A NaN that can reach an estimator routing it natively is
    refused only for those."""
    import onnx

    if task not in TASKS:
        raise ConversionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    classifier = task != "regression"
    if classifier and not callable(getattr(pipeline, "predict_proba", None)):
        raise ConversionError(f"{type(_steps(pipeline)[-1]).__name__} has no predict_proba; "
                              "a served classifier needs probabilities")
    if classifier and not hasattr(pipeline, "classes_"):
        raise ConversionError("the pipeline has no classes_; is it a fitted classifier?")
    columns = [str(c) for c in X_sample.columns]
    fitted = getattr(pipeline, "feature_names_in_", None)
    if fitted is not None:
        fitted_names = [str(c) for c in fitted]
        absent = [c for c in fitted_names if c not in columns]
        if absent:
            raise ConversionError(f"X_sample lacks the pipeline's feature columns {absent}")
        columns = [c for c in columns if c in set(fitted_names)]
    if not columns:
        raise ConversionError("there are no feature columns to compile")
    sample = X_sample[columns]
    kinds = {c: _column_kind(c, sample[c]) for c in columns}
    register_booster_converters()
    register_catboost_converter()
    problem = _unsupported(pipeline)
    if problem:
        raise ConversionError(problem)
    problem = _nan_routing(pipeline, sample, columns if missing is None else set(missing))
    if problem:
        raise ConversionError(problem)
    final = _steps(pipeline)[-1]
    options = {id(final): {"zipmap": False}} if classifier else None
    cast = _float32_input(final)
    model = _convert(pipeline, columns, kinds, options, cast)
    raise_ml_opset(model)
    refused = _runs(model)
    if refused:
        raise ConversionError(f"ONNX Runtime cannot run the float64 graph of "
                              f"{type(final).__name__} (float32 would differ from "
                              f"scikit-learn's float64): {refused}")
    _rename_inputs(model, columns)
    outputs = {item.name for item in model.graph.output}
    wanted = [LABEL_OUTPUT, PROBABILITIES_OUTPUT] if classifier else [VALUE_OUTPUT]
    if not set(wanted) <= outputs:
        raise ConversionError(f"the graph's outputs are {sorted(outputs)}, not {wanted} (is a "
                              "feature column named like one?)")
    classes = [str(c) for c in getattr(pipeline, "classes_", [])] if classifier else []
    metadata = {"features": json.dumps(columns), "task": task, "classes": json.dumps(classes),
                "none_string": NONE_STRING, "nan_string": NAN_STRING,
                "converter": CONVERTER,
                "sklearn": _version_of("scikit-learn")}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"{_META_PREFIX}{key}", value
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"the converted graph is not valid ONNX ({_short(exc, 200)})"
                              ) from exc
    return model.SerializeToString()
