"""A user's own preprocessing step and the ONNX converter its author registers with
skl2onnx (docs/serving.md, "Your own step: registering a converter"): importing this
module registers it, as training's import of an ML_MODEL_FACTORY module would. Loading
a model that holds the step needs `TRUSTED` in ML_SKOPS_TRUSTED_TYPES."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from skl2onnx import update_registered_converter
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

TRUSTED = "ml_assets_tests.support.user_steps.CenterScale"


class CenterScale(TransformerMixin, BaseEstimator):
    """Each column centred on its training mean and divided by its spread (1 where a
    column is constant); NaN stays NaN."""

    def fit(self, X, y=None):
        values = np.asarray(X, dtype=np.float64)
        spread = np.nanstd(values, axis=0)
        self.mean_ = np.nan_to_num(np.nanmean(values, axis=0))
        self.scale_ = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
        self.n_features_in_ = values.shape[1]
        return self

    def transform(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_


def center_scale_shape(operator) -> None:
    """Shape and type inference: the input's tensor type (float64 stays float64), one
    column per fitted column."""
    source = operator.inputs[0]
    operator.outputs[0].type = type(source.type)([source.get_first_dimension(),
                                                  len(operator.raw_operator.mean_)])


def center_scale_converter(scope, operator, container) -> None:
    """(x - mean_) / scale_ as Sub and Div on float64 constants."""
    step = operator.raw_operator
    width = len(step.mean_)
    mean, scale, centred = (scope.get_unique_variable_name(n)
                            for n in ("mean", "scale", "centred"))
    container.add_initializer(mean, TensorProto.DOUBLE, [1, width], step.mean_.tolist())
    container.add_initializer(scale, TensorProto.DOUBLE, [1, width], step.scale_.tolist())
    container.add_node("Sub", [operator.inputs[0].full_name, mean], [centred],
                       name=scope.get_unique_operator_name("Sub"))
    container.add_node("Div", [centred, scale], [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Div"))


update_registered_converter(CenterScale, "UserCenterScale", center_scale_shape,
                            center_scale_converter)


def make_model(task: str, max_iter: int = 15) -> Pipeline:
    """The user's factory: their step, then HistGradientBoosting (a classifier unless
    `task` is "regression")."""
    kind = (HistGradientBoostingRegressor if task == "regression"
            else HistGradientBoostingClassifier)
    return Pipeline([("centre", CenterScale()),
                     ("model", kind(max_iter=max_iter, random_state=0))])
