"""LightGBM and XGBoost in the compiled flavour: onnxmltools' maintained converters
(`convert_lightgbm`, `convert_xgboost`) registered with skl2onnx, so a whole Pipeline
with one of them as its estimator converts in one call.

Both tree libraries' graphs take float32: XGBoost itself casts its input to float32
and compares float32 thresholds, so the graph (the platform casts the preprocessed
float64 matrix to float32 in front of it, as for scikit-learn's forests) sees exactly
XGBoost's values. LightGBM compares float64 values with float64 thresholds; its
converter writes them as float32, so a value within float32 rounding (about 6e-8
relative) of a threshold can take the other branch: the parity gate measures that on
held-out and probe rows, as for every other model, and refuses a graph that differs.

Registration is global to skl2onnx (its converter table) and idempotent; a library that
is not installed is simply not registered.
"""

from __future__ import annotations

import importlib.util
import threading

from ml_assets.core.artifacts.onnx.contract import _lib

# (module, class, skl2onnx alias, classifier?)
_BOOSTERS = (
    ("lightgbm", "LGBMClassifier", "LightGbmLGBMClassifier", True),
    ("lightgbm", "LGBMRegressor", "LightGbmLGBMRegressor", False),
    ("xgboost", "XGBClassifier", "XGBoostXGBClassifier", True),
    ("xgboost", "XGBRegressor", "XGBoostXGBRegressor", False),
)
# library -> (onnxmltools module, converter); imported only when the library is installed
_CONVERTERS = {
    "lightgbm": ("onnxmltools.convert.lightgbm.operator_converters.LightGbm",
                 "convert_lightgbm"),
    "xgboost": ("onnxmltools.convert.xgboost.operator_converters.XGBoost", "convert_xgboost"),
}
_registered: set[str] = set()
_lock = threading.Lock()


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def register_booster_converters() -> list[str]:
    """Register onnxmltools' LightGBM / XGBoost converters (with skl2onnx's linear
    classifier / regressor shape calculators and the zipmap / nocl options) for the
    libraries that are installed; returns the aliases registered so far."""
    with _lock:
        pending = [b for b in _BOOSTERS if b[2] not in _registered and installed(b[0])]
        if not pending:
            return sorted(_registered)
        update_registered_converter = _lib("skl2onnx").update_registered_converter
        shapes = _lib("skl2onnx.common.shape_calculator")
        for module, name, alias, classifier in pending:
            convert = getattr(_lib(_CONVERTERS[module][0]), _CONVERTERS[module][1])
            cls = getattr(_lib(module), name)
            if classifier:
                update_registered_converter(
                    cls, alias, shapes.calculate_linear_classifier_output_shapes, convert,
                    options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
            else:
                update_registered_converter(
                    cls, alias, shapes.calculate_linear_regressor_output_shapes, convert)
            _registered.add(alias)
        return sorted(_registered)


def is_booster(estimator) -> bool:
    """A LightGBM or XGBoost scikit-learn estimator (by its class's module, without
    importing either library)."""
    return any(kind.__module__.split(".")[0] in ("lightgbm", "xgboost")
               for kind in type(estimator).__mro__)
