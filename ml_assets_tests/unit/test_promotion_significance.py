"""The promotion's evidence: a seeded paired bootstrap over the same held-out rows, the
margin on the metric's scale. Exactness of the statistics, the decision paths, an A/A
simulation of the false-promotion rate and a small power table (docs/promotion.md)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, r2_score, recall_score

from ml_assets.core.registry.comparison import HeldOutAnswers, paired_evidence
from ml_assets.core.registry.promotion import decide_promotion
from ml_assets.core.registry.significance import (
    _confusion_metric,
    improvement,
    metric_scale,
    paired_confusion_test,
    paired_loss_test,
    paired_metric_test,
)

ALPHA = 0.05


def _classifier_answers(rng, truth: np.ndarray, accuracy: float) -> np.ndarray:
    """Answers right with probability `accuracy`, independently per row (binary)."""
    right = rng.random(truth.size) < accuracy
    return np.where(right, truth, np.where(truth == "a", "b", "a"))


def _price_like(rng, n: int) -> np.ndarray:
    return rng.lognormal(np.log(180_000), 0.45, n)


# -- the statistics ----------------------------------------------------------------------

def test_confusion_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    truth = rng.choice(["x", "y", "z"], 300)
    predicted = np.where(rng.random(300) < 0.7, truth, rng.choice(["x", "y", "w"], 300))
    labels, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    k = len(labels)
    counts = np.bincount(codes[:300] * k + codes[300:], minlength=k * k).reshape(k, k)
    expected = {"precision_weighted": precision_score, "recall_weighted": recall_score,
                "f1_weighted": f1_score}
    for metric, score in expected.items():
        assert _confusion_metric(metric, counts) == pytest.approx(
            score(truth, predicted, average="weighted", zero_division=0), abs=1e-12)
    assert _confusion_metric("accuracy", counts) == pytest.approx(np.mean(truth == predicted))


def test_observed_gains_are_the_metrics_differences():
    rng = np.random.default_rng(4)
    truth = rng.choice(["a", "b"], 200)
    new, old = _classifier_answers(rng, truth, 0.9), _classifier_answers(rng, truth, 0.8)
    test = paired_confusion_test("f1_weighted", truth, new, old)
    assert test.observed == pytest.approx(f1_score(truth, new, average="weighted")
                                          - f1_score(truth, old, average="weighted"))
    y = _price_like(rng, 300)
    first, second = y + rng.normal(0, 30_000, 300), y + rng.normal(0, 33_000, 300)
    r2 = paired_metric_test("r2", y, first, second)
    assert r2.observed == pytest.approx(r2_score(y, first) - r2_score(y, second))
    rmse = paired_metric_test("rmse", y, first, second)
    root = [np.sqrt(np.mean((p - y) ** 2)) for p in (first, second)]
    assert rmse.observed == pytest.approx((root[1] - root[0]) / root[1])
    assert rmse.scale == "relative" and r2.scale == "absolute"


def test_the_test_is_seeded_and_its_decision_is_its_interval():
    rng = np.random.default_rng(5)
    losses = rng.random(150), rng.random(150) + 0.05
    once = paired_loss_test(*losses, margin=0.01, seed=11)
    assert once == paired_loss_test(*losses, margin=0.01, seed=11)
    assert once != paired_loss_test(*losses, margin=0.01, seed=12)
    for seed in range(20):
        test = paired_loss_test(*losses, margin=0.03, seed=seed)
        assert test.significant == (test.low > test.margin) == (test.p_value < ALPHA)
        assert test.low <= test.observed <= test.high


def test_margins_read_on_the_metrics_scale():
    assert metric_scale("rmse") == metric_scale("mae") == metric_scale("mape") == "relative"
    assert metric_scale("f1_weighted") == metric_scale("r2") == "absolute"
    assert improvement("rmse", 33_000 * (1 - 0.0012), 33_000) == pytest.approx(0.0012)
    assert improvement("rmse", 0.3 * (1 - 0.0012), 0.3) == pytest.approx(0.0012)
    assert improvement("f1_weighted", 0.91, 0.90) == pytest.approx(0.01)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same rows"):
        paired_loss_test([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="alpha"):
        paired_loss_test([1.0, 2.0], [1.0, 2.0], alpha=0.7)
    with pytest.raises(ValueError, match="finite"):
        paired_loss_test([1.0, np.inf], [1.0, 2.0])
    with pytest.raises(ValueError, match="MAPE"):
        paired_metric_test("mape", [0.0, 1.0], [0.1, 1.0], [0.2, 1.0])


# -- the decision --------------------------------------------------------------------------

def _regression(rng, n: int, champion_rmse: float, gain: float, shared: float = 0.98):
    """Truth and two models' answers on a price-like target: the challenger's errors are
    `shared` times the champion's plus their own noise, scaled so that its RMSE is
    `gain` (relative) below the champion's."""
    y = _price_like(rng, n)
    old_errors = rng.normal(0, champion_rmse, n)
    own = rng.normal(0, champion_rmse, n)
    new_errors = shared * old_errors + np.sqrt(max(1 - shared ** 2, 0)) * own
    old_errors *= champion_rmse / np.sqrt(np.mean(old_errors ** 2))
    new_errors *= champion_rmse * (1 - gain) / np.sqrt(np.mean(new_errors ** 2))
    return y, y + new_errors, y + old_errors


def _regression_decision(y, new, old, margin=0.005):
    answers = [HeldOutAnswers({"rmse": float(np.sqrt(np.mean((p - y) ** 2)))}, p)
               for p in (new, old)]
    evidence = paired_evidence("rmse", y, *answers, margin=margin)
    return decide_promotion(answers[0].metrics, answers[1].metrics, "rmse", margin,
                            evidence=evidence)


def test_a_lightgbm_like_gain_on_a_price_target_is_refused():
    """0.12% less RMSE on a $33k RMSE (a retuned gradient boosting model): below the
    0.5% relative margin, and not even beyond the noise of 2,000 held-out rows."""
    y, new, old = _regression(np.random.default_rng(33), 2_000, 33_000, 0.0012)
    decision = _regression_decision(y, new, old)
    assert not decision.promote
    assert "does not beat by the margin" in decision.reason
    assert "(+0.12%, lower is better, relative margin 0.50%" in decision.reason
    assert decision.evidence is not None and not decision.evidence.significant
    at_zero = _regression_decision(y, new, old, margin=0.0)
    assert not at_zero.promote and "within the noise" in at_zero.reason
    assert at_zero.evidence.low < 0 < at_zero.evidence.high
    tags = decision.as_tags()
    assert tags["promotion.margin_scale"] == "relative"
    assert float(tags["promotion.gain"]) == pytest.approx(0.0012, rel=1e-3)
    assert tags["promotion.gain_interval"].startswith("[-")
    assert 0 < float(tags["promotion.p_value"]) <= 1
    assert tags["promotion.test"] == "paired bootstrap" and tags["promotion.seed"] == "0"


def test_a_regressor_gain_above_the_margin_but_within_the_noise_is_refused():
    y, new, old = _regression(np.random.default_rng(8), 300, 33_000, 0.02, shared=0.5)
    decision = _regression_decision(y, new, old)
    assert not decision.promote and "but within the noise of the held-out data" in \
        decision.reason
    clear = _regression_decision(*_regression(np.random.default_rng(8), 3_000, 33_000, 0.1,
                                              shared=0.5))
    assert clear.promote and "beats champion" in clear.reason
    assert clear.evidence.low > 0.005


def test_a_classifier_gain_within_the_noise_is_refused():
    """Breast-cancer sized: 114 held-out rows; the challenger is right on 5 rows the
    champion gets wrong and wrong on 1 it gets right (+3.5 points of accuracy)."""
    truth = np.array(["a"] * 70 + ["b"] * 44)
    champion = truth.copy()
    champion[:7] = "b"  # 7 errors
    challenger = truth.copy()
    challenger[:2] = "b"
    challenger[100] = "a"  # 3 errors, 1 of them new
    metrics = [{"f1_weighted": f1_score(truth, p, average="weighted")}
               for p in (challenger, champion)]
    evidence = paired_evidence("f1_weighted", truth, HeldOutAnswers(metrics[0], challenger),
                               HeldOutAnswers(metrics[1], champion), margin=0.005)
    decision = decide_promotion(metrics[0], metrics[1], evidence=evidence)
    assert not decision.promote and "within the noise" in decision.reason
    assert decision.evidence.low <= 0.005 < decision.evidence.observed
    assert "90% interval" in decision.reason and "114 held-out rows" in decision.reason


# -- A/A: two models of equal quality ---------------------------------------------------

RUNS = 400
# alpha plus 2.5 binomial standard errors of a rate measured on RUNS runs.
TOLERANCE = ALPHA + 2.5 * np.sqrt(ALPHA * (1 - ALPHA) / RUNS)


@pytest.mark.parametrize("metric", ["f1_weighted", "accuracy"])
def test_equal_classifiers_are_promoted_at_most_alpha_of_the_time(metric):
    promoted = promoted_with_margin = 0
    for run in range(RUNS):
        rng = np.random.default_rng(10_000 + run)
        truth = rng.choice(["a", "b"], 300, p=[0.6, 0.4])
        new, old = _classifier_answers(rng, truth, 0.85), _classifier_answers(rng, truth, 0.85)
        promoted += paired_metric_test(metric, truth, new, old, seed=run,
                                       resamples=1000).significant
        promoted_with_margin += paired_metric_test(metric, truth, new, old, seed=run,
                                                   margin=0.005, resamples=1000).significant
    assert promoted / RUNS <= TOLERANCE, promoted / RUNS
    assert promoted_with_margin <= promoted


def test_equal_regressors_are_promoted_at_most_alpha_of_the_time():
    promoted = 0
    for run in range(RUNS):
        rng = np.random.default_rng(20_000 + run)
        y = _price_like(rng, 200)
        new, old = y + rng.normal(0, 33_000, 200), y + rng.normal(0, 33_000, 200)
        promoted += paired_metric_test("rmse", y, new, old, seed=run,
                                       resamples=1000).significant
    assert promoted / RUNS <= TOLERANCE, promoted / RUNS


def test_power_table():
    """Share of runs promoting a challenger truly `gain` more accurate (champion 0.85,
    errors independent), margin 0.005, 100 runs a cell: the table in docs/promotion.md."""
    table = {}
    for rows in (200, 1_000):
        for gain in (0.02, 0.05):
            hits = 0
            for run in range(100):
                rng = np.random.default_rng(30_000 + run)
                truth = rng.choice(["a", "b"], rows)
                new = _classifier_answers(rng, truth, 0.85 + gain)
                old = _classifier_answers(rng, truth, 0.85)
                hits += paired_metric_test("accuracy", truth, new, old, margin=0.005,
                                           seed=run, resamples=1000).significant
            table[rows, gain] = hits / 100
    print("power (rows, accuracy gain):", table)
    assert table[200, 0.02] < table[1_000, 0.02] < table[1_000, 0.05]
    assert table[200, 0.02] < 0.3 and table[1_000, 0.05] > 0.9
