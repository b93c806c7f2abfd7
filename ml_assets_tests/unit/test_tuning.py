"""ml_assets.core.modeling.tuning: the search space's parsing and the Optuna search itself
(seeded TPE, median pruning over the folds, trial and time budgets)."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification, make_regression
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml_assets.core.modeling import tuning
from ml_assets.core.modeling.tuning import ParamRange, TuningError, parse_space, tune


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, pd.Series]:
    X, y = make_classification(n_samples=150, n_features=8, n_informative=5,
                               random_state=0)
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(8)]), pd.Series(y, name="label")


def logistic(params: dict) -> Pipeline:
    return Pipeline([("scale", StandardScaler()),
                     ("model", LogisticRegression(C=params["C"],
                                                  fit_intercept=params.get("intercept", True),
                                                  max_iter=500))])


C_SPACE = {"C": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
           "intercept": {"type": "categorical", "choices": [True, False]}}


def run(X, y, space=None, make=logistic, **options):
    settings = {"n_trials": 5, "timeout_seconds": None, "seed": 7, "folds": 3,
                "scoring": "accuracy", "stratified": True, **options}
    return tune(make, X, y, parse_space(space or C_SPACE), **settings)


# --- parse_space ------------------------------------------------------------------


def test_parse_space_reads_every_kind():
    ranges = parse_space({
        "n": {"type": "int", "low": 1, "high": 9},
        "rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "penalty": {"type": "categorical", "choices": ["l2", None]},
    })
    assert ranges == [ParamRange("n", "int", 1, 9, False),
                      ParamRange("rate", "float", 0.01, 0.3, True),
                      ParamRange("penalty", "categorical", choices=("l2", None))]


def test_the_default_spaces_parse():
    for name, space in tuning.DEFAULT_SPACES.items():
        assert [r.name for r in parse_space(space)] == list(space), name


@pytest.mark.parametrize(("space", "message"), [
    ({}, "must be a non-empty mapping"),
    ([("C", {"type": "float"})], "must be a non-empty mapping"),
    ("C: float", "must be a non-empty mapping"),
    ({"C": 0.5}, "entry 'C' must be a mapping"),
    ({"C": ["float", 0, 1]}, "entry 'C' must be a mapping"),
    ({"C": {"low": 0, "high": 1}}, r"entry 'C': type must be int, float or categorical, "
                                   r"not None"),
    ({"C": {"type": "uniform", "low": 0, "high": 1}}, "not 'uniform'"),
    ({"C": {"type": "float", "high": 1}}, r"entry 'C': float needs numbers low <= high "
                                          r"\(finite\), got low=None high=1"),
    ({"C": {"type": "float", "low": True, "high": float("nan")}}, "got low=True high=nan"),
    ({"n": {"type": "int", "low": 1.5, "high": 4}}, r"\(whole\), got low=1.5"),
    ({"n": {"type": "int", "low": 1}}, "entry 'n': int needs numbers low <= high"),
    ({"n": {"type": "int", "low": 9, "high": 1}}, "got low=9 high=1"),
    ({"C": {"type": "float", "low": "0.1", "high": 1}}, "got low='0.1' high=1"),
    ({"C": {"type": "float", "low": 0, "high": 1, "log": True}}, "entry 'C': a log range "
                                                                 "needs low > 0"),
    ({"C": {"type": "float", "low": -1, "high": 1, "log": True}}, "needs low > 0"),
    ({"k": {"type": "categorical"}}, "entry 'k': categorical needs a non-empty list"),
    ({"k": {"type": "categorical", "choices": []}}, "non-empty list `choices`"),
    ({"k": {"type": "categorical", "choices": "l1,l2"}}, "non-empty list `choices`"),
])
def test_parse_space_names_the_bad_entry(space, message):
    with pytest.raises(TuningError, match=message):
        parse_space(space)


def test_a_later_bad_entry_is_found_after_good_ones():
    with pytest.raises(TuningError, match="entry 'b'"):
        parse_space({"a": {"type": "int", "low": 1, "high": 2}, "b": {"type": "int"}})


def test_tuning_error_is_a_value_error():
    assert issubclass(TuningError, ValueError)


# --- tune -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(frame) -> tuple[tuning.TuningResult, list[tuning.TrialRecord]]:
    """One 5-trial search, shared, and the records its on_trial callback received."""
    X, y = frame
    seen: list[tuning.TrialRecord] = []
    return run(X, y, n_trials=5, on_trial=seen.append), seen


def test_the_same_seed_gives_the_same_trials_and_best_params(frame, searched):
    X, y = frame
    first, second = searched[0], run(X, y, n_trials=5)
    assert first.best_params == second.best_params
    assert first.best_score == second.best_score
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert set(first.best_params) == {"C", "intercept"}
    assert 1e-3 <= first.best_params["C"] <= 10.0


def test_the_trial_budget_is_respected(searched):
    result = searched[0]
    assert [t.number for t in result.trials] == [0, 1, 2, 3, 4]
    assert sum(result.counts.values()) == 5
    assert result.scoring == "accuracy" and result.seconds > 0


def test_best_score_is_the_best_complete_trial(searched):
    result = searched[0]
    complete = [t for t in result.trials if t.state == "complete"]
    assert complete
    assert result.best_score == max(t.score for t in complete)
    best = max(complete, key=lambda t: t.score)
    assert result.best_params == best.params
    for trial in complete:
        assert len(trial.fold_scores) == 3
        assert trial.score == pytest.approx(float(np.mean(trial.fold_scores)))
        assert trial.seconds >= 0 and trial.error is None


def test_on_trial_is_called_once_per_trial_in_order(searched):
    result, seen = searched
    assert [t.number for t in seen] == [0, 1, 2, 3, 4]
    assert seen == result.trials


class Slow(BaseEstimator, ClassifierMixin):
    """A classifier whose fit takes `seconds`."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds

    def fit(self, X, y):
        time.sleep(self.seconds)
        self.classes_ = np.unique(y)
        self.majority_ = pd.Series(y).mode().iloc[0]
        return self

    def predict(self, X):
        return np.full(len(X), self.majority_)


def test_the_time_budget_stops_the_search_early(frame):
    X, y = frame
    space = {"seconds": {"type": "categorical", "choices": [0.05]}}
    started = time.perf_counter()
    result = run(X, y, space, make=lambda p: Slow(**p), n_trials=1000, timeout_seconds=0.4,
                 folds=2)
    elapsed = time.perf_counter() - started
    # A trial takes about 0.1 s: the search stops at the first trial end after 0.4 s.
    assert 1 <= len(result.trials) < 20
    assert result.counts["complete"] >= 1
    assert elapsed < 3.0


def test_no_time_at_all_is_a_tuning_error(frame):
    X, y = frame
    with pytest.raises(TuningError, match=r"no tuning trial completed within the budget "
                                          r"\(5 trials, 0s\)"):
        run(X, y, n_trials=5, timeout_seconds=0)


def test_clearly_worse_trials_are_pruned(frame):
    """A space where one choice is a majority-class dummy: once the median pruner has
    its two startup trials, a dummy trial is stopped after its second fold."""
    X, y = frame

    def make(params):
        if params["model"] == "dummy":
            return DummyClassifier(strategy="most_frequent")
        return logistic({"C": 1.0})

    seen: list[tuning.TrialRecord] = []
    result = run(X, y, {"model": {"type": "categorical", "choices": ["dummy", "logistic"]}},
                 make=make, n_trials=12, folds=3, seed=0, on_trial=seen.append)
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned, [(t.params, t.state) for t in result.trials]
    assert result.counts["pruned"] == len(pruned)
    for trial in pruned:
        assert trial.params == {"model": "dummy"}
        assert trial.score is None
        assert len(trial.fold_scores) == 2  # fold 1 is the warm-up step, 3 is skipped
        assert trial.number >= 2  # never during the startup trials
    assert [t.state for t in seen] == [t.state for t in result.trials]
    assert result.best_params == {"model": "logistic"}


def test_a_trial_whose_pipeline_fails_is_recorded_as_failed(frame):
    X, y = frame

    def make(params):
        if params["C"] < 0:
            raise ValueError("C must be positive")
        return logistic(params)

    space = {"C": {"type": "categorical", "choices": [-1.0, 1.0]}}
    result = run(X, y, space, make=make, n_trials=5, seed=1)
    failed = [t for t in result.trials if t.state == "failed"]
    assert failed and all(t.params == {"C": -1.0} and t.score is None for t in failed)
    assert result.best_params == {"C": 1.0}


def test_a_failed_trial_says_why(frame):
    X, y = frame

    def make(params):
        raise ValueError("C must be positive")

    seen: list[tuning.TrialRecord] = []
    with pytest.raises(TuningError):
        run(X, y, {"C": {"type": "categorical", "choices": [-1.0]}}, make=make, n_trials=1,
            on_trial=seen.append)
    assert [t.state for t in seen] == ["failed"]
    assert seen[0].error == "ValueError: C must be positive"


def test_when_every_trial_fails_it_is_a_tuning_error(frame):
    X, y = frame

    def make(params):
        raise ValueError("nothing works")

    with pytest.raises(TuningError, match="no tuning trial completed"):
        run(X, y, {"C": {"type": "categorical", "choices": [1.0]}}, make=make, n_trials=3)


def test_a_regression_target_with_plain_folds():
    X, y = make_regression(n_samples=150, n_features=5, noise=10.0, random_state=0)
    X, y = pd.DataFrame(X, columns=list("abcde")), pd.Series(y)
    result = tune(lambda p: Ridge(alpha=p["alpha"]), X, y,
                  parse_space({"alpha": {"type": "float", "low": 0.01, "high": 100.0,
                                         "log": True}}),
                  n_trials=4, timeout_seconds=None, seed=3, folds=3,
                  scoring="neg_root_mean_squared_error", stratified=False)
    assert result.best_score < 0 and math.isfinite(result.best_score)
    assert 0.01 <= result.best_params["alpha"] <= 100.0


@pytest.mark.parametrize(("options", "message"), [
    ({"n_trials": 0}, "the trial budget must be at least 1, got 0"),
    ({"folds": 1}, "cv folds must be at least 2, got 1"),
])
def test_a_bad_budget_is_a_tuning_error(frame, options, message):
    X, y = frame
    with pytest.raises(TuningError, match=message):
        run(X, y, **options)


def test_int_ranges_suggest_integers(frame):
    X, y = frame
    seen = []

    def make(params):
        seen.append(params["k"])
        return logistic({"C": float(params["k"])})

    run(X, y, {"k": {"type": "int", "low": 1, "high": 5}}, make=make, n_trials=4)
    assert seen and all(isinstance(k, int) and 1 <= k <= 5 for k in seen)
