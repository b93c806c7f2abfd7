"""The daily drift check's decision: its settings and error budget, the rows whose model
outputs are judged, and its outcome (fail / warn / pass / no verdict) from a report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from ml_assets.core.drift.config import (
    CALIBRATIONS,
    DEFAULT_MAX_POOLED_DAYS,
    DEFAULT_MIN_ROWS,
    DriftConfig,
    _require,
)
from ml_assets.core.drift.scoring import DriftReport

# The former share rule's levels (calibration="fixed" only).
FIXED_WARN_SHARE = 0.3
FIXED_FAIL_SHARE = 0.5
OUTCOMES = ("fail", "warn", "pass", "no verdict")


@dataclass(frozen=True)
class CheckSettings:
    """How a day is judged by the drift check (docs/drift.md, "The drift check").

    calibration 'calibrated' (default): the check fails only on the calibrated dataset
    verdict (Holm over the features) or, with `fail_on_prediction_drift`, on the
    calibrated prediction verdict (Holm over the prediction columns). `dataset_alpha` is
    the CHECK's false-alarm rate: when both verdicts can fail it, each is tested at
    dataset_alpha / 2 (Bonferroni), so a no-drift day fails the check with probability
    <= dataset_alpha. It warns when some feature drifts on its own test (at `alpha`)
    without a dataset verdict (`warn_on_feature_drift`).

    calibration 'fixed': the former rule (fixed distance thresholds; fails when the share
    of drifted features reaches `fail_share` (0.5) or the predictions drift, warns at
    `warn_share` (0.3)). warn_share / fail_share are deprecated: they are accepted only
    with calibration='fixed' and are an error otherwise.

    Both: quiet days are pooled (`min_rows`, `max_pooled_days`: see `pool_day`).
    """

    calibration: str = "calibrated"
    alpha: float = 0.01
    dataset_alpha: float = 0.02
    effect_thresholds: Mapping[str, float] = field(default_factory=dict)
    min_rows: int = DEFAULT_MIN_ROWS
    max_pooled_days: int = DEFAULT_MAX_POOLED_DAYS
    fail_on_prediction_drift: bool = True
    warn_on_feature_drift: bool = True
    tests: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    warn_share: float | None = None
    fail_share: float | None = None

    def __post_init__(self) -> None:
        _require(self.calibration in CALIBRATIONS,
                 f"calibration must be one of {CALIBRATIONS}, not {self.calibration!r}")
        if self.calibration == "calibrated":
            set_shares = [name for name in ("warn_share", "fail_share")
                          if getattr(self, name) is not None]
            _require(not set_shares, f"{' and '.join(set_shares)} belong(s) to the former "
                     "share rule and are deprecated: remove them (the calibrated check fails "
                     "on the dataset verdict at dataset_alpha), or set calibration='fixed' "
                     "to keep the former rule")
        for name in ("warn_share", "fail_share"):
            value = getattr(self, name)
            _require(value is None or 0 < value <= 1, f"{name} must be in (0, 1]")
        _require(0 < self.alpha < 1, f"alpha must be in (0, 1), not {self.alpha}")
        _require(0 < self.dataset_alpha < 1,
                 f"dataset_alpha must be in (0, 1), not {self.dataset_alpha}")
        _require(self.min_rows >= 1, f"min_rows must be >= 1, not {self.min_rows}")
        _require(self.max_pooled_days >= 1,
                 f"max_pooled_days must be >= 1, not {self.max_pooled_days}")

    @property
    def calibrated(self) -> bool:
        return self.calibration == "calibrated"

    @property
    def shares(self) -> tuple[float, float]:
        """(warn_share, fail_share) of the fixed rule."""
        return (FIXED_WARN_SHARE if self.warn_share is None else self.warn_share,
                FIXED_FAIL_SHARE if self.fail_share is None else self.fail_share)

    def family_alpha(self, has_predictions: bool) -> float:
        """The level of each Holm family (features; prediction columns): the check's
        budget split in two when both can fail it."""
        split = self.calibrated and self.fail_on_prediction_drift and has_predictions
        return self.dataset_alpha / 2 if split else self.dataset_alpha

    def drift_config(self, has_predictions: bool) -> DriftConfig:
        """The scoring settings of this check (raises ValueError for bad values)."""
        return DriftConfig(
            calibration=self.calibration, alpha=self.alpha,
            dataset_alpha=self.family_alpha(has_predictions),
            effect_thresholds=dict(self.effect_thresholds), tests=dict(self.tests),
            thresholds=dict(self.thresholds), min_rows=self.min_rows,
            max_pooled_days=self.max_pooled_days, share_threshold=self.shares[1])


def judged_answers(rows: pd.DataFrame, version: str | None = None) -> pd.DataFrame:
    """The rows whose model outputs the profile's prediction columns judge: answers of
    the champion variant (a canary's or shadow's come from another model) and, when
    `version` is known, of that model version only (a pooled window can span a
    promotion; the former champion's answers are not the new one's)."""
    if "variant" in rows:
        rows = rows[rows["variant"].fillna("champion").astype(str) == "champion"]
    if version is not None and "model_version" in rows:
        rows = rows[rows["model_version"].astype(str) == str(version)]
    return rows


@dataclass(frozen=True)
class CheckOutcome:
    outcome: str  # one of OUTCOMES
    description: str

    @property
    def passed(self) -> bool:
        return self.outcome in ("pass", "no verdict")

    @property
    def severity(self) -> str:
        """'ERROR' for a failure (retrain_on_drift acts on it), 'WARN' otherwise."""
        return "ERROR" if self.outcome == "fail" else "WARN"


def decide(report: DriftReport, settings: CheckSettings) -> CheckOutcome:
    """The check's outcome for a scored window (`score_window`)."""
    if report.status in ("insufficient", "empty"):
        day = report.window_days[-1] if report.window_days else "the day"
        why = (f"only 0 rows on {day}: nothing new to judge, no verdict"
               if report.status == "empty" else
               f"only {report.n_rows} rows over {len(report.window_days) or 1} day(s) "
               f"(< {settings.min_rows}): not enough data yet, no verdict")
        return CheckOutcome("no verdict", why)
    window = (f"{report.n_rows} rows, " + report.note + ": " if report.pooled_days
              else f"{report.n_rows} rows: ")
    drifted = report.drifted_features
    if not settings.calibrated:
        return _decide_fixed(report, settings, window)
    failures: list[str] = []
    warnings: list[str] = []
    if report.dataset_drifted:
        failures.append(f"dataset drifted (Holm p = {_p(report.dataset_p_value)} <= "
                        f"{report.dataset_alpha:g}: "
                        f"{_names(report.dataset_drifted_features)})")
    if report.prediction_drifted:
        (failures if settings.fail_on_prediction_drift else warnings).append(
            f"predictions drifted (Holm p = {_p(report.prediction_p_value)} <= "
            f"{report.dataset_alpha:g}: {_names(report.prediction_drifted_columns)})")
    if failures:
        return CheckOutcome("fail", window + "; ".join(failures + warnings))
    tested = (f"dataset p = {_p(report.dataset_p_value)} > {report.dataset_alpha:g}"
              if math.isfinite(report.dataset_p_value) else "no feature could be judged")
    if drifted and settings.warn_on_feature_drift:
        warnings.insert(0, f"{len(drifted)} feature(s) drifted on their own test (alpha "
                        f"{report.alpha:g}: {_names(drifted)}), not the dataset ({tested})")
    if warnings:
        return CheckOutcome("warn", window + "; ".join(warnings))
    return CheckOutcome("pass", window + f"no dataset drift ({tested}), {len(drifted)} "
                        "feature(s) drifted on their own test")


def _decide_fixed(report: DriftReport, settings: CheckSettings, window: str) -> CheckOutcome:
    warn_share, fail_share = settings.shares
    share = report.share_drifted if math.isfinite(report.share_drifted) else 0.0
    text = (window + f"{share:.0%} of features drifted ({_names(report.drifted_features)})"
            + ("; predictions drifted" if report.prediction_drifted else ""))
    if share >= fail_share or (report.prediction_drifted and settings.fail_on_prediction_drift):
        return CheckOutcome("fail", text)
    return CheckOutcome("warn" if share >= warn_share else "pass", text)


def _names(names: list[str], shown: int = 5) -> str:
    if not names:
        return "none"
    more = f", +{len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(map(str, names[:shown])) + more


def _p(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"
