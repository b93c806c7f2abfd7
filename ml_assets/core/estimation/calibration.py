"""A classifier's probabilities calibrated on its held-out rows, one-vs-rest, stored as
JSON numbers.

The rule (`fit_calibrator`), per class (binary: the positive class only):
- candidates: Platt scaling of the model's log-odds (two numbers; the identity is one
  of its maps, so a well-calibrated model is left as it is) and of its probability
  (bounded, so a confident mistake at p = 0 or 1 does not flatten the curve), both with
  Platt's smoothed targets so a separable held-out set gives a finite slope, and
  isotonic regression only when the held-out rows hold at least ISOTONIC_MIN_ROWS of
  the class and of the rest (isotonic over-fits smaller sets, as scikit-learn's
  calibration guide warns);
- the candidate with the lower cross-validated Brier score (stratified k-fold over the
  held-out rows, seeded) is chosen, and refitted on all of them;
- BOOTSTRAP_REPLICATES seeded bootstrap refits of the chosen map are stored beside it,
  so an estimate's band carries the calibrator's own uncertainty (a few hundred
  held-out rows do not pin a calibration curve down).
Multiclass: each class's calibrated one-vs-rest probability, then each row renormalised
to sum to 1. Nothing here is pickled: `Calibrator.to_json` / `from_json` round-trip
numbers only, and `from_json` checks every field before use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold

FORMAT = "ml_platform.calibrator/1"
ISOTONIC_MIN_ROWS = 500  # of the class AND of the rest, on the held-out rows
BOOTSTRAP_REPLICATES = 20
CV_FOLDS = 5
MIN_HELD_OUT_ROWS = 30
MIN_CLASS_ROWS = 2  # a class needs this many held-out rows on each side to be calibrated


class CalibrationError(ValueError):
    """The held-out rows cannot calibrate the classifier (too few, a class missing)."""


@dataclass(frozen=True)
class ClassMap:
    """One class's map from the model's probability to a calibrated one."""

    method: str  # "logit", "sigmoid" or "isotonic"
    a: float = 1.0  # sigmoid: q = 1 / (1 + exp(-(a * p + b))); logit: of logit(p), not p
    b: float = 0.0
    x: tuple[float, ...] = ()  # isotonic: q = interp(p, x, y), clipped at the ends
    y: tuple[float, ...] = ()

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "logit":
            return 1.0 / (1.0 + np.exp(-(self.a * log_odds(p) + self.b)))
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.a * p + self.b)))
        return np.interp(p, np.asarray(self.x), np.asarray(self.y))

    def to_dict(self) -> dict[str, Any]:
        if self.method in ("logit", "sigmoid"):
            return {"method": self.method, "a": self.a, "b": self.b}
        return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ClassMap:
        if not isinstance(data, dict):
            raise ValueError(f"calibrator: {where} is not an object")
        method = data.get("method")
        if method in ("logit", "sigmoid"):
            a, b = _number(data.get("a"), f"{where}.a"), _number(data.get("b"), f"{where}.b")
            return cls(method, a=a, b=b)
        if method == "isotonic":
            x = [_number(v, f"{where}.x") for v in _list(data.get("x"), f"{where}.x")]
            y = [_number(v, f"{where}.y") for v in _list(data.get("y"), f"{where}.y")]
            if len(x) != len(y) or not x:
                raise ValueError(f"calibrator: {where} has {len(x)} x and {len(y)} y values")
            if any(b < a for a, b in zip(x, x[1:], strict=False)):
                raise ValueError(f"calibrator: {where}.x is not sorted")
            if any(not 0.0 <= v <= 1.0 for v in y):
                raise ValueError(f"calibrator: {where}.y holds a value outside [0, 1]")
            return cls("isotonic", x=tuple(x), y=tuple(y))
        raise ValueError(f"calibrator: {where}.method is {method!r}, not logit, sigmoid or "
                         "isotonic")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise ValueError(f"calibrator: {where} is {value!r}, not a finite number")
    return float(value)


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"calibrator: {where} is not a list")
    return value


# Probabilities of exactly 0 or 1 (a forest's unanimous trees) are held this far inside
# (0, 1) before their log-odds are taken: |logit| <= 9.2.
LOGIT_CLIP = 1e-4


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def fit_logit(p: np.ndarray, y: np.ndarray) -> ClassMap:
    """Platt scaling of the log-odds (Platt's own form, on the model's score; with a = 1,
    b = 0 it is the identity, so a well-calibrated model keeps its probabilities, and an
    over- or under-confident one is rescaled as temperature scaling does)."""
    fitted = _platt(log_odds(p), y)
    return ClassMap("logit", a=fitted[0], b=fitted[1])


def fit_sigmoid(p: np.ndarray, y: np.ndarray) -> ClassMap:
    """Platt scaling of the probability itself (see `_platt`)."""
    fitted = _platt(np.asarray(p, dtype=np.float64), y)
    return ClassMap("sigmoid", a=fitted[0], b=fitted[1])


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the sigmoid of a * z + b fitted to the labels `y`, with Platt's
    smoothed targets ((N+ + 1) / (N+ + 2) for a
    positive, 1 / (N- + 2) for a negative), which keep the optimum finite on separable
    rows. Newton's method with step halving on the two parameters (Platt's own
    algorithm; the loss is strictly convex)."""
    positives, negatives = float(y.sum()), float(len(y) - y.sum())
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    X = np.column_stack([z, np.ones_like(z)])

    def loss(theta: np.ndarray) -> float:
        u = X @ theta  # -log sigmoid(u) = logaddexp(0, -u)
        return float(np.sum(target * np.logaddexp(0, -u) + (1 - target) * np.logaddexp(0, u)))

    prior = np.log((positives + 1) / (negatives + 1))
    theta = np.array([0.0, prior])
    current = loss(theta)
    for _ in range(100):
        q = 1 / (1 + np.exp(-(X @ theta)))
        gradient = X.T @ (q - target)
        hessian = (X * (q * (1 - q))[:, None]).T @ X + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-10:
            candidate = theta - scale * step
            value = loss(candidate)
            if value <= current + 1e-4 * scale * float(gradient @ -step):
                break
            scale /= 2
        if scale <= 1e-10 or abs(current - value) < 1e-10 * max(1.0, abs(current)):
            theta, current = (candidate, value) if value < current else (theta, current)
            break
        theta, current = candidate, value
    return float(theta[0]), float(theta[1])


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> ClassMap:
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    model.fit(np.asarray(p, dtype=np.float64), y.astype(np.float64))
    return ClassMap("isotonic", x=tuple(float(v) for v in model.X_thresholds_),
                    y=tuple(float(v) for v in model.y_thresholds_))


_FITTERS = {"logit": fit_logit, "sigmoid": fit_sigmoid, "isotonic": fit_isotonic}


def _cv_brier(p: np.ndarray, y: np.ndarray, method: str, seed: int) -> float:
    folds = min(CV_FOLDS, int(y.sum()), int(len(y) - y.sum()))
    if folds < 2:
        return float(np.mean((_FITTERS[method](p, y).apply(p) - y) ** 2))
    losses = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(p, y):
        fitted = _FITTERS[method](p[train], y[train])
        losses.append(np.mean((fitted.apply(p[test]) - y[test]) ** 2))
    return float(np.mean(losses))


@dataclass(frozen=True)
class ClassCalibration:
    label: str
    point: ClassMap
    replicates: tuple[ClassMap, ...]
    cv_brier: dict[str, float]  # candidate -> cross-validated Brier score

    @property
    def method(self) -> str:
        return self.point.method


@dataclass(frozen=True)
class Calibrator:
    """Calibrated probabilities for the model's classes (in the model's column order)."""

    classes: tuple[str, ...]
    per_class: tuple[ClassCalibration, ...]  # binary: one (the positive class)
    held_out_rows: int
    rule: str = ""
    reference: dict[str, float] = field(default_factory=dict)  # metrics on held-out rows

    @property
    def task(self) -> str:
        return "binary" if len(self.classes) == 2 else "multiclass"

    @property
    def replicates(self) -> int:
        return len(self.per_class[0].replicates)

    def calibrate(self, proba: np.ndarray, replicate: int | None = None) -> np.ndarray:
        """The calibrated (n x classes) probabilities of raw `proba` (columns in
        `classes` order), with the point map or bootstrap replicate `replicate`."""
        proba = _check_proba(proba, len(self.classes))

        def pick(c: ClassCalibration) -> ClassMap:
            return c.point if replicate is None else c.replicates[replicate]

        if self.task == "binary":
            q = pick(self.per_class[0]).apply(proba[:, 1])
            return np.column_stack([1 - q, q])
        calibrated = np.column_stack([pick(c).apply(proba[:, k])
                                      for k, c in enumerate(self.per_class)])
        total = calibrated.sum(axis=1, keepdims=True)
        # A row every one-vs-rest map sends to 0: keep the model's own probabilities.
        return np.where(total > 0, calibrated / np.where(total > 0, total, 1.0), proba)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "task": self.task, "classes": list(self.classes),
            "held_out_rows": self.held_out_rows, "rule": self.rule,
            "reference": self.reference,
            "per_class": [{"class": c.label, "point": c.point.to_dict(),
                           "replicates": [r.to_dict() for r in c.replicates],
                           "cv_brier": c.cv_brier} for c in self.per_class]})

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibrator:
        """Numbers and strings only; every field checked (a clear error names it)."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"calibrator: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"calibrator: format is not {FORMAT!r}")
        classes = [str(c) for c in _list(data.get("classes"), "classes")]
        if len(classes) < 2:
            raise ValueError("calibrator: fewer than two classes")
        entries = _list(data.get("per_class"), "per_class")
        expected = 1 if len(classes) == 2 else len(classes)
        if len(entries) != expected:
            raise ValueError(f"calibrator: {len(entries)} class maps for {len(classes)} "
                             f"classes (expected {expected})")
        per_class = []
        for k, entry in enumerate(entries):
            where = f"per_class[{k}]"
            if not isinstance(entry, dict):
                raise ValueError(f"calibrator: {where} is not an object")
            replicates = tuple(ClassMap.from_dict(r, f"{where}.replicates[{i}]") for i, r
                               in enumerate(_list(entry.get("replicates"),
                                                  f"{where}.replicates")))
            if not replicates:
                raise ValueError(f"calibrator: {where} has no bootstrap replicates")
            brier = entry.get("cv_brier") or {}
            per_class.append(ClassCalibration(
                str(entry.get("class")), ClassMap.from_dict(entry.get("point"),
                                                            f"{where}.point"),
                replicates, {str(k): _number(v, f"{where}.cv_brier")
                             for k, v in dict(brier).items()}))
        if len({len(c.replicates) for c in per_class}) != 1:
            raise ValueError("calibrator: classes have different numbers of replicates")
        reference = {str(k): _number(v, f"reference.{k}")
                     for k, v in dict(data.get("reference") or {}).items()}
        rows = data.get("held_out_rows")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"calibrator: held_out_rows is {rows!r}")
        return cls(tuple(classes), tuple(per_class), rows, str(data.get("rule", "")),
                   reference)


def _check_proba(proba: Any, width: int) -> np.ndarray:
    array = np.asarray(proba, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"probabilities have shape {array.shape}; expected (rows, {width})")
    if not np.isfinite(array).all():
        raise ValueError("probabilities hold NaN or infinite values")
    if (array < -1e-9).any() or (array > 1 + 1e-9).any():
        raise ValueError("probabilities hold values outside [0, 1]")
    return np.clip(array, 0.0, 1.0)


RULE = (f"per class one-vs-rest: Platt (a sigmoid of the log-odds, or of the probability) "
        f"or, with >= "
        f"{ISOTONIC_MIN_ROWS} held-out rows on each side, isotonic; the lower {CV_FOLDS}-fold "
        f"cross-validated Brier score wins; {BOOTSTRAP_REPLICATES} bootstrap refits carry "
        "its uncertainty")


def _calibrate_class(label: str, p: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                     seed: int) -> ClassCalibration:
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if min(positives, negatives) < MIN_CLASS_ROWS:
        raise CalibrationError(
            f"class {label!r} has {positives} held-out rows and the rest {negatives}: at "
            f"least {MIN_CLASS_ROWS} of each are needed to calibrate it")
    candidates = ["logit", "sigmoid"] + (["isotonic"] if min(positives, negatives)
                                >= ISOTONIC_MIN_ROWS else [])
    scores = {method: _cv_brier(p, y, method, seed) for method in candidates}
    method = min(candidates, key=lambda m: scores[m])
    fitter = _FITTERS[method]
    replicates: list[ClassMap] = []
    while len(replicates) < BOOTSTRAP_REPLICATES:
        rows = rng.integers(0, len(y), len(y))
        if 0 < y[rows].sum() < len(rows):  # a resample with both sides
            replicates.append(fitter(p[rows], y[rows]))
    return ClassCalibration(label, fitter(p, y), tuple(replicates),
                            {k: round(v, 6) for k, v in scores.items()})


def fit_calibrator(proba: np.ndarray, y_true: Any, classes: Any, seed: int = 0
                   ) -> Calibrator:
    """The calibrator of a classifier from its raw probabilities on held-out rows
    (`proba` columns in `classes` order) and their true labels (see the module's rule)."""
    labels = [str(c) for c in classes]
    if len(labels) < 2:
        raise CalibrationError("a classifier with fewer than two classes cannot be "
                               "calibrated")
    proba = _check_proba(proba, len(labels))
    truth = np.asarray([str(v) for v in np.asarray(y_true)], dtype=object)
    if len(truth) != len(proba):
        raise CalibrationError(f"{len(truth)} labels for {len(proba)} rows of probabilities")
    if len(truth) < MIN_HELD_OUT_ROWS:
        raise CalibrationError(f"only {len(truth)} held-out rows: at least "
                               f"{MIN_HELD_OUT_ROWS} are needed to calibrate")
    unknown = sorted(set(truth) - set(labels))
    if unknown:
        raise CalibrationError(f"held-out labels {unknown[:5]} are not among the model's "
                               f"classes {labels}")
    rng = np.random.default_rng(seed)
    columns = [1] if len(labels) == 2 else range(len(labels))
    per_class = tuple(_calibrate_class(labels[k], proba[:, k],
                                       (truth == labels[k]).astype(np.int64), rng, seed)
                      for k in columns)
    return Calibrator(tuple(labels), per_class, len(truth), RULE)
