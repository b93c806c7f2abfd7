"""The compiled flavour of a served Pipeline: the whole Pipeline (preprocessing included)
as one ONNX graph run by ONNX Runtime, and the parity gate it must pass to be served.

Pure: no Dagster, no MLflow, no service code. `compile_pipeline` converts with skl2onnx
(refusing what it cannot convert, or would convert with other semantics),
`CompiledModel` runs a graph from untrusted bytes straight from the service's validated
rows, and `check_parity` compares it with the Pipeline on held-out rows plus probe rows
(missing values, unseen categories). `compile_and_check` does all three and never raises
for a conversion or parity problem: the report says what happened.

The graph has one input per feature column, named as the column, shape [None, 1]:
double for numbers and booleans (a missing value is NaN), string for categoricals (a
missing value is NONE_STRING). Outputs: a classifier's `label` and `probabilities`
([None, n_classes], in `pipeline.classes_` order); a regressor's `variable` ([None, 1]).
Preprocessing runs in float64 as scikit-learn's does, then a float32 cast in front of
the trees scikit-learn itself feeds float32 (forests, gradient boosting, decision trees).
HistGradientBoosting (float64 thresholds) is refused: ONNX Runtime's tree ensembles
compare float32. The graph's probabilities are returned as they are: rows whose top
two probabilities are within TIE_TOLERANCE (`near_ties`) are for the caller to answer
with the Pipeline, as float32 sums cannot tell which class scikit-learn's argmax picks.

Trees and some operators compute in float32. A value the preprocessing pushes past
float32's range (a huge value scaled up) gives non-finite outputs: callers must check
`np.isfinite` on what `predict_proba` / `predict_values` return and fall back to the
Pipeline.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import math
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

ONNX_ARTIFACT = "model.onnx"
TASKS = ("binary", "multiclass", "regression")

# Output names (skl2onnx's own, checked after conversion): stable, the loader needs them.
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
VALUE_OUTPUT = "variable"

# The opsets the converter may use (it picks the lowest each operator needs, up to
# these; the file's own imports are in its tags): ai.onnx 18 and ai.onnx.ml 3 are
# supported by every ONNX Runtime since 1.14.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MAX_BYTES = 512 * 2**20  # a larger file is refused unread
MAX_INITIALIZER_BYTES = 512 * 2**20  # the graph's constant tensors, all together
MAX_DIMENSION = 2**31  # any constant tensor's dimension, or value of a Reshape shape

# The only operators a graph may use: what skl2onnx 1.20 emits (with this module's own
# imputer and one-hot converters and float32 casts) for the estimators the platform
# serves, collected by converting RandomForest / GradientBoosting / DecisionTree
# classifiers and regressors, LogisticRegression and Ridge behind the platform
# preprocessor (SimpleImputer, StandardScaler, OneHotEncoder, SelectKBest,
# ColumnTransformer) on breast cancer, penguins and diabetes, plus a few elementwise
# operators of the same converters' variants (Equal: an imputer's non-NaN marker;
# Imputer, Scaler, Mul). Nothing here loops, branches or allocates a tensor whose size
# comes from data (Loop, Scan, If, ConstantOfShape, Expand, Tile, Range, Resize, Pad,
# sequences...): a hostile file cannot hang or exhaust the loader through them.
ALLOWED_OPS = frozenset({
    ("", "Abs"), ("", "Add"), ("", "ArgMax"), ("", "Cast"), ("", "Concat"), ("", "Div"),
    ("", "Equal"), ("", "Gather"), ("", "Identity"), ("", "IsNaN"), ("", "MatMul"),
    ("", "Mul"), ("", "ReduceSum"), ("", "Reshape"), ("", "Sigmoid"), ("", "Softmax"),
    ("", "Sub"), ("", "Where"),
    ("ai.onnx.ml", "ArrayFeatureExtractor"), ("ai.onnx.ml", "Imputer"),
    ("ai.onnx.ml", "LabelEncoder"), ("ai.onnx.ml", "OneHotEncoder"),
    ("ai.onnx.ml", "Scaler"), ("ai.onnx.ml", "TreeEnsembleClassifier"),
    ("ai.onnx.ml", "TreeEnsembleRegressor"),
})

# What a missing categorical value is fed as: None (a served row's missing value) as
# NONE_STRING, a float NaN (a training frame's) as NAN_STRING. The graph's imputers and
# one-hot encoders are converted to treat these strings as scikit-learn treats None and
# NaN: its SimpleImputer (missing_values=NaN, the default) imputes NaN but not None,
# and a OneHotEncoder knows None or NaN as a category only if training saw it. A client
# sending one of these strings gets it treated as missing.
NONE_STRING = "\x1fNone\x1f"
NAN_STRING = "\x1fNaN\x1f"

# Default parity tolerances (labels must be identical whatever they are). The graph
# preprocesses in float64 as scikit-learn does and casts to float32 where scikit-learn's
# trees do, so every threshold sees the value scikit-learn's sees; what remains is
# float32 accumulation in ONNX Runtime's tree ensembles. Measured max |Δp| on held-out
# rows and probes: RandomForest 200 trees on breast cancer 7.7e-7 (20 trees 1.7e-7),
# GradientBoosting 1.0e-7, LogisticRegression 2e-16 (float64 throughout);
# HistGradientBoosting is not converted (float64 thresholds). Regressors' relative
# error: forests and gradient boosting <= 3.3e-7, Ridge 3e-16. (Fed float32 instead, a
# 200-tree forest moved by 0.005 on 1 of 114 breast cancer rows, and a 30-tree forest
# by up to 0.067 on 19 of 99 penguin rows: one tree per 1/n_trees.) 1e-4 is over a
# hundred times the float32 error and below what one tree of a forest of up to 10,000
# sending a row the other way moves (1/n_trees): a graph that thresholds differently
# fails.
PROBABILITY_TOLERANCE = 1e-4
# Regressors: |onnx - sklearn| <= RELATIVE_TOLERANCE * max(|sklearn|, scale), scale the
# standard deviation of the Pipeline's predictions on the held-out rows (of |sklearn| if
# that is 0; at least SCALE_FLOOR): relative to the target's own spread, so a target
# around 1e-3 is held to 1e-4 of its size, not to an absolute 1e-4.
RELATIVE_TOLERANCE = 1e-4
SCALE_FLOOR = 1e-12
# A row whose top two probabilities are within this is a near tie (`near_ties`): float32
# sums cannot say which class scikit-learn's float64 argmax picks (an even forest's exact
# 0.5/0.5 comes out as 0.50000006/0.49999997; a real [0.499996, 0.500004] is class 1),
# so the service answers those rows with the Pipeline, and `check_parity` leaves them
# out of the label comparison (counted as pipeline_rows; their probabilities are still
# compared). Above float32 accumulation error (<= 1e-6 for 200 trees), far below a
# forest's 1/n_trees steps.
TIE_TOLERANCE = 1e-5

# Probe rows per feature (missing / unseen category) in `check_parity`.
PROBE_ROWS = 3
UNSEEN_CATEGORY = "\x1eunseen category\x1e"

_META_PREFIX = "ml_assets."


def _version_of(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - all are dependencies
        return "unknown"


RUNTIME = f"onnxruntime {_version_of('onnxruntime')}"
CONVERTER = f"skl2onnx {_version_of('skl2onnx')}"


class ConversionError(Exception):
    """The Pipeline cannot be compiled; the message says why in one sentence."""


class CompiledModelError(ConversionError):
    """A graph file is refused (untrusted bytes that do not fit the served model)."""


def _lib(name: str) -> Any:
    """A module of skl2onnx or onnxruntime, imported when first needed (neither ships
    type information)."""
    return importlib.import_module(name)


def _qualname(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _short(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------

def _steps(estimator) -> list:
    """The chain of a (possibly nested) Pipeline, flattened; 'passthrough' skipped."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        flat = []
        for _, step in estimator.steps:
            if step is None or (isinstance(step, str) and step == "passthrough"):
                continue
            flat.extend(_steps(step))
        return flat
    return [estimator]


def _components(estimator):
    """Every estimator the converter must convert (through Pipelines, ColumnTransformers
    and FeatureUnions)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    if isinstance(estimator, str) or estimator is None:
        return
    yield estimator
    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            yield from _components(step)
    elif isinstance(estimator, ColumnTransformer):
        for _, transformer, _ in getattr(estimator, "transformers_", estimator.transformers):
            yield from _components(transformer)
    elif isinstance(estimator, FeatureUnion):
        for _, transformer in estimator.transformer_list:
            yield from _components(transformer)


def _unsupported(pipeline) -> str | None:
    sklearn_operator_name_map = _lib("skl2onnx._supported_operators").sklearn_operator_name_map

    for component in _components(pipeline):
        if type(component) not in sklearn_operator_name_map and not hasattr(
                component, "onnx_converter"):
            return f"skl2onnx has no converter for {_qualname(component)}"
    return None


def _column_kind(name: str, series: pd.Series) -> str:
    """'number' (numbers, booleans) or 'string' (categoricals) for a feature column."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "string"
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return "number"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred in ("string", "empty"):
            return "string"
        if inferred in ("floating", "integer", "mixed-integer-float", "boolean", "decimal"):
            return "number"
        raise ConversionError(f"feature column {name!r} holds {inferred} values; a graph "
                              "input takes only numbers, booleans or strings")
    raise ConversionError(f"feature column {name!r} has dtype {dtype}; a graph input takes "
                          "only numbers, booleans or strings")


def _missing_row_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per column of `columns`: row i `frame`'s first row with columns[i]
    missing (NaN, as serving gives a missing value to the Pipeline)."""
    base = _served_dtypes(frame.head(1))
    rows = pd.concat([base] * len(columns), ignore_index=True)
    for i, column in enumerate(columns):
        rows.loc[i, column] = np.nan
    return rows


def _served_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with numbers and booleans float64 (missing NaN), strings object (missing
    NaN): the dtypes a served row with missing values reaches the Pipeline in
    (serving.model.feature_specs.frame_from_rows)."""
    out = {}
    for column in frame.columns:
        series = frame[column]
        if _column_kind(str(column), series) == "number":
            out[column] = pd.to_numeric(series.astype(object).where(series.notna(), np.nan),
                                        errors="coerce").astype("float64")
        else:
            out[column] = series.astype(object).where(series.notna(), np.nan)
    return pd.DataFrame(out, index=frame.index)


def _transformed(steps: list, frame: pd.DataFrame) -> np.ndarray | None:
    """`frame` through the transformers `steps` as floats; None when they refuse it."""
    data: Any = frame
    try:
        for step in steps:
            data = step.transform(data)
        dense = data.toarray() if hasattr(data, "toarray") else data
        return np.asarray(dense, dtype=np.float64)
    except Exception:  # noqa: BLE001 - the Pipeline refuses it (or gives no numbers)
        return None


def _nan_routing(pipeline, X_sample: pd.DataFrame, missing: Collection[str]) -> str | None:
    """Why the graph would change what a missing value does, or None: a NaN reaching
    the final estimator, which scikit-learn accepts (it routes NaN natively: the
    forests, HistGradientBoosting) and skl2onnx's trees would send down the wrong
    branch."""
    steps = _steps(pipeline)
    final, transformers = steps[-1], steps[:-1]
    columns = [c for c in X_sample.columns if c in missing]
    if len(X_sample) == 0 or not columns:
        return None
    probes = _missing_row_frame(X_sample, columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = _transformed(transformers, probes)
        for i, column in enumerate(columns):
            values = (together[i:i + 1] if together is not None
                      else _transformed(transformers, probes.iloc[[i]]))
            if values is None or not np.isnan(values).any():
                continue
            try:
                final.predict(values)
            except Exception:  # noqa: BLE001 - the estimator refuses NaN: no semantics
                continue
            return (f"a missing {column!r} reaches {type(final).__name__} as NaN, which "
                    "scikit-learn routes natively and the ONNX graph cannot; put an "
                    "imputer in front of it")
    return None


def _string_marker(value) -> str | None:
    """The string a missing value is fed as: None -> NONE_STRING, NaN -> NAN_STRING."""
    if value is None:
        return NONE_STRING
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return NAN_STRING
    return None


def _custom_converters() -> tuple[dict, dict]:
    """skl2onnx converters (and their shape calculators) for SimpleImputer and
    OneHotEncoder that keep scikit-learn's semantics on this platform's inputs:

    - a string imputer matching NaN (or None) matches NAN_STRING (or NONE_STRING), the
      strings a NaN (or None) is fed as (skl2onnx only matches a string marker);
    - a one-hot category None or NaN (seen in training) is NONE_STRING / NAN_STRING;
    - a numeric imputer on doubles is IsNaN/Equal + Where (ONNX Runtime's Imputer has
      no double kernel)."""
    from onnx import TensorProto
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    types = _lib("skl2onnx.common.data_types")
    DoubleTensorType, StringTensorType = types.DoubleTensorType, types.StringTensorType
    concatenate_variables = _lib("skl2onnx.operator_converters.common").concatenate_variables
    convert_sklearn_imputer = _lib("skl2onnx.operator_converters.imputer_op"
                                   ).convert_sklearn_imputer
    convert_sklearn_one_hot_encoder = _lib("skl2onnx.operator_converters.one_hot_encoder"
                                           ).convert_sklearn_one_hot_encoder
    imputer_shapes = _lib("skl2onnx.shape_calculators.imputer"
                          ).calculate_sklearn_imputer_output_shapes
    one_hot_shapes = _lib("skl2onnx.shape_calculators.one_hot_encoder"
                          ).calculate_sklearn_one_hot_encoder_output_shapes

    def imputer(scope, operator, container):
        raw = operator.raw_operator
        kind = operator.inputs[0].type
        if getattr(raw, "add_indicator", False):
            raise NotImplementedError("SimpleImputer(add_indicator=True) is not converted")
        if isinstance(kind, StringTensorType):
            marker = _string_marker(raw.missing_values)
            if marker is None:
                convert_sklearn_imputer(scope, operator, container)
                return
            _convert_as(convert_sklearn_imputer, scope, operator, container,
                        missing_values=marker)
            return
        if not isinstance(kind, DoubleTensorType):
            convert_sklearn_imputer(scope, operator, container)
            return
        statistics = np.asarray(raw.statistics_, dtype=np.float64)
        if np.isnan(statistics).any() and not getattr(raw, "keep_empty_features", False):
            raise NotImplementedError("SimpleImputer drops the columns it saw no value of "
                                      "in training")
        statistics = np.nan_to_num(statistics, nan=0.0)
        features = concatenate_variables(scope, operator.inputs, container)
        fill = scope.get_unique_variable_name("fill")
        container.add_initializer(fill, TensorProto.DOUBLE,
                                  [1, statistics.size], statistics.tolist())
        missing = scope.get_unique_variable_name("missing")
        if _string_marker(raw.missing_values) is not None:
            container.add_node("IsNaN", [features], [missing],
                               name=scope.get_unique_operator_name("IsNaN"))
        else:
            marker = scope.get_unique_variable_name("marker")
            container.add_initializer(marker, TensorProto.DOUBLE, [1],
                                      [float(raw.missing_values)])
            container.add_node("Equal", [features, marker], [missing],
                               name=scope.get_unique_operator_name("Equal"))
        container.add_node("Where", [missing, fill, features], [operator.outputs[0].full_name],
                           name=scope.get_unique_operator_name("Where"))

    def one_hot(scope, operator, container):
        raw = operator.raw_operator
        if not any(isinstance(i.type, StringTensorType) for i in operator.inputs):
            convert_sklearn_one_hot_encoder(scope, operator, container)
            return
        categories = [np.array([_string_marker(c) or c for c in column], dtype=object)
                      for column in raw.categories_]
        _convert_as(convert_sklearn_one_hot_encoder, scope, operator, container,
                    categories_=categories)

    return ({SimpleImputer: imputer, OneHotEncoder: one_hot},
            {SimpleImputer: imputer_shapes, OneHotEncoder: one_hot_shapes})


def _convert_as(convert, scope, operator, container, **changes) -> None:
    """Run skl2onnx's `convert` on a copy of the operator's estimator with `changes`
    (its missing marker or categories as the graph feeds them), then put it back."""
    raw = operator.raw_operator
    shadow = copy.copy(raw)
    for name, value in changes.items():
        setattr(shadow, name, value)
    operator.raw_operator = shadow
    try:
        convert(scope, operator, container)
    finally:
        operator.raw_operator = raw


HIST_GRADIENT_BOOSTING_REASON = (
    "HistGradientBoosting compares float64 thresholds; ONNX Runtime's tree ensemble "
    "compares float32: served by scikit-learn")


def _float64_thresholds(pipeline) -> str | None:
    """Why a component cannot be compiled exactly, or None: HistGradientBoosting compares
    float64 values with float64 thresholds, and skl2onnx 1.20's tree ensembles (and ONNX
    Runtime's kernels) compare float32, so a value within float32 rounding of a threshold
    would take the other branch."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    for component in _components(pipeline):
        if isinstance(component, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
            return HIST_GRADIENT_BOOSTING_REASON
    return None


def _float32_input(estimator) -> bool:
    """Whether the graph feeds the final estimator float32: scikit-learn's tree module
    does so itself (forests, gradient boosting, decision trees cast X to float32 before
    thresholding), so the graph's float32 trees see exactly scikit-learn's values."""
    from sklearn.ensemble._forest import BaseForest
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.tree import BaseDecisionTree

    return isinstance(estimator, BaseForest | BaseGradientBoosting | BaseDecisionTree)


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
    if not join and not cast:
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
    """The whole fitted Pipeline as ONNX bytes (opset TARGET_OPSET), one typed input per
    feature column in X_sample's column order (only the columns the Pipeline was fitted
    on, when it knows them). Raises ConversionError naming why it cannot be compiled: an
    estimator skl2onnx has no converter for, HistGradientBoosting (float64 thresholds),
    an input that is neither a number, a boolean nor a string, a graph that would treat
    missing values otherwise, or one ONNX Runtime cannot run in float64 (not retried in
    float32: scikit-learn computes those in float64).

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
    problem = _unsupported(pipeline) or _float64_thresholds(pipeline)
    if problem:
        raise ConversionError(problem)
    problem = _nan_routing(pipeline, sample, columns if missing is None else set(missing))
    if problem:
        raise ConversionError(problem)
    final = _steps(pipeline)[-1]
    options = {id(final): {"zipmap": False}} if classifier else None
    cast = _float32_input(final)
    model = _convert(pipeline, columns, kinds, options, cast)
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


# ---------------------------------------------------------------------------------------
# Running a graph
# ---------------------------------------------------------------------------------------

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


def _check_graph(model, feature_names: list[str], task: str, classes: Sequence | None) -> None:
    """Refuse a graph the platform did not make, or that does not fit the served model."""
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
                   classes: Sequence | None) -> CompiledModel:
        """Check and load graph bytes, treated as untrusted: at most MAX_BYTES, only the
        operators of ALLOWED_OPS (no control flow, sequences or data-sized allocations),
        no subgraphs, external data or local functions, constant tensors of sane sizes
        (all checked before ONNX Runtime sees the bytes, which it loads with basic
        optimizations and no constant folding: no node runs at load), inputs exactly
        `feature_names` in order (double or string, [None, 1]), the task's output with one
        column per class. Raises CompiledModelError naming what is wrong."""
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
        _check_graph(model, names, task, classes)
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
        """The task's raw output (probabilities (n, k) or values (n, 1)) for a feed."""
        return self.session.run(self._output, feed)[0]

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


# ---------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParityReport:
    """How a compiled graph compares with its Pipeline (or why there is none)."""

    passed: bool
    rows: int  # held-out rows compared
    probe_rows: int  # extra rows with a missing value or an unseen category
    label_mismatches: int
    max_probability_diff: float | None  # classifiers
    max_relative_error: float | None  # regressors
    probability_tolerance: float
    relative_tolerance: float
    reason: str  # "" when passed; else one sentence with figures
    converted: bool = True
    sha256: str = ""  # of the graph's bytes
    opset: str = ""  # the graph's opset imports, e.g. "ai.onnx=11,ai.onnx.ml=1"
    # Classifiers: compared rows whose graph output is a near tie (`near_ties`): served
    # by the Pipeline, so left out of the label comparison (probabilities compared).
    pipeline_rows: int = 0
    # Regressors: the scale s of the bound |onnx - sklearn| <= rel * max(|sklearn|, s).
    relative_scale: float | None = None

    @property
    def status(self) -> str:
        """passed | failed | not_converted."""
        return "passed" if self.passed else "failed" if self.converted else "not_converted"

    def as_tags(self, prefix: str = "onnx.") -> dict[str, str]:
        """MLflow tags: `<prefix>parity` (passed / failed / not_converted), its reason and
        figures, the graph's sha256 and opset, the runtime and converter versions."""
        tags = {f"{prefix}parity": self.status, f"{prefix}runtime": RUNTIME,
                f"{prefix}converter": CONVERTER}
        if self.reason:
            tags[f"{prefix}parity.reason"] = _short(self.reason, 1000)
        if self.converted:
            tags.update({
                f"{prefix}parity.rows": str(self.rows),
                f"{prefix}parity.probe_rows": str(self.probe_rows),
                f"{prefix}parity.label_mismatches": str(self.label_mismatches),
                f"{prefix}parity.pipeline_rows": str(self.pipeline_rows),
                f"{prefix}parity.probability_tolerance": repr(self.probability_tolerance),
                f"{prefix}parity.relative_tolerance": repr(self.relative_tolerance)})
        if self.max_probability_diff is not None:
            tags[f"{prefix}parity.max_probability_diff"] = f"{self.max_probability_diff:.3g}"
        if self.max_relative_error is not None:
            tags[f"{prefix}parity.max_relative_error"] = f"{self.max_relative_error:.3g}"
        if self.relative_scale is not None:
            tags[f"{prefix}parity.relative_scale"] = f"{self.relative_scale:.6g}"
        if self.sha256:
            tags[f"{prefix}sha256"] = self.sha256
        if self.opset:
            tags[f"{prefix}opset"] = self.opset
        return tags

    def as_metadata(self) -> dict:
        """The report as plain JSON values (None fields left out)."""
        values = {"parity": self.status, "reason": self.reason, "rows": self.rows,
                  "probe_rows": self.probe_rows, "label_mismatches": self.label_mismatches,
                  "pipeline_rows": self.pipeline_rows, "relative_scale": self.relative_scale,
                  "max_probability_diff": self.max_probability_diff,
                  "max_relative_error": self.max_relative_error,
                  "probability_tolerance": self.probability_tolerance,
                  "relative_tolerance": self.relative_tolerance, "sha256": self.sha256,
                  "opset": self.opset, "runtime": RUNTIME, "converter": CONVERTER}
        return {k: v for k, v in values.items() if v is not None}


def not_converted(reason: str, probability_tolerance: float = PROBABILITY_TOLERANCE,
                  relative_tolerance: float = RELATIVE_TOLERANCE) -> ParityReport:
    """The report of a Pipeline that could not be compiled."""
    return ParityReport(False, 0, 0, 0, None, None, probability_tolerance, relative_tolerance,
                        reason, converted=False)


def rows_of(frame: pd.DataFrame) -> list[list]:
    """A frame's rows as the service hands them over: Python values, None when missing."""
    columns = []
    for column in frame.columns:
        series = frame[column]
        values = series.astype(object).where(series.notna(), None).tolist()
        columns.append([v.item() if isinstance(v, np.generic) else v for v in values])
    return [list(row) for row in zip(*columns, strict=True)] if columns else [
        [] for _ in range(len(frame))]


def _probe_frame(held: pd.DataFrame, kinds: Sequence[str], missing: Collection[str]
                 ) -> tuple[list[pd.DataFrame], list[list[str]]]:
    """Groups of probe rows built from a few held-out rows (in the service's dtypes):
    one group per feature in `missing` with it missing, one per string feature with an
    unseen category, one with every feature in `missing` missing; and each row's
    description."""
    if len(held) == 0:
        return [], []
    picks = sorted(set(np.linspace(0, len(held) - 1, min(PROBE_ROWS, len(held))).astype(int)))
    base = held.iloc[picks].reset_index(drop=True)
    features = list(zip(held.columns, kinds, strict=True))
    absent = [(c, kind) for c, kind in features if c in missing]

    def group(values: dict) -> pd.DataFrame:
        frame = base.copy()
        for column, value in values.items():
            frame[column] = pd.Series([value] * len(frame), dtype=frame[column].dtype)
        return frame

    def gone(kind: str):
        return np.nan  # what serving gives the Pipeline for any missing value

    groups, labels = [], []
    for column, kind in absent:
        groups.append(group({column: gone(kind)}))
        labels.append([f"{column!r} missing in row {i}" for i in picks])
    for column, kind in features:
        if kind == "string":
            groups.append(group({column: UNSEEN_CATEGORY}))
            labels.append([f"{column!r} unseen in row {i}" for i in picks])
    if len(absent) > 1:
        groups.append(group({column: gone(kind) for column, kind in absent}))
        labels.append([f"every feature missing in row {i}" for i in picks])
    return groups, labels


def _sklearn_output(pipeline, frame: pd.DataFrame, regression: bool) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if regression:
            return np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1)
        return np.asarray(pipeline.predict_proba(frame), dtype=np.float64)


def _which(labels: list[str], where: np.ndarray, limit: int = 5) -> str:
    shown = [labels[i] for i in where[:limit]]
    more = f" and {len(where) - limit} more" if len(where) > limit else ""
    return ", ".join(shown) + more


def _reference(pipeline, groups: list[pd.DataFrame],
               labels: list[list[str]], regression: bool
               ) -> tuple[list[pd.DataFrame], list[np.ndarray], list[str]]:
    """The probe groups the Pipeline accepts, its answers, and their rows' labels (one
    call for all probes; group by group when it refuses some)."""
    if not groups:
        return [], [], []
    probes = pd.concat(groups, ignore_index=True)
    try:
        return ([probes], [_sklearn_output(pipeline, probes, regression)],
                [label for group in labels for label in group])
    except Exception:  # noqa: BLE001 - find the groups the Pipeline accepts
        pass
    kept, answers, kept_labels = [], [], []
    for group, group_labels in zip(groups, labels, strict=True):
        try:
            answers.append(_sklearn_output(pipeline, group, regression))
        except Exception:  # noqa: BLE001 - the Pipeline refuses this probe
            continue
        kept.append(group)
        kept_labels += group_labels
    return kept, answers, kept_labels


def check_parity(pipeline, compiled: CompiledModel, X_test: pd.DataFrame, task: str,
                 probability_tolerance: float = PROBABILITY_TOLERANCE,
                 relative_tolerance: float = RELATIVE_TOLERANCE,
                 missing: Collection[str] | None = None) -> ParityReport:
    """Compare the graph with the Pipeline on X_test plus probe rows built from it: each
    feature of `missing` (default: all) missing, each string feature an unseen category,
    all of them missing; probes the Pipeline itself refuses are skipped. Both get the
    rows as the service has them (the graph through `predict_*` on rows of Python
    values, strings None when missing). Classifiers: probabilities within
    `probability_tolerance` on every row, and the argmax label identical on every row
    the service answers with the graph: rows whose graph output is a near tie
    (`near_ties`) are answered with the Pipeline, so they agree by construction and are
    only counted (pipeline_rows). Regressors: |onnx - sklearn| <= relative_tolerance *
    max(|sklearn|, s), s the standard deviation of the Pipeline's predictions on the
    held-out rows (of |sklearn| there if that is 0; at least SCALE_FLOOR). An answer that
    is not finite where the Pipeline's is fails too."""
    regression = task == "regression"

    def report(reason: str, rows: int = 0, probes: int = 0, mismatches: int = 0,
               diff: float | None = None, error: float | None = None, pipeline_rows: int = 0,
               scale: float | None = None) -> ParityReport:
        return ParityReport(not reason, rows, probes, mismatches, diff, error,
                            probability_tolerance, relative_tolerance, reason,
                            sha256=compiled.sha256, opset=compiled.opset,
                            pipeline_rows=pipeline_rows, relative_scale=scale)

    absent = [c for c in compiled.feature_names if c not in X_test.columns]
    if absent:
        return report(f"the held-out rows lack the feature columns {absent}")
    if len(X_test) == 0:
        return report("there are no held-out rows to compare on")
    held = _served_dtypes(X_test[list(compiled.feature_names)]).reset_index(drop=True)
    try:
        expected = [_sklearn_output(pipeline, held, regression)]
    except Exception as exc:  # noqa: BLE001
        return report(f"the Pipeline failed on the held-out rows ({_short(exc, 200)})")
    groups, group_labels = _probe_frame(
        held, compiled.kinds, compiled.feature_names if missing is None else set(missing))
    kept, answers, probe_labels = _reference(pipeline, groups, group_labels, regression)
    labels = [f"row {i}" for i in range(len(held))] + probe_labels
    rows = [row for frame in (held, *kept) for row in rows_of(frame)]
    n_rows, n_probes, total = len(held), len(rows) - len(held), len(rows)
    reference = np.concatenate(expected + answers, axis=0)
    try:
        got = compiled.predict_values(rows) if regression else compiled.predict_proba(rows)
    except Exception as exc:  # noqa: BLE001
        return report(f"the compiled graph failed ({_short(exc, 200)})", n_rows, n_probes)
    if got.shape != reference.shape:
        return report(f"the graph answers with shape {got.shape}, the Pipeline with "
                      f"{reference.shape}", n_rows, n_probes)
    finite = np.isfinite(reference) if regression else np.isfinite(reference).all(axis=1)
    got_finite = np.isfinite(got) if regression else np.isfinite(got).all(axis=1)
    broken = np.flatnonzero(finite & ~got_finite)
    compare = finite & got_finite
    broken_reason = (f"{len(broken)} of {total} answers are not finite where the Pipeline's "
                     f"are ({_which(labels, broken)})" if len(broken) else "")
    if regression:
        scale = _relative_scale(reference[:n_rows])
        error = np.where(compare, np.abs(got - reference)
                         / np.maximum(np.abs(reference), scale), 0.0)
        worst = float(error.max())
        over = np.flatnonzero(error > relative_tolerance)
        reason = broken_reason
        if not reason and len(over):
            i = int(np.argmax(error))
            reason = (f"{len(over)} of {total} values differ by more than "
                      f"{relative_tolerance:g} relative to max(|sklearn|, {scale:.3g}) (the "
                      f"held-out predictions' standard deviation), up to {worst:.3g} "
                      f"({labels[i]}: onnx {got[i]:.6g}, sklearn {reference[i]:.6g})")
        return report(reason, n_rows, n_probes, error=worst, scale=scale)
    tied = compare & near_ties(np.where(got_finite[:, None], got, 0.0))
    mismatched = np.flatnonzero(compare & ~tied
                                & (got.argmax(axis=1) != reference.argmax(axis=1)))
    diff = np.where(compare[:, None], np.abs(got - reference), 0.0).max(axis=1)
    worst = float(diff.max())
    over = np.flatnonzero(diff > probability_tolerance)
    reason = broken_reason
    if not reason and len(mismatched):
        reason = f"{len(mismatched)} of {total} labels differ ({_which(labels, mismatched)})"
    if not reason and len(over):
        reason = (f"{len(over)} of {total} rows have probabilities off by more than "
                  f"{probability_tolerance:g}, up to {worst:.3g} ({_which(labels, over)})")
    return report(reason, n_rows, n_probes, len(mismatched), diff=worst,
                  pipeline_rows=int(tied.sum()))


def _relative_scale(predictions: np.ndarray) -> float:
    """The scale of the regression bound: the standard deviation of the Pipeline's
    finite held-out predictions, of their |value| if that is 0, at least SCALE_FLOOR."""
    finite = predictions[np.isfinite(predictions)]
    if finite.size == 0:
        return SCALE_FLOOR
    spread = float(np.std(finite))
    if spread == 0.0:
        spread = float(np.std(np.abs(finite))) or float(np.abs(finite).max())
    return max(spread, SCALE_FLOOR)


def compile_and_check(pipeline, X_sample: pd.DataFrame, X_test: pd.DataFrame, task: str,
                      probability_tolerance: float = PROBABILITY_TOLERANCE,
                      relative_tolerance: float = RELATIVE_TOLERANCE,
                      missing: Collection[str] | None = None
                      ) -> tuple[bytes | None, ParityReport]:
    """`compile_pipeline`, `CompiledModel.from_bytes` and `check_parity` in one. Never
    raises for a conversion or parity problem: (None, report) when the Pipeline cannot be
    compiled, (bytes, report) otherwise; `report.passed` says whether the graph may be
    served. `missing`: the features a served row may leave missing (default: all)."""
    try:
        data = compile_pipeline(pipeline, X_sample, task, missing)
    except ConversionError as exc:
        return None, not_converted(str(exc), probability_tolerance, relative_tolerance)
    except Exception as exc:  # noqa: BLE001 - an optional flavour never fails training
        return None, not_converted(f"compilation failed ({type(exc).__name__}: "
                                   f"{_short(exc, 200)})", probability_tolerance,
                                   relative_tolerance)
    features = list(json.loads(_metadata(data).get(f"{_META_PREFIX}features", "[]")))
    classes = [] if task == "regression" else list(getattr(pipeline, "classes_", []))
    sha = hashlib.sha256(data).hexdigest()
    try:
        compiled = CompiledModel.from_bytes(data, features, task, classes)
    except Exception as exc:  # noqa: BLE001
        return data, ParityReport(False, 0, 0, 0, None, None, probability_tolerance,
                                  relative_tolerance, f"the compiled graph does not load "
                                  f"({_short(exc, 200)})", sha256=sha)
    try:
        return data, check_parity(pipeline, compiled, X_test, task, probability_tolerance,
                                  relative_tolerance, missing)
    except Exception as exc:  # noqa: BLE001
        return data, ParityReport(False, 0, 0, 0, None, None, probability_tolerance,
                                  relative_tolerance, f"the parity check failed "
                                  f"({type(exc).__name__}: {_short(exc, 200)})", sha256=sha,
                                  opset=compiled.opset)


def _metadata(data: bytes) -> dict[str, str]:
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(data)
    return {p.key: p.value for p in model.metadata_props}
