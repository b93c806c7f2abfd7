"""What the converter (`convert`) and the loader (`runtime`) agree on about a graph.

The graph has one input per feature column, named as the column, shape [None, 1]:
double for numbers and booleans (a missing value is NaN), string for categoricals (a
missing value is NONE_STRING). Outputs: a classifier's `label` and `probabilities`
([None, n_classes], in `pipeline.classes_` order); a regressor's `variable` ([None, 1]).

The graph's metadata keys start with _META_PREFIX. Also: the runtime and converter
versions the parity evidence is recorded with, the two errors, and small helpers the
other modules use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

ONNX_ARTIFACT = "model.onnx"
TASKS = ("binary", "multiclass", "regression")

# Output names (skl2onnx's own, checked after conversion): stable, the loader needs them.
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
VALUE_OUTPUT = "variable"

# What a missing categorical value is fed as: None (a served row's missing value) as
# NONE_STRING, a float NaN (a training frame's) as NAN_STRING. The graph's imputers and
# one-hot encoders are converted to treat these strings as scikit-learn treats None and
# NaN: its SimpleImputer (missing_values=NaN, the default) imputes NaN but not None,
# and a OneHotEncoder knows None or NaN as a category only if training saw it. A client
# sending one of these strings gets it treated as missing.
NONE_STRING = "\x1fNone\x1f"
NAN_STRING = "\x1fNaN\x1f"

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

