"""`compile_and_check`: `compile_pipeline`, `CompiledModel.from_bytes` and `check_parity`
in one, for training; never raises for a conversion or parity problem."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection

import pandas as pd

from ml_assets.core.artifacts.onnx.contract import _META_PREFIX, ConversionError, _short
from ml_assets.core.artifacts.onnx.convert import compile_pipeline
from ml_assets.core.artifacts.onnx.parity import (
    PROBABILITY_TOLERANCE,
    RELATIVE_TOLERANCE,
    ParityReport,
    check_parity,
    not_converted,
)
from ml_assets.core.artifacts.onnx.runtime import CompiledModel


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
