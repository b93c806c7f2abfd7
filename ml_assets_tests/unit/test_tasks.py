"""ml_assets.core.modeling.tasks: which learning problem a target is, regression metrics, and
which direction of a metric is better."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from ml_assets.core.modeling import tasks
from ml_assets.core.modeling.tasks import better, detect_task, regression_metrics


def test_two_labels_are_binary():
    decision = detect_task(pd.Series(["benign", "malignant", "benign"], name="diagnosis"))
    assert decision.task == "binary"
    assert not decision.is_regression
    assert "2 classes" in decision.reason


def test_few_integers_are_multiclass():
    decision = detect_task(pd.Series([0, 1, 2, 1, 0, 2] * 3, name="grade"))
    assert decision.task == "multiclass"
    assert "3 classes" in decision.reason


def test_missing_values_are_not_a_class():
    assert detect_task(pd.Series(["a", None, "b", np.nan, "a"])).task == "binary"


def test_many_distinct_integers_are_regression():
    y = pd.Series(range(tasks.REGRESSION_MIN_DISTINCT + 1), name="price")
    decision = detect_task(y)
    assert decision.task == "regression" and decision.is_regression
    assert f"{tasks.REGRESSION_MIN_DISTINCT + 1} distinct numeric values" in decision.reason
    assert "ML_TASK=classification" in decision.reason


def test_exactly_the_threshold_of_integers_is_still_classification():
    y = pd.Series(range(tasks.REGRESSION_MIN_DISTINCT))
    assert detect_task(y).task == "multiclass"


def test_non_integral_values_are_regression_even_when_few():
    decision = detect_task(pd.Series([0.5, 1.25, 0.5, 2.0], name="y"))
    assert decision.task == "regression"
    assert "non-integral" in decision.reason


def test_strings_of_numbers_are_numbers():
    assert detect_task(pd.Series(["1.5", "2.25", "3.0", "1.5"])).task == "regression"
    assert detect_task(pd.Series(["1", "2", "1", "2"])).task == "binary"
    many = pd.Series([str(i) for i in range(40)])
    assert detect_task(many).task == "regression"


def test_mixed_text_and_numbers_are_labels():
    y = pd.Series(["1.5", "2.5", "high"] + [str(i + 0.5) for i in range(30)])
    assert detect_task(y).task == "multiclass"


@pytest.mark.parametrize("y", [pd.Series([True, False, True]),
                               pd.Series([True, False, None], dtype="boolean")])
def test_booleans_are_labels(y):
    assert detect_task(y).task == "binary"


def test_booleans_cannot_be_a_regression_target():
    with pytest.raises(ValueError, match="not numbers"):
        detect_task(pd.Series([True, False, True], name="flag"), "regression")


@pytest.mark.parametrize(("y", "setting", "expected"), [
    (pd.Series(range(50)), "classification", "multiclass"),
    (pd.Series([0.5, 1.5, 0.5, 1.5]), "classification", "binary"),
    (pd.Series([3, 7, 3]), "binary", "binary"),
    (pd.Series(["a", "b", "a"]), "multiclass", "multiclass"),
    (pd.Series([0, 1, 0, 1]), "regression", "regression"),
    (pd.Series(["1", "2", "1"]), "regression", "regression"),
])
def test_settings_override_the_detection(y, setting, expected):
    decision = detect_task(y, setting)
    assert decision.task == expected
    assert "set in the configuration" in decision.reason


def test_a_binary_setting_on_more_classes_fails_naming_the_count():
    with pytest.raises(ValueError, match=r"target 'y' is set as a binary target but has 50 "
                                         r"classes"):
        detect_task(pd.Series(range(50), name="y"), "binary")


def test_a_regression_setting_on_text_fails_naming_the_target():
    with pytest.raises(ValueError, match=r"target 'species' is set as a regression target "
                                         r"but holds values that are not numbers"):
        detect_task(pd.Series(["setosa", "virginica"], name="species"), "regression")


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 100, 200)
    predicted = truth + rng.normal(0, 5, 200)
    got = regression_metrics(truth, predicted)
    assert set(got) == set(tasks.REGRESSION_METRICS)
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(truth, predicted))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(truth, predicted))
    assert got["r2"] == pytest.approx(skm.r2_score(truth, predicted))
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(truth, predicted))
    assert all(isinstance(v, float) for v in got.values())


def test_regression_metrics_accept_pandas_inputs():
    truth, predicted = pd.Series([1.0, 2.0, 4.0]), pd.Series([1.0, 3.0, 2.0])
    got = regression_metrics(truth, predicted)
    assert got["mae"] == pytest.approx(1.0)
    assert got["rmse"] == pytest.approx(math.sqrt(5 / 3))


def test_mape_is_nan_when_a_true_value_is_zero():
    got = regression_metrics([0.0, 1.0, 2.0], [0.5, 1.0, 2.5])
    assert math.isnan(got["mape"])
    assert got["mae"] == pytest.approx(1 / 3)
    assert math.isfinite(got["rmse"]) and math.isfinite(got["r2"])


def test_perfect_predictions():
    got = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert got == {"rmse": 0.0, "mae": 0.0, "r2": 1.0, "mape": 0.0}


def test_every_metric_has_a_direction():
    for metric in (*tasks.REGRESSION_METRICS, *tasks.CLASSIFICATION_METRICS):
        assert tasks.DIRECTIONS[metric] in ("min", "max")
    assert tasks.DIRECTIONS["rmse"] == tasks.DIRECTIONS["mae"] == tasks.DIRECTIONS["mape"] \
        == "min"
    assert tasks.DIRECTIONS["r2"] == tasks.DIRECTIONS["f1_weighted"] == "max"


@pytest.mark.parametrize("metric", ["rmse", "mae", "mape"])
def test_better_for_a_lower_is_better_metric(metric):
    assert better(metric, 1.0, 3.0) == pytest.approx(2.0)
    assert better(metric, 3.0, 1.0) == pytest.approx(-2.0)
    assert better(metric, 2.0, 2.0) == 0.0


@pytest.mark.parametrize("metric", ["r2", "f1_weighted", "accuracy", "roc_auc"])
def test_better_for_a_higher_is_better_metric(metric):
    assert better(metric, 0.9, 0.8) == pytest.approx(0.1)
    assert better(metric, 0.8, 0.9) == pytest.approx(-0.1)


def test_an_unknown_metric_counts_higher_as_better():
    assert better("custom_score", 2.0, 1.0) == pytest.approx(1.0)


def test_defaults_by_task():
    assert tasks.default_metric("regression") == "rmse"
    assert tasks.default_metric("binary") == tasks.default_metric("multiclass") == "f1_weighted"
    assert tasks.default_cv_scoring("regression") == "neg_root_mean_squared_error"
    assert tasks.default_cv_scoring("multiclass") == "f1_weighted"


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown task 'regresion'; use one of auto, "
                                         "classification, binary, multiclass, regression"):
        detect_task(pd.Series([1.0, 2.0]), "regresion")
