"""Performance estimated before labels (ml_assets.core.estimation): the calibrator, CBPE's
estimate and band (exactness, A/A coverage and false alarms, power), the retrain
evidence rule, and the real-data validation (seattle-weather, palmerpenguins)."""

import json

import numpy as np
import pytest

from ml_assets.core.estimation import evidence
from ml_assets.core.estimation.calibration import (
    CalibrationError,
    Calibrator,
    fit_calibrator,
)
from ml_assets.core.estimation.cbpe import (
    compare_with_realised,
    estimate_performance,
    verdict,
)
from ml_assets.core.estimation.store import NotEstimated, calibrate_model, load_estimation
from ml_assets.core.modeling.metrics import classification_metrics

CLASSES = ["a", "b"]


def _world(rng, n, sharpness=3.0):
    """Rows whose true P(b) is `true`; the model reports a distorted probability."""
    true = rng.beta(0.5, 0.5, n)
    raw = true ** sharpness / (true ** sharpness + (1 - true) ** sharpness)
    labels = np.where(rng.random(n) < true, "b", "a")
    return np.column_stack([1 - raw, raw]), labels, true


def test_the_calibrator_corrects_a_distorted_model_and_round_trips_as_json():
    rng = np.random.default_rng(0)
    proba, labels, true = _world(rng, 3000)
    calibrator = fit_calibrator(proba, labels, CLASSES, seed=1)
    calibrated = calibrator.calibrate(proba)[:, 1]
    assert np.mean((calibrated - true) ** 2) < 0.25 * np.mean((proba[:, 1] - true) ** 2)
    # The distortion is a power of the odds: the log-odds' Platt map is the exact form,
    # and the cross-validated Brier score finds it among the three.
    assert calibrator.per_class[0].method == "logit"
    assert set(calibrator.per_class[0].cv_brier) == {"logit", "sigmoid", "isotonic"}
    scores = calibrator.per_class[0].cv_brier
    assert scores["logit"] < scores["sigmoid"]
    assert len(calibrator.per_class[0].replicates) == 20
    text = calibrator.to_json()
    assert Calibrator.from_json(text) == calibrator
    small = fit_calibrator(proba[:200], labels[:200], CLASSES)
    assert set(small.per_class[0].cv_brier) == {"logit", "sigmoid"}  # too few for isotonic


def test_the_log_odds_map_leaves_a_calibrated_model_alone_and_takes_certainties():
    """A calibrated model's probabilities stay (the identity is a log-odds map: the
    estimate is not biased by the calibrator's form), and p = 0 or 1 stay finite."""
    rng = np.random.default_rng(3)
    p = rng.beta(0.5, 0.5, 20_000)
    labels = np.where(rng.random(p.size) < p, "b", "a")
    fitted = fit_calibrator(np.column_stack([1 - p, p]), labels, CLASSES, seed=1)
    point = fitted.per_class[0].point
    assert point.method == "logit" and abs(point.a - 1) < 0.05 and abs(point.b) < 0.05
    certain = fitted.calibrate(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert np.all(np.isfinite(certain)) and certain[0, 1] < 0.01 and certain[1, 1] > 0.99


def test_a_multiclass_calibration_renormalises_each_row():
    rng = np.random.default_rng(2)
    raw = rng.dirichlet([1, 1, 1], 300)
    labels = np.array(["x", "y", "z"])[[rng.choice(3, p=p) for p in raw]]
    calibrator = fit_calibrator(raw, labels, ["x", "y", "z"])
    assert len(calibrator.per_class) == 3
    np.testing.assert_allclose(calibrator.calibrate(raw).sum(axis=1), 1.0)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="pickle"), "format"),
    (lambda d: d["per_class"][0]["point"].update(a=float("nan")), "not a finite number"),
    (lambda d: d["per_class"][0]["point"].update(a="__import__('os')"), "not a finite"),
    (lambda d: d["per_class"][0].update(replicates=[]), "no bootstrap replicates"),
    (lambda d: d.update(classes=["a", "b", "c"]), "class maps for 3 classes"),
    (lambda d: d["per_class"][0]["point"].update(method="eval"), "not logit, sigmoid or"),
])
def test_a_stored_calibrator_is_checked_field_by_field(mutate, message):
    rng = np.random.default_rng(3)
    proba, labels, _ = _world(rng, 100)
    data = json.loads(fit_calibrator(proba, labels, CLASSES).to_json())
    mutate(data)
    with pytest.raises(ValueError, match=message):
        Calibrator.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="not JSON"):
        load_estimation(b"\x80\x04\x95pickle")


def test_held_out_rows_too_few_or_foreign_are_refused_by_name():
    rng = np.random.default_rng(4)
    proba, labels, _ = _world(rng, 100)
    with pytest.raises(CalibrationError, match="only 20 held-out rows"):
        fit_calibrator(proba[:20], labels[:20], CLASSES)
    with pytest.raises(CalibrationError, match=r"\['c'\] are not among"):
        fit_calibrator(proba, np.where(labels == "a", "c", labels), CLASSES)
    with pytest.raises(CalibrationError, match="class 'b' has 0 held-out rows"):
        fit_calibrator(proba, np.full(100, "a"), CLASSES)


def test_a_regressor_is_recorded_as_not_estimated_with_the_reason():
    record = calibrate_model(object(), None, None, "regression")
    assert isinstance(record, NotEstimated) and "direct loss estimation" in record.reason
    assert load_estimation(record.to_json()) == record


def test_certain_probabilities_estimate_the_realised_metrics_exactly():
    """With calibrated probabilities of 0 and 1 the labels are known: every estimated
    metric equals what the metrics gate computes on them, with a zero-width band."""
    rng = np.random.default_rng(5)
    proba, labels, _ = _world(rng, 400)
    truth = np.array(["x", "y", "z"])[rng.integers(0, 3, 200)]
    scores = rng.dirichlet([1, 1, 1], 200)
    onehot = np.eye(3)[[["x", "y", "z"].index(t) for t in truth]]
    calibrator = fit_calibrator(np.vstack([onehot] * 3), np.concatenate([truth] * 3),
                                ["x", "y", "z"])
    # a calibrator that maps a one-hot row to itself, applied to the same one-hot rows
    assert np.allclose(calibrator.calibrate(onehot), onehot, atol=0.02)
    predicted = np.array(["x", "y", "z"])[scores.argmax(axis=1)]
    estimate = estimate_performance(onehot, calibrator, predicted, draws=200)
    realised = classification_metrics(truth, predicted, onehot, ["x", "y", "z"])
    for name in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted"):
        band = estimate.metrics[name]
        assert band.estimate == pytest.approx(realised[name], abs=0.02), name
        assert band.high - band.low < 0.05, name


def test_evidence_retrains_on_drift_with_a_drop_and_warns_on_harmless_drift():
    day = evidence.DayEvidence
    assert evidence.decide(day("d", drift_failed=False)).action == "quiet"
    assert evidence.decide(day("d", True, "x", evidence.BELOW, "acc")).action == "retrain"
    harmless = evidence.decide(day("d", True, "x", evidence.WITHIN))
    assert harmless.action == "warn" and "did not move" in harmless.reason
    assert evidence.decide(day("d", True, "x", None)).action == "wait"
    for unestimated in (evidence.NOT_ESTIMATED, evidence.TOO_FEW_ROWS):
        alone = evidence.decide(day("d", True, "x", unestimated))  # a regressor, a quiet day
        assert (alone.action, alone.evidence) == ("retrain", "drift_unestimated")
        assert "calibrated drift verdict decides alone" in alone.reason
    assert evidence.decide(day("d", False, "", evidence.NOT_ESTIMATED)).action == "quiet"
    assert evidence.decide(day("d", True, "x", evidence.WITHIN), any_drift=True
                           ).evidence == "any_drift"
    realised = evidence.decide(day("d", False, realised_below=True, realised_detail="r"))
    assert realised.action == "retrain" and realised.evidence == "realised"


def test_a_realised_drop_needs_more_than_noise():
    assert evidence.wilson_upper(50, 100) == pytest.approx(0.5969, abs=1e-3)
    assert evidence.realised_drop(0.7, 30, 0.8)[0] is False  # 30 rows: within noise
    drop, detail = evidence.realised_drop(0.6, 200, 0.8)
    assert drop is True and "200 labelled rows" in detail
    assert evidence.realised_drop(None, 0, 0.8) == (None, "")


def test_estimate_and_realised_compared_once_labels_arrive():
    stored = {"accuracy": {"estimate": 0.9, "low": 0.85, "high": 0.95},
              "roc_auc": {"estimate": 0.95, "low": 0.9, "high": 0.99}}
    (within, outside) = compare_with_realised(stored, {"accuracy": 0.91, "roc_auc": 0.7}, 120)
    assert within.within_band and "within the band" in within.sentence()
    assert not outside.within_band and outside.error == pytest.approx(-0.25)
    assert "concept drift" in outside.sentence()




def test_the_gate_verdict_adjusts_over_the_gated_metrics():
    """Bonferroni over the metrics' one-sided tests: a draw distribution with 1 % of its
    mass at or above the minimum is "below" when one metric is gated (1 % <= 2.5 %), but
    only "possibly_below" when five are (1 % > 2.5 % / 5); at 0.3 % it is below either way."""
    from ml_assets.core.estimation.cbpe import GATED, MetricEstimate, PerformanceEstimate

    def estimate(share_above: float) -> PerformanceEstimate:
        draws = np.sort(np.r_[np.full(int(round(1000 * (1 - share_above))), 0.70),
                              np.full(int(round(1000 * share_above)), 0.90)])
        band = MetricEstimate(float(draws.mean()), float(np.quantile(draws, 0.025)),
                              float(np.quantile(draws, 0.975)), draws)
        return PerformanceEstimate(200, dict.fromkeys(GATED, band), 0.95, 1000)

    gate = dict.fromkeys(GATED, 0.8)
    assert verdict(estimate(0.01), {"accuracy": 0.8})[0] == "below"
    outcome, reasons = verdict(estimate(0.01), gate)
    assert outcome == "possibly_below", reasons
    assert "0.005" in reasons["accuracy"]
    outcome, reasons = verdict(estimate(0.003), gate)
    assert outcome == "below" and "over 5 metrics" in reasons["roc_auc"], reasons
