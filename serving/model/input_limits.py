"""What hostile input may cost: value ranges the model can hold, overflow diagnosis,
and short excerpts of input for error messages.

- Number features are bounded at float32's largest magnitude (tree ensembles cast
  their input to float32), and tighter where the served pipeline's preprocessing
  would scale a value past it (`derived_bounds`, measured on the fitted pipeline
  at load time); integer features at int64's range.
- If the pipeline still overflows at predict time, `_predict` in the batcher raises
  `InputOverflow` naming the features (found by `diagnose_overflow`); routes answer
  it with 422 (400 on /invocations), never 500.
- Error messages quote at most `EXCERPT_CHARS` characters of anything the client
  sent (`excerpt`), so a 4 MB key is never echoed back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.model.feature_specs import frame_from_rows

logger = logging.getLogger(__name__)

FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
EXCERPT_CHARS = 80
_PROBES = FLOAT32_MAX / 2.0 ** np.arange(0, 128)  # descending, from float32's max to ~2


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """`value` as text, cut to `limit` characters with an ellipsis."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def excerpt_loc(loc: Sequence) -> list:
    """A pydantic error location with every key cut to an excerpt."""
    return [p if isinstance(p, int) else excerpt(p) for p in loc]


class InputOverflow(ValueError):
    """Client data the model cannot hold: a value overflows after preprocessing."""

    def __init__(self, features: list[str], rows: list[int] | None = None):
        self.features = features
        self.rows = rows or []
        named = ", ".join(excerpt(f) for f in features[:5]) or "a feature"
        more = f" (and {len(features) - 5} more)" if len(features) > 5 else ""
        super().__init__(f"{named}{more}: value too large for the model: after "
                         f"preprocessing it exceeds ±{FLOAT32_MAX:.7g}, the largest "
                         "magnitude the model's float32 input holds")

    def detail(self) -> list[dict]:
        return [{"loc": [excerpt(name)], "type": "value_overflow",
                 "msg": "value too large for the model after preprocessing"}
                for name in self.features[:20]]


class NonFinitePrediction(InputOverflow):
    """A regressor answered inf or NaN for some rows: their inputs lie beyond anything
    the model can extrapolate to. Nothing is answered or logged for the request."""

    def __init__(self, rows: list[int]):
        self.features = []
        self.rows = rows
        shown = ", ".join(str(i) for i in rows[:10]) + (" ..." if len(rows) > 10 else "")
        ValueError.__init__(self, f"the model's prediction for record(s) {shown} is not a "
                            "finite number: their values lie too far outside the training "
                            "data for the model")

    def detail(self) -> list[dict]:
        return [{"loc": ["records", i], "type": "prediction_not_finite",
                 "msg": "the model's prediction is not a finite number"}
                for i in self.rows[:20]]


def is_overflow_error(exc: BaseException) -> bool:
    """scikit-learn's refusal of values its float32 cast cannot hold."""
    text = str(exc)
    return isinstance(exc, OverflowError) or (
        isinstance(exc, (ValueError, FloatingPointError))
        and ("infinity or a value too large" in text or "overflow" in text.lower()))


def _transformer(pipeline):
    steps = getattr(pipeline, "steps", None)
    return pipeline[:-1] if steps and len(steps) > 1 else None


def _input_of(output_name: str, inputs: Sequence[str]) -> str | None:
    """The input feature an output column of the preprocessing comes from
    (ColumnTransformer names them `<transformer>__<feature>[_<category>]`)."""
    bare = output_name.split("__", 1)[-1]
    if bare in inputs:
        return bare
    matches = [name for name in inputs if bare.startswith(f"{name}_")]
    return max(matches, key=len) if matches else None


def diagnose_overflow(pipeline, frame) -> InputOverflow:
    """Which input features overflow: run the preprocessing alone and map every
    non-finite or too-large output column back to its input. Generic when it
    cannot tell."""
    inputs = [str(c) for c in frame.columns]
    features: list[str] = []
    rows: list[int] = []
    try:
        transformer = _transformer(pipeline)
        if transformer is None:
            raise ValueError("no preprocessing")
        with np.errstate(all="ignore"):
            out = np.asarray(transformer.transform(frame), dtype=np.float64)
        bad = ~np.isfinite(out) | (np.abs(out) > FLOAT32_MAX)
        try:
            names = [str(n) for n in transformer.get_feature_names_out()]
        except Exception:  # noqa: BLE001 - not every transformer names its outputs
            names = []
        for column in np.flatnonzero(bad.any(axis=0)):
            source = _input_of(names[column], inputs) if column < len(names) else None
            if source is not None and source not in features:
                features.append(source)
        rows = np.flatnonzero(bad.any(axis=1)).tolist()
    except Exception:  # noqa: BLE001 - the diagnosis is best effort
        logger.debug("overflow diagnosis failed", exc_info=True)
    if not features:  # fall back on the inputs themselves
        numeric = frame.select_dtypes("number")
        with np.errstate(all="ignore"):
            big = numeric.abs() > FLOAT32_MAX / 2
        features = [str(c) for c in numeric.columns[big.to_numpy().any(axis=0)]]
    return InputOverflow(features, rows)


def derived_bounds(pipeline, specs, example: dict | None) -> dict[str, tuple[float, float]]:
    """Per number feature, the (low, high) input range whose preprocessed values stay
    within float32 (each feature probed alone from the example row, to a factor of 2).
    Empty when the pipeline has no preprocessing or cannot be probed."""
    transformer = _transformer(pipeline)
    numeric = [i for i, s in enumerate(specs) if s.kind in ("number", "integer")]
    if transformer is None or not numeric or not example:
        return {}
    base = [example.get(spec.name) for spec in specs]
    probes = {i: _PROBES if specs[i].kind == "number" else np.minimum(_PROBES, 2.0 ** 62)
              for i in numeric}
    rows = []
    for i in numeric:
        for sign in (1.0, -1.0):
            for value in probes[i]:
                row = list(base)
                row[i] = (float(sign * value) if specs[i].kind == "number"
                          else int(sign * value))
                rows.append(row)
    try:
        frame = frame_from_rows(rows, tuple(specs))
        with np.errstate(all="ignore"):
            out = np.asarray(transformer.transform(frame), dtype=np.float64)
        ok: np.ndarray = np.asarray((np.isfinite(out) & (np.abs(out) <= FLOAT32_MAX)).all(axis=1))
    except Exception:  # noqa: BLE001 - an unprobeable pipeline keeps the dtype's range
        logger.warning("could not probe the input range of the pipeline", exc_info=True)
        return {}
    bounds: dict[str, tuple[float, float]] = {}
    n = len(_PROBES)
    for k, i in enumerate(numeric):
        sides = []
        for side in (0, 1):
            start = (2 * k + side) * n
            failing = np.flatnonzero(~ok[start:start + n])
            # the largest probe such that it and every smaller one pass
            index = 0 if failing.size == 0 else int(failing[-1]) + 1
            sides.append(None if failing.size == 0 or index >= n else float(probes[i][index]))
        if sides != [None, None]:
            bounds[specs[i].name] = (-sides[1] if sides[1] is not None else -np.inf,
                                     sides[0] if sides[0] is not None else np.inf)
    return bounds
