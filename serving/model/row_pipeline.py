"""The scikit-learn runtime's hot path (`RowPipeline`): the served Pipeline answered
from validated rows, its leading preprocessing replayed in numpy
(serving/model/numpy_steps.py) and every later step (the estimator, a user's own
steps) called exactly as the Pipeline calls it, on the same matrix.

`row_pipeline` admits it once per model load, and only when the replay gives
scikit-learn's own matrix, byte for byte, on probe rows built from the model: every
category each encoder knows, a missing and an unseen value per string feature, numbers
of both signs, integers and booleans, missing numbers. Otherwise (and for any rows the
replay hands back, `Fallback`) the Pipeline answers from a DataFrame as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from serving.model.feature_specs import FeatureSpec, frame_from_rows
from serving.model.numpy_steps import (
    REFUSED,
    CategoricalGroup,
    ColumnBlocks,
    Fallback,
    Selection,
    Unsupported,
    column_blocks,
    selection,
)

__all__ = ["Fallback", "RowPipeline", "row_pipeline"]

MAX_PROBE_ROWS = 20_000  # a feature with more categories is probed on its first ones
PROBE_CELLS = 1_000_000  # output values per probe chunk (8 MB of float64)
_NUMBER_PROBES = (0.0, 1.5, -2.25, 1234.5678, None, 3e-7, -0.0)
_INTEGER_PROBES = (0, 1, -7, 40_000, None, 2 ** 40)
_BOOLEAN_PROBES = (True, False, None)


@dataclass(frozen=True)
class RowPipeline:
    """A served Pipeline's answers from validated rows (lists in `specs` order)."""

    pipeline: Pipeline  # the served Pipeline this replays
    specs: tuple[FeatureSpec, ...]
    missing: Any  # what a missing string reaches the Pipeline as (NaN or None)
    blocks: ColumnBlocks
    selections: tuple[Selection, ...]
    rest: tuple  # the steps after the replayed ones; the last is the estimator
    replayed: int  # how many of the Pipeline's steps the replay does

    def serves(self, pipeline, specs: tuple[FeatureSpec, ...], missing: Any) -> bool:
        """Whether this replays `pipeline` for rows of `specs` (a model copied with
        another Pipeline or other features needs its own)."""
        return (pipeline is self.pipeline and specs == self.specs
                and (missing is self.missing or (_nan(missing) and _nan(self.missing))))

    def features(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """The replayed steps' output for `rows` (Fallback: the Pipeline must answer)."""
        X = self.blocks(rows)
        for select in self.selections:
            X = select(X)
        return X

    def _rest(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        X = self.features(rows)
        for step in self.rest[:-1]:
            X = step.transform(X)
        return X

    def predict_proba(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        return self.rest[-1].predict_proba(self._rest(rows))

    def predict(self, rows: Sequence[Sequence[Any]], **params):
        return self.rest[-1].predict(self._rest(rows), **params)


def _nan(value) -> bool:
    return isinstance(value, float) and value != value


def _leaves(step) -> list:
    """A Pipeline's steps, nested Pipelines opened (Pipeline.predict_proba chains their
    transforms the same way), passthrough steps left out."""
    if type(step) is Pipeline:
        return [leaf for _, inner in step.steps if inner is not None and inner != "passthrough"
                for leaf in _leaves(inner)]
    return [step]


def row_pipeline(pipeline, specs: Sequence[FeatureSpec], missing: Any
                 ) -> tuple[RowPipeline | None, str]:
    """(the fast path, how many steps it replays as a sentence) for a fitted served
    Pipeline, or (None, why not). Run it where warnings are silenced (the probe
    transforms may warn about unseen categories)."""
    specs = tuple(specs)
    if type(pipeline) is not Pipeline:
        return None, f"{type(pipeline).__name__} is no scikit-learn Pipeline"
    leaves = _leaves(pipeline)
    if len(leaves) < 2:
        return None, "no preprocessing step before the estimator"
    try:
        blocks = column_blocks(leaves[0], specs, missing)
    except Unsupported as exc:
        return None, f"its first step is not replayed: {exc}"
    selections: list[Selection] = []
    width = blocks.width
    while 1 + len(selections) < len(leaves) - 1:
        try:
            chosen = selection(leaves[1 + len(selections)], width)
        except Unsupported:
            break
        selections.append(chosen)
        width = int(chosen.mask.sum())
    done = 1 + len(selections)
    fast = RowPipeline(pipeline, specs, missing, blocks, tuple(selections),
                       tuple(leaves[done:]), done)
    problem = _disagreement(fast, leaves[:done])
    if problem:
        return None, problem
    return fast, (f"{done} preprocessing step{'s' if done > 1 else ''} replayed in numpy "
                  f"from rows, then {', '.join(type(s).__name__ for s in fast.rest)}")


def probe_rows(fast: RowPipeline) -> list[list]:
    """Rows covering what the replay must get right: per string feature every category
    its encoder knows, its fill value, a missing and (unless the encoder refuses
    unknown values) an unseen value; per number, signs, fractions, missing values."""
    values: dict[int, list] = {}
    for group in fast.blocks.groups:
        if isinstance(group, CategoricalGroup):
            for i, fill, column in zip(group.columns, group.fills, group.encoded,
                                       strict=True):
                known = list(column.table)[:MAX_PROBE_ROWS]
                extra = [None] + ([] if _nan(fill) else [fill])
                if column.unknown != REFUSED:
                    extra.append(f"unseen-{uuid.uuid4().hex}")
                values[i] = [*known, *extra]
    for i, spec in enumerate(fast.specs):
        if i not in values:
            values[i] = list(_BOOLEAN_PROBES if spec.kind == "boolean"
                             else _INTEGER_PROBES if spec.kind == "integer"
                             else _NUMBER_PROBES if spec.kind == "number" else [None])
    count = max(len(v) for v in values.values())
    return [[values[i][r % len(values[i])] for i in range(len(fast.specs))]
            for r in range(count)]


def _disagreement(fast: RowPipeline, steps: list) -> str:
    """'' when the replay gives the fitted steps' own output on the probe rows, byte for
    byte (dtype and shape included), the ColumnTransformer's whole output too (so a
    column a selector drops today cannot hide a difference); otherwise why the Pipeline
    answers instead. Compared in chunks of at most PROBE_CELLS output values, so a wide
    encoder costs bounded memory at load."""
    rows = probe_rows(fast)
    size = max(1, PROBE_CELLS // max(1, fast.blocks.width))
    for start in range(0, len(rows), size):
        problem = _chunk_disagreement(fast, steps, rows[start:start + size])
        if problem:
            return problem
    return ""


def _chunk_disagreement(fast: RowPipeline, steps: list, rows: list[list]) -> str:
    try:
        expected: list[Any] = [frame_from_rows(rows, fast.specs, fast.missing)]
        for step in steps:
            expected.append(step.transform(expected[-1]))
    except Exception as exc:  # noqa: BLE001 - no reference to compare with
        return f"its preprocessing fails on probe rows ({type(exc).__name__}: {exc})"
    try:
        got = [fast.blocks(rows)]
        for select in fast.selections:
            got.append(select(got[-1]))
    except Fallback as exc:
        return f"the numpy replay hands probe rows back ({exc})"
    for mine, theirs in zip(got, expected[1:], strict=True):
        mine, theirs = np.ascontiguousarray(mine), np.ascontiguousarray(theirs)
        if (mine.dtype != theirs.dtype or mine.shape != theirs.shape
                or mine.tobytes() != theirs.tobytes()):
            return "the numpy replay differs from scikit-learn on probe rows"
    return ""
