"""The rollout verdict (pure): per-variant figures from log rows and labels, the guards,
the sequential test's promote / roll back, the minimum sample and the time limit."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.rollout.decision import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    RolloutCriteria,
    evaluate_rollout,
    rollout_rows,
)
from ml_assets.core.rollout.plan import RolloutPlan

START = dt.datetime(2026, 11, 20, 8, tzinfo=dt.timezone.utc)


def _plan(mode: str = "canary") -> RolloutPlan:
    return RolloutPlan(mode, "2", "1", START, ((0.0, 0.3),), "salt")


def _rows(variant: str, version: str, n: int, accuracy: float, rng, start: int = 0,
          ids: list[str] | None = None, latency: float = 2.0) -> tuple[pd.DataFrame, list]:
    truth = rng.choice(["B", "M"], size=n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, truth, np.where(truth == "B", "M", "B"))
    request_ids = ids or [f"{variant}-{start + i}" for i in range(n)]
    frame = pd.DataFrame({
        "timestamp": [START + dt.timedelta(seconds=10 + i) for i in range(n)],
        "request_id": request_ids, "row_index": 0, "model_name": "m",
        "model_version": version, "prediction": predicted,
        "confidence": 0.9, "probabilities": [{"B": 0.9, "M": 0.1} if p == "B" else
                                             {"B": 0.1, "M": 0.9} for p in predicted],
        "input_flags": "", "variant": variant, "latency_ms": latency, "error": ""})
    return frame, list(zip(request_ids, truth, strict=True))


def _labels(*pairs: list) -> pd.DataFrame:
    flat = [p for group in pairs for p in group]
    return pd.DataFrame(flat, columns=["request_id", "label"])


def _canary(n_champion: int, n_challenger: int, champion_acc: float, challenger_acc: float,
            seed: int = 0):
    rng = np.random.default_rng(seed)
    champion, truth_a = _rows("champion", "1", n_champion, champion_acc, rng)
    canary, truth_b = _rows("canary", "2", n_challenger, challenger_acc, rng)
    return pd.concat([champion, canary], ignore_index=True), _labels(truth_a, truth_b)


def test_a_clearly_better_canary_is_promoted_within_bounded_rows():
    decisions = []
    everything, labels = _canary(1000 * 7 // 3, 1000, 0.70, 0.95)  # one stream of traffic
    champion_all = everything[everything["variant"] == "champion"]
    canary_all = everything[everything["variant"] == "canary"]
    for labelled in range(50, 1001, 50):  # peek after every 50 labelled challenger rows
        log = pd.concat([champion_all.head(labelled * 7 // 3), canary_all.head(labelled)])
        decision = evaluate_rollout(log, labels, _plan(), RolloutCriteria(min_rows=100),
                                    regression=False, now=START + dt.timedelta(hours=1))
        decisions.append((labelled, decision.action))
        if decision.action != CONTINUE:
            break
    labelled, action = decisions[-1]
    assert action == PROMOTE and labelled <= 400, decisions
    assert all(a == CONTINUE for _, a in decisions[:-1])
    assert decision.challenger.metrics["accuracy"] > decision.champion.metrics["accuracy"]
    assert decision.test["decision"] == "challenger_better"
    assert "better" in decision.reason and "p =" in decision.reason


def test_a_clearly_worse_canary_is_rolled_back():
    log, labels = _canary(700, 300, 0.95, 0.70)
    decision = evaluate_rollout(log, labels, _plan(), RolloutCriteria(), regression=False,
                                now=START + dt.timedelta(hours=1))
    assert decision.action == ROLLBACK and "worse" in decision.reason


def test_no_verdict_before_the_minimum_sample_even_when_the_gap_is_large():
    log, labels = _canary(150, 60, 0.5, 1.0)
    decision = evaluate_rollout(log, labels, _plan(), RolloutCriteria(min_rows=100),
                                regression=False, now=START + dt.timedelta(hours=1))
    assert decision.action == CONTINUE and "60 of 100 labelled rows" in decision.reason


def test_before_any_label_the_reason_says_so_without_nan_or_p():
    log, _ = _canary(150, 60, 0.9, 0.9)
    decision = evaluate_rollout(log, pd.DataFrame(columns=["request_id", "label"]), _plan(),
                                RolloutCriteria(min_rows=100), regression=False,
                                now=START + dt.timedelta(minutes=10))
    assert decision.action == CONTINUE
    assert decision.reason == (
        "collecting: 0 of 100 labelled rows per variant before a verdict; no labelled rows "
        "yet for the challenger and champion, so no error to compare"), decision.reason
    assert "nan" not in decision.reason and "p = " not in decision.reason


def test_the_time_limit_rolls_back_a_challenger_without_evidence():
    log, labels = _canary(300, 300, 0.9, 0.9, seed=3)
    criteria = RolloutCriteria(max_seconds=3600)
    early = evaluate_rollout(log, labels, _plan(), criteria, regression=False,
                             now=START + dt.timedelta(minutes=30))
    late = evaluate_rollout(log, labels, _plan(), criteria, regression=False,
                            now=START + dt.timedelta(hours=2))
    assert early.action == CONTINUE
    assert late.action == ROLLBACK and "time limit" in late.reason


def test_a_failing_canary_is_rolled_back_without_labels():
    rng = np.random.default_rng(1)
    champion, _ = _rows("champion", "1", 200, 0.9, rng)
    canary, _ = _rows("canary", "2", 80, 0.9, rng)
    failed = canary.head(10).assign(prediction="", error="ValueError: boom",
                                    request_id=[f"f{i}" for i in range(10)])
    log = pd.concat([champion, canary, failed], ignore_index=True)
    decision = evaluate_rollout(log, pd.DataFrame(columns=["request_id", "label"]), _plan(),
                                RolloutCriteria(), regression=False, now=START)
    assert decision.action == ROLLBACK and "failed on 10 of 90" in decision.reason


def test_a_much_slower_canary_is_rolled_back():
    rng = np.random.default_rng(2)
    champion, _ = _rows("champion", "1", 200, 0.9, rng, latency=2.0)
    canary, _ = _rows("canary", "2", 150, 0.9, rng, latency=40.0)
    decision = evaluate_rollout(pd.concat([champion, canary]), pd.DataFrame(
        columns=["request_id", "label"]), _plan(), RolloutCriteria(), regression=False,
        now=START)
    assert decision.action == ROLLBACK and "p95 model time" in decision.reason


def test_shadow_is_paired_on_the_same_requests_and_reports_agreement():
    rng = np.random.default_rng(4)
    ids = [f"r{i}" for i in range(300)]
    champion, truth = _rows("champion", "1", 300, 0.80, rng, ids=ids)
    shadow = champion.assign(variant="shadow", model_version="2")
    # The shadow is right wherever the champion is, and on most of the rest too.
    truth_of = dict(truth)
    wrong = shadow["prediction"] != shadow["request_id"].map(truth_of)
    fix = wrong & (rng.random(len(shadow)) < 0.8)
    shadow.loc[fix, "prediction"] = shadow.loc[fix, "request_id"].map(truth_of)
    decision = evaluate_rollout(pd.concat([champion, shadow], ignore_index=True),
                                _labels(truth), _plan("shadow"), RolloutCriteria(),
                                regression=False, now=START + dt.timedelta(hours=1))
    assert decision.paired_rows == 300
    assert decision.agreement == pytest.approx(1 - fix.mean())
    assert decision.action == PROMOTE, decision.reason


def test_rows_outside_the_rollout_are_ignored():
    log, _ = _canary(10, 10, 0.9, 0.9)
    before = log.head(3).assign(timestamp=START - dt.timedelta(minutes=5))
    other = log.head(3).assign(model_version="7")
    rows = rollout_rows(pd.concat([log, before, other], ignore_index=True), _plan())
    assert len(rows) == 20


def test_regression_rollouts_compare_absolute_errors():
    rng = np.random.default_rng(5)
    n = 400
    truth = rng.normal(100, 10, size=2 * n)
    log = pd.DataFrame({
        "timestamp": [START + dt.timedelta(seconds=5)] * (2 * n),
        "request_id": [f"q{i}" for i in range(2 * n)], "row_index": 0, "model_name": "m",
        "model_version": ["1"] * n + ["2"] * n,
        "prediction": np.concatenate([truth[:n] + rng.normal(0, 8, n),
                                      truth[n:] + rng.normal(0, 2, n)]),
        "confidence": np.nan, "probabilities": [{}] * (2 * n), "input_flags": "",
        "variant": ["champion"] * n + ["canary"] * n, "latency_ms": 1.0, "error": ""})
    labels = pd.DataFrame({"request_id": log["request_id"], "label": truth.astype(str)})
    decision = evaluate_rollout(log, labels, _plan(), RolloutCriteria(), regression=True,
                                now=START + dt.timedelta(hours=1))
    assert decision.loss == "absolute_error"
    assert decision.action == PROMOTE
    assert decision.challenger.metrics["rmse"] < decision.champion.metrics["rmse"]


def test_criteria_refuse_what_does_not_apply():
    with pytest.raises(ValueError, match="alpha"):
        RolloutCriteria(alpha=1.5)
    with pytest.raises(ValueError, match="does not apply to a regression"):
        RolloutCriteria(loss="brier").loss_for(regression=True)


def test_a_canary_failure_counts_against_it_and_its_fallback_is_no_champion_sample():
    rng = np.random.default_rng(6)
    champion, truth_a = _rows("champion", "1", 200, 0.9, rng)
    canary, truth_b = _rows("canary", "2", 200, 0.9, rng)
    failed = canary.head(3).assign(request_id=["f0", "f1", "f2"], prediction="",
                                   error="ValueError: boom")
    fallback = champion.head(3).assign(request_id=["f0", "f1", "f2"])
    log = pd.concat([champion, canary, failed, fallback], ignore_index=True)
    labels = _labels(truth_a, truth_b, [("f0", "B"), ("f1", "M"), ("f2", "B")])
    decision = evaluate_rollout(log, labels, _plan(), RolloutCriteria(), regression=False,
                                now=START)
    assert decision.champion.labelled == 200  # the fallback answers are left out
    assert decision.test["n_challenger"] == 203  # 200 answers + 3 failures at worst loss
    assert decision.challenger.failures == 3


def test_batch_requests_and_retried_request_ids_are_not_extra_samples():
    rng = np.random.default_rng(7)
    champion, truth_a = _rows("champion", "1", 150, 0.9, rng)
    canary, truth_b = _rows("canary", "2", 150, 0.9, rng)
    batch = canary.head(5).assign(request_id="batch-1", row_index=range(5))
    retried = canary.head(10)  # the same request ids and rows logged again
    log = pd.concat([champion, canary, batch, retried], ignore_index=True)
    decision = evaluate_rollout(log, _labels(truth_a, truth_b, [("batch-1", "B")]), _plan(),
                                RolloutCriteria(), regression=False, now=START)
    assert decision.challenger.labelled == 150
    assert decision.challenger.answers == 155  # the batch was answered, just not labelled


def test_a_challenger_the_api_never_serves_is_rolled_back():
    rng = np.random.default_rng(8)
    champion, _ = _rows("champion", "1", 300, 0.9, rng)
    empty = pd.DataFrame(columns=["request_id", "label"])
    early = evaluate_rollout(champion, empty, _plan(), RolloutCriteria(), regression=False,
                             now=START + dt.timedelta(minutes=5))
    late = evaluate_rollout(champion, empty, _plan(), RolloutCriteria(), regression=False,
                            now=START + dt.timedelta(minutes=20))
    assert early.action == CONTINUE
    assert late.action == ROLLBACK and "never served version 2" in late.reason


def test_step_ups_are_compared_period_by_period():
    """A/A with a loss that drifts over time and a canary share stepping 0.1 -> 0.5
    halfway: pooling every row (the canary's rows sit late, when errors are higher)
    makes identical models look different; comparing within each step's period does
    not."""
    from ml_assets.core.rollout import sequential

    pooled_false = stratified_false = 0
    runs = 200
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        n = 4000
        t = np.arange(n) / n
        error = 0.10 + 0.08 * t  # the same for both models, rising over time
        share = np.where(t < 0.5, 0.1, 0.5)
        canary = rng.random(n) < share
        loss = (rng.random(n) < error).astype(float)
        first = t < 0.5
        pooled = sequential.two_sample(loss[~canary], loss[canary])
        strata = sequential.stratified([(loss[~canary & first], loss[canary & first]),
                                        (loss[~canary & ~first], loss[canary & ~first])])
        pooled_false += pooled.decision != "no_difference_yet"
        stratified_false += strata.decision != "no_difference_yet"
    assert stratified_false / runs < 0.05
    assert pooled_false > stratified_false
