"""Challenger and champion on the same held-out rows: each model's answers and metrics,
the paired test of the challenger's gain, and the sentence saying why a champion cannot
be compared (its cause and its fix).

No Dagster import: `champion_comparison` (ml_assets/registry.py) calls these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV, UntrustedModelError
from ml_assets.core.modeling.metrics import classification_metrics
from ml_assets.core.modeling.tasks import REGRESSION_METRICS, regression_metrics
from ml_assets.core.registry.significance import (
    DEFAULT_ALPHA,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    GainTest,
    paired_metric_test,
)


@dataclass(frozen=True)
class HeldOutAnswers:
    """One model's answers on the held-out rows and the metrics they give."""

    metrics: dict[str, float]
    predictions: np.ndarray  # the class (text) or a regressor's value per row
    proba: np.ndarray | None = None  # columns follow `classes`
    classes: tuple[str, ...] = ()


def held_out_answers(pipeline, X: pd.DataFrame, y: pd.Series,
                     regression: bool) -> HeldOutAnswers:
    """`pipeline`'s answers on (X, y): RMSE/MAE/R²/MAPE for a regressor (MAPE left out
    when undefined), the classification metrics otherwise."""
    if regression:
        predicted = np.asarray(pipeline.predict(X), dtype=np.float64)
        computed = regression_metrics(y, predicted)
        return HeldOutAnswers({k: v for k, v in computed.items() if k != "mape" or v == v},
                              predicted)
    proba = np.asarray(pipeline.predict_proba(X), dtype=np.float64)
    classes = list(pipeline.classes_)
    predicted = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    metrics = classification_metrics(y, predicted, proba, classes)
    return HeldOutAnswers(metrics, predicted.astype(str), proba,
                          tuple(str(c) for c in classes))


def _aligned(answers: HeldOutAnswers, classes: list[str]) -> np.ndarray:
    """`answers.proba` with its columns in `classes` order (0 for a class it lacks)."""
    assert answers.proba is not None
    index = {c: i for i, c in enumerate(answers.classes)}
    columns = [answers.proba[:, index[c]] if c in index else np.zeros(len(answers.proba))
               for c in classes]
    return np.column_stack(columns)


def paired_evidence(metric: str, y: pd.Series, challenger: HeldOutAnswers,
                    champion: HeldOutAnswers, margin: float, alpha: float = DEFAULT_ALPHA,
                    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
                    ) -> GainTest:
    """The paired test of the challenger's gain in `metric` over the champion, on the
    rows both answered (`significance.paired_metric_test`)."""
    options: dict[str, Any] = {"margin": margin, "alpha": alpha, "resamples": resamples,
                               "seed": seed}
    if metric in REGRESSION_METRICS:
        return paired_metric_test(metric, np.asarray(y, dtype=np.float64),
                                  challenger.predictions, champion.predictions, **options)
    if challenger.proba is None or champion.proba is None:
        return paired_metric_test(metric, np.asarray(y).astype(str),
                                  challenger.predictions, champion.predictions, **options)
    classes = sorted(set(challenger.classes) | set(champion.classes))
    return paired_metric_test(metric, np.asarray(y).astype(str), challenger.predictions,
                              champion.predictions,
                              challenger_proba=_aligned(challenger, classes),
                              champion_proba=_aligned(champion, classes), classes=classes,
                              **options)


def by_hand(challenger_version: str) -> str:
    """How an operator promotes the challenger after comparing the two models
    themselves."""
    return (f"or, having compared them yourself, promote version {challenger_version} by "
            f"hand: `ml-platform rollback --to {challenger_version} --reason \"...\"`")


def _missing_module(exc: BaseException) -> str | None:
    """The module a failed import named, anywhere in the exception's chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            return seen.name
        seen = seen.__cause__ or seen.__context__
    return None


def unopenable_reason(version: str, challenger_version: str, exc: BaseException,
                      operator_types: tuple[str, ...] = ()) -> str:
    """Why champion `version` cannot be compared in this process, as one sentence with
    the fix: types this process does not trust (the ML_SKOPS_TRUSTED_TYPES value that
    opens it), a module it cannot import, a refusal of the safe loader, or any other
    failure to open or score it."""
    who = f"the champion (version {version})"
    manual = by_hand(challenger_version)
    if isinstance(exc, UntrustedModelError) and exc.types:
        types = sorted(exc.types)
        needed = ",".join(dict.fromkeys([*operator_types, *types]))
        these = "its type" if len(types) == 1 else "its types"
        return (f"{who} cannot be opened in this process: {these} {', '.join(types)} "
                f"{'is' if len(types) == 1 else 'are'} not trusted here (neither in the "
                f"platform's SKOPS_TRUSTED_TYPES nor in {TRUSTED_TYPES_ENV}); the run that "
                f"trained it had them listed. Set {TRUSTED_TYPES_ENV}={needed} (after "
                f"reviewing them) and re-run, {manual}")
    module = _missing_module(exc)
    if module is not None:
        root = module.split(".")[0]
        return (f"{who} cannot be opened in this process: its code lives in module "
                f"{module!r}, which is not importable here; run from the directory that "
                f"holds {root} (or install the package that provides it) and re-run, "
                f"{manual}")
    if isinstance(exc, UntrustedModelError):
        return f"{who} was refused by the platform's safe loader: {exc}; {manual}"
    text = " ".join(str(exc).split())[:300]
    return (f"{who} cannot be opened or scored on the held-out data in this process: "
            f"{type(exc).__name__}: {text}; fix that and re-run, {manual}")
