"""Hyper-parameter search before the final fit: Optuna's TPE sampler (seeded) and its
median pruner over the cross-validation folds.

Pure of Dagster: `tune` takes a function that builds the whole pipeline from a trial's
parameters, a search space, a budget (trials and seconds) and a callback per finished
trial (the training asset records each one as an MLflow child run). Every fold's
score is reported to Optuna, so a trial that is clearly worse than the median of
earlier ones at the same fold stops early ("pruned").
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import KFold, StratifiedKFold

ParamKind = Literal["int", "float", "categorical"]

# Searched when tuning a built-in estimator with no space configured. A user estimator
# needs its own space (ML_TUNING_SPACE): its parameters are not known here.
DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "random_forest": {
        "n_estimators": {"type": "int", "low": 50, "high": 400, "log": True},
        "max_depth": {"type": "int", "low": 3, "high": 30},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 10},
    },
    "hist_gradient_boosting": {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "max_iter": {"type": "int", "low": 50, "high": 400, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 12},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 40},
    },
}


class TuningError(ValueError):
    """The search space or budget cannot be used; the message names the entry."""


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter."""

    name: str
    kind: ParamKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind in ("int", "float"):
            assert self.low is not None and self.high is not None  # parse_space checks
            if self.kind == "int":
                return trial.suggest_int(self.name, int(self.low), int(self.high),
                                         log=self.log)
            return trial.suggest_float(self.name, float(self.low), float(self.high),
                                       log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


def _bound(value, kind: str) -> bool:
    """A usable bound: a finite number (not a bool), whole for an int range."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and (kind == "float" or float(value).is_integer()))


def parse_space(space: Mapping[str, Any]) -> list[ParamRange]:
    """`{"C": {"type": "float", "low": 0.001, "high": 10, "log": true},
    "penalty": {"type": "categorical", "choices": ["l2", null]}}` → ranges."""
    if not isinstance(space, Mapping) or not space:
        raise TuningError("the search space must be a non-empty mapping of parameter name "
                          "to {type, low, high[, log]} or {type: categorical, choices}")
    ranges = []
    for name, entry in space.items():
        if not isinstance(entry, Mapping):
            raise TuningError(f"search space entry {name!r} must be a mapping")
        kind = entry.get("type")
        if kind in ("int", "float"):
            low: Any = entry.get("low")
            high: Any = entry.get("high")
            if not _bound(low, kind) or not _bound(high, kind) or low > high:
                raise TuningError(f"search space entry {name!r}: {kind} needs numbers "
                                  f"low <= high ({'whole' if kind == 'int' else 'finite'}), "
                                  f"got low={low!r} high={high!r}")
            log = bool(entry.get("log", False))
            if log and low <= 0:
                raise TuningError(f"search space entry {name!r}: a log range needs low > 0")
            ranges.append(ParamRange(str(name), kind, low, high, log))
        elif kind == "categorical":
            choices = entry.get("choices")
            if not isinstance(choices, list) or not choices:
                raise TuningError(f"search space entry {name!r}: categorical needs a "
                                  "non-empty list `choices`")
            ranges.append(ParamRange(str(name), "categorical", choices=tuple(choices)))
        else:
            raise TuningError(f"search space entry {name!r}: type must be int, float or "
                              f"categorical, not {kind!r}")
    return ranges


def search_space(text: str, model_type: str, user_model: str | None = None
                 ) -> list[ParamRange]:
    """The space to search (ML_TUNING_SPACE): `text` as JSON, one space or one per
    estimator keyed by `model_type` or the user's import path (`user_model`); empty: the
    built-in estimator's default space (a user estimator needs one)."""
    if text.strip():
        try:
            space = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TuningError(f"ML_TUNING_SPACE is not valid JSON ({exc.msg} at "
                              f"column {exc.colno})") from None
        key = user_model if user_model is not None else model_type
        if isinstance(space, dict) and space and all(
                isinstance(v, dict) and v and all(isinstance(e, dict) for e in v.values())
                for v in space.values()):
            # Per estimator: {"random_forest": {...}, "pkg.mod:Cls": {...}}.
            if key not in space:
                raise TuningError(
                    f"ML_TUNING_SPACE has spaces for {', '.join(map(repr, space))} but "
                    f"none for the estimator being trained ({key!r})")
            space = space[key]
        return parse_space(space)
    if user_model is not None:
        raise TuningError(
            f"tuning {user_model} needs a search space: set ML_TUNING_SPACE "
            "(tuning_space), e.g. {\"C\": {\"type\": \"float\", \"low\": 0.01, "
            "\"high\": 10, \"log\": true}}")
    return parse_space(DEFAULT_SPACES[model_type])


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial."""

    number: int
    params: dict
    state: str  # "complete", "pruned" or "failed"
    score: float | None
    fold_scores: list[float]
    seconds: float
    error: str | None = None


@dataclass
class TuningResult:
    """The search's outcome: best parameters and score, and every trial."""

    best_params: dict
    best_score: float
    scoring: str
    trials: list[TrialRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        states = [t.state for t in self.trials]
        return {s: states.count(s) for s in ("complete", "pruned", "failed")}


def tune(make_pipeline: Callable[[dict], Any], X: pd.DataFrame, y: pd.Series,
         space: list[ParamRange], *, n_trials: int, timeout_seconds: float | None,
         seed: int, folds: int, scoring: str, stratified: bool,
         on_trial: Callable[[TrialRecord], None] | None = None) -> TuningResult:
    """Search `space` for the parameters whose pipeline scores best in k-fold CV.

    Stops after `n_trials` or `timeout_seconds`, whichever comes first (a running trial
    finishes). Same seed, data and trial budget: same trials, same best parameters."""
    import optuna

    if n_trials < 1:
        raise TuningError(f"the trial budget must be at least 1, got {n_trials}")
    if folds < 2:
        raise TuningError(f"cv folds must be at least 2, got {folds}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scorer = get_scorer(scoring)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if stratified
                else KFold(folds, shuffle=True, random_state=seed))
    splits = list(splitter.split(X, y))
    records: list[TrialRecord] = []

    def objective(trial) -> float:
        try:
            return folds_of(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # the user's estimator may raise anything: a failed trial
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def folds_of(trial) -> float:
        params = {r.name: r.suggest(trial) for r in space}
        scores: list[float] = []
        trial.set_user_attr("fold_scores", scores)
        for step, (train, valid) in enumerate(splits):
            pipeline = clone(make_pipeline(params))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is greater than n_features.*")
                pipeline.fit(X.iloc[train], y.iloc[train])
            scores.append(float(scorer(pipeline, X.iloc[valid], y.iloc[valid])))
            trial.set_user_attr("fold_scores", list(scores))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    def record(study, frozen) -> None:
        state = {optuna.trial.TrialState.COMPLETE: "complete",
                 optuna.trial.TrialState.PRUNED: "pruned"}.get(frozen.state, "failed")
        seconds = ((frozen.datetime_complete - frozen.datetime_start).total_seconds()
                   if frozen.datetime_complete and frozen.datetime_start else 0.0)
        scores = list(frozen.user_attrs.get("fold_scores", []))
        entry = TrialRecord(frozen.number, dict(frozen.params), state,
                            frozen.value if state == "complete" else None, scores, seconds,
                            frozen.user_attrs.get("error"))
        records.append(entry)
        if on_trial is not None:
            on_trial(entry)

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout_seconds, callbacks=[record],
                   catch=(Exception,), gc_after_trial=False)  # a trial fails, not the search
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise TuningError(f"no tuning trial completed within the budget ({n_trials} trials, "
                          f"{timeout_seconds}s): widen the budget or check the search space")
    return TuningResult(dict(study.best_params), float(study.best_value), scoring, records,
                        time.perf_counter() - started)
