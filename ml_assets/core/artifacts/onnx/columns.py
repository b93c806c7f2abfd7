"""Feature columns as the graph takes them: a column's kind (number or string), and a
frame in the dtypes a served row reaches the Pipeline in."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.onnx.contract import ConversionError


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

