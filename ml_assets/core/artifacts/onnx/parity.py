"""The parity gate: `check_parity` compares a compiled graph with its Pipeline on
held-out rows plus probe rows (missing values, unseen categories), both fed as the
service feeds them; `ParityReport` says how they compare (or why there is no graph)."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.onnx.columns import _served_dtypes
from ml_assets.core.artifacts.onnx.contract import CONVERTER, RUNTIME, _short
from ml_assets.core.artifacts.onnx.runtime import CompiledModel, near_ties

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

# Probe rows per feature (missing / unseen category) in `check_parity`.
PROBE_ROWS = 3
UNSEEN_CATEGORY = "\x1eunseen category\x1e"


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
