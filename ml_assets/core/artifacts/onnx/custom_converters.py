"""skl2onnx converters for SimpleImputer and OneHotEncoder that keep scikit-learn's
semantics on the strings missing values are fed as (NONE_STRING, NAN_STRING)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.onnx.contract import NAN_STRING, NONE_STRING, _lib


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
        strings = all(isinstance(i.type, StringTensorType) for i in operator.inputs)
        if strings and _has_infrequent(raw):
            _one_hot_with_other(scope, operator, container)
            return
        if not any(isinstance(i.type, StringTensorType) for i in operator.inputs):
            convert_sklearn_one_hot_encoder(scope, operator, container)
            return
        categories = [np.array([_string_marker(c) or c for c in column], dtype=object)
                      for column in raw.categories_]
        _convert_as(convert_sklearn_one_hot_encoder, scope, operator, container,
                    categories_=categories)

    def one_hot_width(operator):
        raw = operator.raw_operator
        if not _has_infrequent(raw):
            one_hot_shapes(operator)
            return
        # One column per frequent value, plus one "infrequent" column where there is one.
        width = sum(len(raw._compute_transformed_categories(i))
                    for i in range(len(raw.categories_)))
        rows = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = types.FloatTensorType([rows, width])

    return ({SimpleImputer: imputer, OneHotEncoder: one_hot},
            {SimpleImputer: imputer_shapes, OneHotEncoder: one_hot_width})


def _has_infrequent(encoder) -> bool:
    """Whether a fitted OneHotEncoder groups some values into an "infrequent" column."""
    return bool(getattr(encoder, "_infrequent_enabled", False)) and any(
        found is not None for found in getattr(encoder, "infrequent_categories_", []))


def _one_hot_with_other(scope, operator, container) -> None:
    """A OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=...) over
    string columns (the platform's `one_hot_top_k`): per column, ONNX's OneHotEncoder
    over the frequent values (zeros for any other value), then the "infrequent" column
    as 1 - their sum, so rare and unseen values both land there as in scikit-learn.
    (skl2onnx 1.20 refuses infrequent categories on a single input.)"""
    from onnx import TensorProto

    raw = operator.raw_operator
    if len(operator.inputs) != 1:
        raise NotImplementedError("a OneHotEncoder with infrequent categories is converted "
                                  "from one input only")
    if getattr(raw, "drop_idx_", None) is not None:
        raise NotImplementedError("OneHotEncoder(drop=...) with infrequent categories is "
                                  "not converted")
    if np.dtype(raw.dtype) != np.float32:
        raise NotImplementedError(f"OneHotEncoder(dtype={np.dtype(raw.dtype)}) with "
                                  "infrequent categories is not converted (float32 only)")
    apply = _lib("skl2onnx.common._apply_operation")
    source = operator.inputs[0]
    one = scope.get_unique_variable_name("one")
    container.add_initializer(one, TensorProto.FLOAT, [1], [1.0])
    last_axis = scope.get_unique_variable_name("last_axis")
    container.add_initializer(last_axis, TensorProto.INT64, [1], [-1])
    outputs, width = [], 0
    for index, infrequent in enumerate(raw.infrequent_categories_):
        kept = list(raw._compute_transformed_categories(index))
        if infrequent is not None:
            kept = kept[:-1]  # the last one is scikit-learn's "infrequent_sklearn"
        column = scope.get_unique_variable_name("column")
        position = scope.get_unique_variable_name("position")
        container.add_initializer(position, TensorProto.INT64, [1], [index])
        container.add_node("Gather", [source.full_name, position], [column], axis=1,
                           name=scope.get_unique_operator_name("Gather"))
        encoded = scope.get_unique_variable_name("encoded")
        container.add_node(
            "OneHotEncoder", [column], [encoded], op_domain="ai.onnx.ml", zeros=1,
            cats_strings=[str(_string_marker(c) or c).encode("utf-8") for c in kept],
            name=scope.get_unique_operator_name("OneHotEncoder"))
        width += len(kept)
        if infrequent is not None:
            total = scope.get_unique_variable_name("frequent")
            container.add_node("ReduceSum", [encoded, last_axis], [total], keepdims=1,
                               name=scope.get_unique_operator_name("ReduceSum"))
            other = scope.get_unique_variable_name("other")
            container.add_node("Sub", [one, total], [other],
                               name=scope.get_unique_operator_name("Sub"))
            joined = scope.get_unique_variable_name("with_other")
            apply.apply_concat(scope, [encoded, other], joined, container, axis=-1)
            encoded, width = joined, width + 1
        outputs.append(encoded)
    result = outputs[0]
    if len(outputs) > 1:
        result = scope.get_unique_variable_name("concat_result")
        apply.apply_concat(scope, outputs, result, container, axis=-1)
    apply.apply_reshape(scope, result, operator.output_full_names, container,
                        desired_shape=(-1, width))


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
