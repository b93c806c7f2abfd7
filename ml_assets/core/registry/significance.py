"""Whether a challenger's gain on the held-out rows is more than their noise: a seeded
paired bootstrap over the same rows, with the margin on the metric's scale.

Pure (numpy, and scikit-learn for ROC AUC only): no Dagster, no MLflow. Both models
scored the SAME held-out rows, so the rows are resampled together (a paired test: what
the two models share, the difficulty of each row, cancels out). For each of
`resamples` seeded resamples the gain is recomputed; the decision is one-sided:

    promote  <=>  the (1 - alpha) lower confidence bound of the gain > margin
             <=>  p < alpha, p = share of resampled gains <= margin

The gain is on the metric's scale (`metric_scale`): for an unbounded error (RMSE, MAE,
MAPE) it is RELATIVE, the share of the champion's error the challenger removes
((champion - challenger) / champion: 0.005 = 0.5% lower RMSE), so one margin means the
same on a $33k RMSE and on a 0.3 RMSE; for a bounded score (accuracy, F1, precision,
recall, ROC AUC, R²) it is the plain difference.

Assumptions (stated because the guarantee rests on them): the held-out rows are
independent draws from the distribution the model will serve (no duplicates, groups or
time order split across train and test), and the held-out split is representative of
it. Under them, two models of equal quality are promoted at most about `alpha` of the
time (the A/A test in ml_assets_tests/unit/test_promotion_significance.py); with
dependent rows (several rows per customer, time series) the interval is too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_assets.core.modeling.tasks import better

# Unbounded errors: the gain is a share of the champion's error.
RELATIVE_METRICS = ("rmse", "mae", "mape")
DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
# Bound on resamples x rows held in memory at once (index matrix of int64).
_CELLS_PER_CHUNK = 4_000_000
METHOD = "paired bootstrap"


def metric_scale(metric: str) -> str:
    """"relative" for an unbounded error (RMSE, MAE, MAPE), "absolute" otherwise."""
    return "relative" if metric in RELATIVE_METRICS else "absolute"


def improvement(metric: str, challenger: float, champion: float) -> float:
    """How much `challenger` improves on `champion` on the metric's scale: positive is
    better; relative to the champion's error for RMSE, MAE and MAPE."""
    gain = better(metric, challenger, champion)
    if metric_scale(metric) == "absolute":
        return gain
    if champion == 0:
        return 0.0 if gain == 0 else float(np.sign(gain)) * float("inf")
    return gain / abs(champion)


def format_gain(value: float, scale: str) -> str:
    return f"{value:+.2%}" if scale == "relative" else f"{value:+.4f}"


def format_margin(value: float, scale: str) -> str:
    return f"{value:.2%}" if scale == "relative" else f"{value:g}"


@dataclass(frozen=True)
class GainTest:
    """The evidence of a promotion decision: the observed gain of the challenger on the
    held-out rows, its bootstrap interval and p-value against the margin."""

    metric: str
    scale: str  # "relative" | "absolute"
    observed: float  # challenger's improvement, positive = better
    low: float  # lower end of the (1 - 2 alpha) interval: the one-sided (1 - alpha) bound
    high: float
    p_value: float  # share of resampled gains <= margin (H0: the true gain <= margin)
    margin: float
    alpha: float
    rows: int
    resamples: int
    seed: int
    method: str = METHOD

    @property
    def significant(self) -> bool:
        """The gain exceeds the margin beyond the noise of the held-out rows."""
        return bool(self.low > self.margin)

    @property
    def level(self) -> float:
        """The confidence of the two-sided interval [low, high]."""
        return 1 - 2 * self.alpha

    def interval(self) -> str:
        return (f"{self.level:.0%} interval {format_gain(self.low, self.scale)} to "
                f"{format_gain(self.high, self.scale)}")

    def describe(self) -> str:
        what = (f"relative {self.metric} improvement" if self.scale == "relative"
                else f"{self.metric} gain")
        p = (f"p < {1 / self.resamples:.1g}" if self.p_value == 0
             else f"p = {self.p_value:.3g}")
        return (f"{what} {format_gain(self.observed, self.scale)} ({self.interval()}; "
                f"{p} against margin {format_margin(self.margin, self.scale)}; "
                f"{self.rows} held-out rows, {self.resamples} {self.method} resamples, "
                f"seed {self.seed})")

    def as_record(self) -> dict[str, float | int | str | bool]:
        return {"gain": self.observed, "gain_low": self.low, "gain_high": self.high,
                "gain_scale": self.scale, "p_value": self.p_value,
                "interval_level": self.level, "alpha": self.alpha, "test_rows": self.rows,
                "resamples": self.resamples, "seed": self.seed, "test": self.method,
                "significant": self.significant}


def _chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Seeded resamples of row indices, (chunk, n) at a time."""
    rng = np.random.default_rng(seed)
    size = max(1, _CELLS_PER_CHUNK // max(n, 1))
    for start in range(0, resamples, size):
        yield rng.integers(0, n, size=(min(size, resamples - start), n))


def _check(resamples: int, alpha: float, margin: float, n: int) -> None:
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 held-out rows, got {n}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if margin < 0 or not np.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")


def _expansion(n: int, alpha: float) -> float:
    """How much wider the bootstrap distribution is made around the observed gain:
    sqrt(n / (n - 1)) * t_{n-1} / z quantile ratio (Hesterberg 2015, "expanded percentile
    interval"), which corrects the percentile bootstrap's narrowness on small samples
    (about 1.03 at 50 rows, 1.0008 at 2,000)."""
    from scipy.stats import norm, t

    return float(np.sqrt(n / (n - 1)) * t.ppf(1 - alpha, n - 1) / norm.ppf(1 - alpha))


def _decide(metric: str, scale: str, observed: float, gains: np.ndarray, margin: float,
            alpha: float, n: int, resamples: int, seed: int) -> GainTest:
    """Interval and p-value from the resampled gains (NaN resamples, e.g. one class
    only for ROC AUC, count as no gain)."""
    gains = np.where(np.isnan(gains), -np.inf, gains)
    if np.isfinite(observed):  # Hesterberg's expanded percentile interval
        gains = observed + _expansion(n, alpha) * (gains - observed)
    low, high = np.quantile(gains, [alpha, 1 - alpha], method="inverted_cdf")
    p_value = float(np.mean(gains <= margin))
    return GainTest(metric, scale, float(observed), float(low), float(high), p_value,
                    float(margin), float(alpha), int(n), int(resamples), int(seed))


def _relative(champion: np.ndarray, challenger: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = (champion - challenger) / np.abs(champion)
    return np.where(champion == 0, np.where(challenger == 0, 0.0,
                                            -np.sign(challenger) * np.inf), gain)


def paired_loss_test(challenger_losses, champion_losses, *, metric: str = "loss",
                     root: bool = False, relative: bool = False, margin: float = 0.0,
                     alpha: float = DEFAULT_ALPHA, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED) -> GainTest:
    """Per-row losses of both models on the same rows (lower is better) -> the decision,
    interval and p-value.

    The statistic of each model is the mean loss (`root`: its square root, e.g. RMSE
    from squared errors); the gain is champion minus challenger (`relative`: divided by
    the champion's). Rows are resampled in pairs, `resamples` times, seeded by `seed`."""
    a = np.asarray(challenger_losses, dtype=np.float64).ravel()
    b = np.asarray(champion_losses, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"both models must score the same rows: {a.size} vs {b.size}")
    _check(resamples, alpha, margin, a.size)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-row losses must be finite numbers")

    def statistic(values: np.ndarray) -> np.ndarray:
        mean = values.mean(axis=-1)
        return np.sqrt(mean) if root else mean

    def gain(champion: np.ndarray, challenger: np.ndarray) -> np.ndarray:
        return _relative(champion, challenger) if relative else champion - challenger

    observed = float(gain(statistic(b), statistic(a)))
    gains = np.concatenate([gain(statistic(b[idx]), statistic(a[idx]))
                            for idx in _chunks(a.size, resamples, seed)])
    return _decide(metric, "relative" if relative else "absolute", observed, gains,
                   margin, alpha, a.size, resamples, seed)


CONFUSION_METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted")


def _confusion_metric(metric: str, counts: np.ndarray) -> np.ndarray:
    """`metric` from confusion counts (..., k, k) [true, predicted], as scikit-learn's
    weighted averages compute it (weights: true counts; 0 where undefined)."""
    n = counts.sum(axis=(-2, -1))
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    if metric in ("accuracy", "recall_weighted"):  # weighted recall is accuracy
        return tp.sum(axis=-1) / n
    support = counts.sum(axis=-1)
    predicted = counts.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "precision_weighted":
            per_class = np.where(predicted > 0, tp / predicted, 0.0)
        else:
            per_class = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    return (per_class * support).sum(axis=-1) / n


def paired_confusion_test(metric: str, y_true, challenger_pred, champion_pred, *,
                          margin: float = 0.0, alpha: float = DEFAULT_ALPHA,
                          resamples: int = DEFAULT_RESAMPLES,
                          seed: int = DEFAULT_SEED) -> GainTest:
    """The paired bootstrap of a classification metric that is a function of the
    confusion matrix (accuracy, weighted precision / recall / F1), each resample's
    matrices counted for both models on the same rows; the gain is the difference."""
    if metric not in CONFUSION_METRICS:
        raise ValueError(f"{metric!r} is not one of {', '.join(CONFUSION_METRICS)}")
    truth = np.asarray(y_true).astype(str)
    first = np.asarray(challenger_pred).astype(str)
    second = np.asarray(champion_pred).astype(str)
    if not truth.shape == first.shape == second.shape:
        raise ValueError("both models must score the same rows")
    _check(resamples, alpha, margin, truth.size)
    labels, codes = np.unique(np.concatenate([truth, first, second]), return_inverse=True)
    k, n = len(labels), truth.size
    t, a, b = codes[:n], codes[n:2 * n], codes[2 * n:]
    # Resampling rows in pairs is resampling the joint (challenger cell, champion cell)
    # categories with their observed frequencies: a multinomial draw, exact and fast.
    joint, frequency = np.unique((t * k + a) * k * k + (t * k + b), return_counts=True)
    onehot_a = np.eye(k * k)[joint // (k * k)]  # (categories, k*k)
    onehot_b = np.eye(k * k)[joint % (k * k)]

    def score(draws: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        return _confusion_metric(metric, (draws @ onehot).reshape(-1, k, k))

    observed = float(score(frequency[None], onehot_a)[0] - score(frequency[None], onehot_b)[0])
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, frequency / n, size=resamples)
    gains = score(draws, onehot_a) - score(draws, onehot_b)
    return _decide(metric, "absolute", observed, gains, margin, alpha, n, resamples, seed)


def paired_statistic_test(metric: str, n: int,
                          statistic: Callable[[np.ndarray | None], tuple[float, float]], *,
                          margin: float = 0.0, alpha: float = DEFAULT_ALPHA,
                          resamples: int = DEFAULT_RESAMPLES,
                          seed: int = DEFAULT_SEED) -> GainTest:
    """Any score (higher is better) given row weights: `statistic(weights)` returns
    (challenger, champion) on the rows weighted by `weights` (None: every row once).
    A loop over resamples: for metrics without a vectorised form (ROC AUC)."""
    _check(resamples, alpha, margin, n)
    challenger, champion = statistic(None)
    gains = []
    for idx in _chunks(n, resamples, seed):
        for row in idx:
            new, old = statistic(np.bincount(row, minlength=n).astype(np.float64))
            gains.append(new - old)
    return _decide(metric, "absolute", challenger - champion, np.asarray(gains), margin,
                   alpha, n, resamples, seed)


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, classes: list,
             weights: np.ndarray | None) -> float:
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    keep = slice(None) if weights is None else weights > 0
    truth = y_true[keep]
    w = None if weights is None else weights[keep]
    if len(np.unique(truth)) < 2:
        return float("nan")
    if len(classes) == 2:
        positive = label_binarize(truth, classes=classes).ravel()
        return float(roc_auc_score(positive, proba[keep][:, 1], sample_weight=w))
    if len(np.unique(truth)) < len(classes):
        return float("nan")
    return float(roc_auc_score(truth, proba[keep], multi_class="ovr", average="weighted",
                               labels=classes, sample_weight=w))


def paired_metric_test(metric: str, y_true, challenger_pred, champion_pred, *,
                       challenger_proba=None, champion_proba=None, classes=None,
                       margin: float = 0.0, alpha: float = DEFAULT_ALPHA,
                       resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED) -> GainTest:
    """The paired test of `metric` for two models' answers on the same held-out rows:
    regression errors through their per-row losses (squared, absolute, absolute
    percentage; R² as squared errors over the held-out variance), classification
    metrics through the confusion matrix, ROC AUC through weighted rows."""
    options: dict[str, Any] = {"margin": margin, "alpha": alpha, "resamples": resamples,
                               "seed": seed}
    if metric in ("rmse", "mae", "mape", "r2"):
        truth = np.asarray(y_true, dtype=np.float64)
        new = np.asarray(challenger_pred, dtype=np.float64) - truth
        old = np.asarray(champion_pred, dtype=np.float64) - truth
        if metric == "rmse":
            return paired_loss_test(new ** 2, old ** 2, metric=metric, root=True,
                                    relative=True, **options)
        if metric == "mae":
            return paired_loss_test(np.abs(new), np.abs(old), metric=metric, relative=True,
                                    **options)
        if metric == "mape":
            if np.any(truth == 0):
                raise ValueError("MAPE is undefined when a true value is 0; compare on "
                                 "rmse or mae")
            return paired_loss_test(np.abs(new / truth), np.abs(old / truth), metric=metric,
                                    relative=True, **options)
        variance = float(np.mean((truth - truth.mean()) ** 2))
        if variance == 0:
            raise ValueError("R² is undefined on held-out rows whose target is constant")
        return paired_loss_test(new ** 2 / variance, old ** 2 / variance, metric=metric,
                                **options)
    if metric in CONFUSION_METRICS:
        return paired_confusion_test(metric, y_true, challenger_pred, champion_pred,
                                     **options)
    if metric == "roc_auc":
        if challenger_proba is None or champion_proba is None or classes is None:
            raise ValueError("roc_auc needs both models' probabilities and the classes")
        truth = np.asarray(y_true).astype(str)
        names = [str(c) for c in classes]
        first = np.asarray(challenger_proba, dtype=np.float64)
        second = np.asarray(champion_proba, dtype=np.float64)
        return paired_statistic_test(
            metric, truth.size, lambda w: (_roc_auc(truth, first, names, w),
                                           _roc_auc(truth, second, names, w)),
            **{**options, "resamples": min(resamples, 1000)})
    raise ValueError(f"no paired test for metric {metric!r}")
