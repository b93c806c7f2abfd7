"""Confidence-based performance estimation (CBPE): a day's accuracy, F1 and ROC AUC
expected from calibrated probabilities, with a band.

If the calibrated probability of class k for a row is q_k, the row's true label is class
k with probability q_k (that is what calibrated means), and a day's metric is a function
of its rows' labels. So the labels are simulated: each draw picks a bootstrap replicate
of the calibrator (its uncertainty), draws every row's label from that replicate's
probabilities (the day's sampling: a 50-row day varies more than a 5,000-row one), and
computes the metric exactly as the metrics gate does on true labels (accuracy, weighted
precision / recall / F1, macro F1, ROC AUC: binary on the positive class, weighted
one-vs-rest when multiclass, on the model's own scores). The estimate is the draws'
mean; the band their central `level` interval: where the realised value falls on
`level` of days when the assumptions hold (calibration carries over to the day, and
P(label | features) has not changed: no concept drift).

The rows are simulated as the cells of their score sketch (score_sketch.py: rows with the
same answer and the same probabilities up to a grid step, a cell's labels drawn at once),
so a day's estimate costs its cells, not its rows, and a day of merged shard sketches is
estimated without its rows. The sketch's stated error is recorded with the estimate.

Seeded: the same rows, calibrator and seed give the same estimate and band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ml_assets.core.estimation.calibration import Calibrator
from ml_assets.core.estimation.score_sketch import ScoreSketch

GATED = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc")
METRICS = (*GATED, "f1_macro")
DEFAULT_DRAWS = 1000
_CELLS_PER_BLOCK = 2_000_000  # draws x cells x classes simulated at once (bounded memory)


@dataclass(frozen=True)
class MetricEstimate:
    """One metric's estimate and band; `draws` (sorted simulated values, not serialised)
    give the one-sided p-value the gate verdict adjusts over the gated metrics."""

    estimate: float
    low: float
    high: float
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def p_at_or_above(self, minimum: float) -> float:
        """Monte Carlo p-value of "the day's realised value is at or above `minimum`":
        (1 + draws >= minimum) / (1 + draws). NaN without draws."""
        if self.draws is None or not self.draws.size:
            return math.nan
        above = self.draws.size - int(np.searchsorted(self.draws, minimum, side="left"))
        return (1 + above) / (1 + self.draws.size)


@dataclass(frozen=True)
class PerformanceEstimate:
    """A day's estimated metrics, each with its band."""

    rows: int
    metrics: dict[str, MetricEstimate]
    level: float
    draws: int
    method: str = "CBPE"
    notes: list[str] = field(default_factory=list)
    binning: dict[str, float] = field(default_factory=dict)  # BinningError.to_dict()
    cells: int = 0  # of the score sketch estimated from

    def to_dict(self) -> dict:
        return {"rows": self.rows, "level": self.level, "draws": self.draws,
                "method": self.method, "notes": list(self.notes),
                "binning_error": dict(self.binning), "sketch_cells": self.cells,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()}}


def predicted_indices(proba: np.ndarray, predicted, classes) -> np.ndarray:
    """The column index of each row's answered class (`predicted`), or argmax of
    `proba` when no answers are given. An answer that is not a class is an error."""
    if predicted is None:
        return np.asarray(proba).argmax(axis=1)
    index = {str(c): k for k, c in enumerate(classes)}
    answers = [str(v) for v in np.asarray(predicted)]
    unknown = sorted({a for a in answers if a not in index})
    if unknown:
        raise ValueError(f"predicted classes {unknown[:5]} are not among the calibrator's "
                         f"classes {list(classes)}")
    return np.asarray([index[a] for a in answers], dtype=np.int64)


def _metrics_of_confusion(cells: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The count metrics of each draw's confusion matrix (draws x [pred, true])."""
    tp = np.diagonal(cells, axis1=1, axis2=2).astype(np.float64)
    predicted_count = cells.sum(axis=2).astype(np.float64)
    true_count = cells.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted_count > 0, tp / predicted_count, 0.0)
        recall = np.where(true_count > 0, tp / true_count, 0.0)
        both = predicted_count + true_count
        f1 = np.where(both > 0, 2 * tp / both, 0.0)
    weights = true_count / n
    present = (true_count + predicted_count) > 0  # sklearn's labels: in y_true or y_pred
    return {"accuracy": tp.sum(axis=1) / n,
            "precision_weighted": (precision * weights).sum(axis=1),
            "recall_weighted": (recall * weights).sum(axis=1),
            "f1_weighted": (f1 * weights).sum(axis=1),
            "f1_macro": (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)}


@dataclass(frozen=True)
class _Levels:
    """One class's cells grouped by their level of its raw score, in ascending order:
    ROC AUC by the rank-sum (Mann-Whitney) identity, rows of one level as ties."""

    order: np.ndarray  # cells sorted by level
    starts: np.ndarray  # where each level begins in `order`
    rows: np.ndarray  # rows per level

    @classmethod
    def of(cls, sketch: ScoreSketch, c: int) -> _Levels:
        level = sketch.keys[:, 1 + c]
        order = np.argsort(level, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(level[order]) != 0])
        return cls(order, starts, np.add.reduceat(sketch.counts[order], starts))

    def auc(self, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per draw: the AUC of class c from its positives per cell (draws x cells), and
        the class's positives."""
        pos = np.add.reduceat(positives[:, self.order], self.starts, axis=1).astype(float)
        neg = self.rows[None, :] - pos
        below = np.cumsum(neg, axis=1) - neg  # negatives on lower levels
        p, n = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (pos * (below + neg / 2)).sum(axis=1) / (p * n)
        return np.where((p > 0) & (n > 0), auc, np.nan), p


def _auc(labels: np.ndarray, levels: list[_Levels], k: int) -> np.ndarray:
    """ROC AUC per draw on the model's scores: binary on class 1; multiclass one-vs-rest
    weighted by the class's share."""
    total = np.zeros(labels.shape[0])
    weight = np.zeros(labels.shape[0])
    for c, grouped in zip([1] if k == 2 else range(k), levels, strict=True):
        auc, positives = grouped.auc(labels[:, :, c])
        defined = np.isfinite(auc)
        w = positives if k > 2 else np.ones_like(positives)
        total += np.where(defined, auc * w, 0.0)
        weight += np.where(defined, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def _draw_labels(rng: np.random.Generator, counts: np.ndarray, q: np.ndarray,
                 size: int) -> np.ndarray:
    """Each cell's labels for `size` draws (draws x cells x classes): multinomial over
    its rows with its calibrated probabilities `q` (cells x classes)."""
    if q.shape[1] == 2:
        positives = rng.binomial(counts[None, :], np.clip(q[:, 1], 0.0, 1.0)[None, :],
                                 size=(size, len(counts)))
        return np.stack([counts[None, :] - positives, positives], axis=2)
    q = np.clip(q, 0.0, None)
    q = q / q.sum(axis=1, keepdims=True)
    return rng.multinomial(counts, q, size=(size, len(counts)))


def estimate_performance(proba, calibrator: Calibrator, predicted=None, *,
                         level: float = 0.95, draws: int = DEFAULT_DRAWS, seed: int = 0
                         ) -> PerformanceEstimate:
    """CBPE for one day's rows: `proba` the model's raw probabilities (columns in
    `calibrator.classes` order), `predicted` the classes it answered (default: argmax).
    The rows are sketched (score_sketch: exact when their probabilities take few
    values) and estimated from the sketch."""
    raw = np.asarray(proba, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] == 0:
        raise ValueError("no rows to estimate performance on")
    sketch = ScoreSketch.from_rows(raw, predicted_indices(raw, predicted, calibrator.classes),
                                   calibrator.classes)
    return estimate_from_sketch(sketch, calibrator, level=level, draws=draws, seed=seed)


def estimate_from_sketch(sketch: ScoreSketch, calibrator: Calibrator, *,
                         level: float = 0.95, draws: int = DEFAULT_DRAWS, seed: int = 0
                         ) -> PerformanceEstimate:
    """CBPE from a day's score sketch (merged shards or log segments): each draw picks a
    bootstrap replicate of the calibrator, draws every cell's labels from that
    replicate's probabilities at the cell's mean raw score, and computes the metrics
    from the counts. Its binning error (`ScoreSketch.binning_error`) is recorded."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level}")
    if draws < 20:
        raise ValueError(f"draws must be at least 20, not {draws}")
    if not sketch.n_rows:
        raise ValueError("no rows to estimate performance on")
    sketch = sketch.reordered(calibrator.classes)
    k = len(calibrator.classes)
    n = sketch.n_rows
    means = sketch.means
    rng = np.random.default_rng(seed)
    replicates = calibrator.replicates
    calibrated = [calibrator.calibrate(means, r) for r in range(replicates)]
    answered = np.eye(k, dtype=np.int64)[sketch.predicted]  # cells x k
    levels = [_Levels.of(sketch, c) for c in ([1] if k == 2 else range(k))]
    block = max(1, min(draws, _CELLS_PER_BLOCK // (sketch.cells * k)))
    results: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    done = 0
    while done < draws:
        size = min(block, draws - done)
        which = np.arange(done, done + size) % replicates
        labels = np.empty((size, sketch.cells, k), dtype=np.int64)
        for r in np.unique(which):
            picked = which == r
            labels[picked] = _draw_labels(rng, sketch.counts, calibrated[r],
                                          int(picked.sum()))
        confusion = np.einsum("dct,cp->dpt", labels, answered)  # [draw, pred, true]
        values = _metrics_of_confusion(confusion, n)
        values["roc_auc"] = _auc(labels, levels, k)
        for name, value in values.items():
            results[name].append(value)
        done += size
    tail = (1 - level) / 2
    metrics = {}
    notes = []
    for name in METRICS:
        simulated = np.concatenate(results[name])
        finite = simulated[np.isfinite(simulated)]
        if len(finite) < 0.5 * draws:
            notes.append(f"{name}: undefined on most draws (one class only)")
            continue
        metrics[name] = MetricEstimate(float(finite.mean()),
                                       float(np.quantile(finite, tail)),
                                       float(np.quantile(finite, 1 - tail)),
                                       np.sort(finite))
    error = sketch.binning_error(calibrator.calibrate)
    return PerformanceEstimate(n, metrics, level, draws, notes=notes,
                               binning=error.to_dict(), cells=sketch.cells)


def verdict(estimate: PerformanceEstimate, minimums: dict[str, float]
            ) -> tuple[str, dict[str, str]]:
    """"below" when the day is below the gate beyond its noise, with a family-wise error
    rate over the gated metrics; "possibly_below" when some point estimate is under its
    minimum without that; "within" otherwise; with the reason per metric.

    The rule (Bonferroni over the metrics' one-sided tests): with alpha = (1 - level) / 2
    (the band's one-sided tail, 2.5 % at level 0.95) and k the gated metrics that have an
    estimate, a metric is below when P(realised >= minimum), estimated from the draws, is
    <= alpha / k. When the calibrated probabilities are right, a day whose realised
    metrics all meet their minimums is called "below" with probability <= alpha whatever
    k (docs/drift.md, "The gate verdict's error rate"). A MetricEstimate built without
    draws falls back to its band: below when the whole band lies under the minimum."""
    judged = {name: (minimum, estimate.metrics[name]) for name, minimum in minimums.items()
              if name in estimate.metrics}
    alpha = (1 - estimate.level) / 2
    level = alpha / max(len(judged), 1)
    below, possibly = {}, {}
    for name, (minimum, value) in judged.items():
        p_value = value.p_at_or_above(minimum)
        beyond = (p_value <= level) if math.isfinite(p_value) else value.high < minimum
        band = f"{value.estimate:.4f} [{value.low:.4f}, {value.high:.4f}]"
        if beyond:
            below[name] = (f"{band} < {minimum:.4f}: P(at or above) {p_value:.4f} <= "
                           f"{level:.4g} (alpha {alpha:.4g} over {len(judged)} metrics)")
        elif value.estimate < minimum:
            possibly[name] = (f"{value.estimate:.4f} < {minimum:.4f}, within the day's noise "
                              f"(band [{value.low:.4f}, {value.high:.4f}], P(at or above) "
                              f"{p_value:.4f} > {level:.4g})")
    if below:
        return "below", below
    return ("possibly_below", possibly) if possibly else ("within", {})


@dataclass(frozen=True)
class EstimateCheck:
    """An estimate against the realised value once labels arrive."""

    metric: str
    estimate: float
    low: float
    high: float
    realised: float
    labelled_rows: int

    @property
    def error(self) -> float:
        """realised - estimate (negative: the model did worse than estimated)."""
        return self.realised - self.estimate

    @property
    def within_band(self) -> bool:
        return self.low <= self.realised <= self.high

    def sentence(self) -> str:
        where = "within" if self.within_band else "OUTSIDE"
        text = (f"{self.metric}: estimated {self.estimate:.4f} [{self.low:.4f}, "
                f"{self.high:.4f}], realised {self.realised:.4f} on {self.labelled_rows} "
                f"labelled rows ({where} the band, error {self.error:+.4f})")
        if not self.within_band:
            text += ("; an assumption of the estimate broke: concept drift (labels no "
                     "longer follow the features as at training) or a calibration that does "
                     "not carry over to these rows")
        return text

    def to_dict(self) -> dict:
        return {"metric": self.metric, "estimate": self.estimate, "low": self.low,
                "high": self.high, "realised": self.realised, "error": self.error,
                "within_band": self.within_band, "labelled_rows": self.labelled_rows}


def compare_with_realised(estimate: dict, realised: dict[str, float], labelled_rows: int
                          ) -> list[EstimateCheck]:
    """Each estimated metric (`PerformanceEstimate.to_dict()["metrics"]`, as the
    `estimated_performance` asset stores it) against its realised value: the hook
    `live_performance` calls when labels arrive. Metrics missing on either side are
    left out. The band was computed for the whole day; labels for only part of it widen
    the realised value's noise, so `within_band` is informative when most rows are
    labelled."""
    checks = []
    for name, band in estimate.items():
        value = realised.get(name)
        if value is None or not math.isfinite(float(value)):
            continue
        checks.append(EstimateCheck(name, float(band["estimate"]), float(band["low"]),
                                    float(band["high"]), float(value), int(labelled_rows)))
    return checks
