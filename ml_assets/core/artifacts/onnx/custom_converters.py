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
