"""Gradient-boosted trees compiled: LightGBM and XGBoost (onnxmltools' converters
registered with skl2onnx) and HistGradientBoosting (a double-threshold TreeEnsemble),
each behind the platform's preprocessor, classifier and regressor, binary and
multiclass, numeric and categorical inputs. The same parity gate decides every one:
held-out labels identical, probabilities and values within its tolerances, on held-out
rows plus missing-value and unseen-category probes."""

from __future__ import annotations

import lightgbm
import numpy as np
import onnx
import palmerpenguins
import pandas as pd
import pytest
import xgboost
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder
from threadpoolctl import threadpool_limits

from ml_assets.core.artifacts.onnx.gate import compile_and_check
from ml_assets.core.artifacts.onnx.graph_check import ALLOWED_OPS
from ml_assets.core.artifacts.onnx.parity import (
    PROBABILITY_TOLERANCE,
    RELATIVE_TOLERANCE,
    rows_of,
)
from ml_assets.core.artifacts.onnx.runtime import CompiledModel, near_ties
from ml_assets.core.modeling.labels import EncodedLabelsClassifier, encode_labels_for
from ml_assets_tests.support.families import DATASETS, FAMILIES, TASKS, TREES, train_family
from ml_assets_tests.support.user_steps import CenterScale

CLASSIFIERS = {family: lambda family=family: FAMILIES[family]("binary")
               for family in ("lightgbm", "xgboost", "hist_gradient_boosting")}
REGRESSORS = {family: lambda family=family: FAMILIES[family]("regression")
              for family in ("lightgbm", "xgboost", "hist_gradient_boosting")}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """HistGradientBoosting's OpenMP threads on a shared 2-core machine are slower than
    one: the data here is a few hundred rows."""
    with threadpool_limits(1):
        yield


def _diabetes():
    return DATASETS["diabetes"]()


def _platform(dataset: str, estimator):
    """The platform's served shape, as training builds it (labels encoded where the
    estimator needs numbers): (pipeline, X_train, X_test, task)."""
    trained = train_family("", dataset, estimator)
    return trained.pipeline, trained.X_train, trained.X_test, TASKS[dataset]


def _compiled(pipeline, X_train, X_test, task):
    data, report = compile_and_check(pipeline, X_train, X_test, task)
    assert data is not None and report.passed, report.reason
    assert report.probe_rows > 0  # missing values and unseen categories were compared
    ops = {(n.domain, n.op_type) for n in onnx.load_from_string(data).graph.node}
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    classes = [] if task == "regression" else list(pipeline.classes_)
    return CompiledModel.from_bytes(data, list(X_train.columns), task, classes), report


@pytest.mark.parametrize("dataset", ["cancer", "penguins"])
@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_classifiers_compile_with_identical_labels(family, dataset):
    pipeline, X_train, X_test, task = _platform(dataset, CLASSIFIERS[family]())
    assert task == ("binary" if dataset == "cancer" else "multiclass")
    compiled, report = _compiled(pipeline, X_train, X_test, task)
    assert report.label_mismatches == 0
    assert report.max_probability_diff <= PROBABILITY_TOLERANCE
    # Independently of the gate: the served labels are the Pipeline's own.
    proba = compiled.predict_proba(rows_of(X_test))
    expected = pipeline.predict(X_test)
    served = np.where(near_ties(proba), expected,
                      np.asarray(pipeline.classes_)[proba.argmax(axis=1)])
    assert (served == expected).all()
    assert np.abs(proba - pipeline.predict_proba(X_test)).max() <= PROBABILITY_TOLERANCE
    assert [str(c) for c in compiled.classes] == [str(c) for c in pipeline.classes_]
    if family == "hist_gradient_boosting":  # float64 throughout: exact but for sum order
        assert report.max_probability_diff < 1e-12


@pytest.mark.parametrize("dataset", ["diabetes", "penguin_mass"])
@pytest.mark.parametrize("family", sorted(REGRESSORS))
def test_regressors_compile_within_the_relative_tolerance(family, dataset):
    pipeline, X_train, X_test, task = _platform(dataset, REGRESSORS[family]())
    assert task == "regression"
    compiled, report = _compiled(pipeline, X_train, X_test, task)
    assert report.max_relative_error <= RELATIVE_TOLERANCE
    got = compiled.predict_values(rows_of(X_test))
    expected = pipeline.predict(X_test)
    assert np.abs(got - expected).max() <= RELATIVE_TOLERANCE * max(
        float(np.std(expected)), float(np.abs(expected).max()))
    if family == "hist_gradient_boosting":
        assert report.max_relative_error < 1e-12


def test_xgboost_on_string_labels_is_served_with_the_labels():
    """XGBoost needs classes 0..n-1: the platform encodes the species and the compiled
    graph answers in the species' order."""
    pipeline, X_train, X_test, task = _platform("penguins", CLASSIFIERS["xgboost"]())
    model = pipeline.named_steps["model"]
    assert isinstance(model, EncodedLabelsClassifier)
    assert list(pipeline.classes_) == ["Adelie", "Chinstrap", "Gentoo"]
    assert set(pipeline.predict(X_test)) <= set(pipeline.classes_)
    compiled, _ = _compiled(pipeline, X_train, X_test, task)
    assert compiled.classes == ["Adelie", "Chinstrap", "Gentoo"]
    # labels already 0..n-1 are left alone
    assert not isinstance(encode_labels_for(xgboost.XGBClassifier(), [0, 1, 2, 1]),
                          EncodedLabelsClassifier)
    assert isinstance(encode_labels_for(xgboost.XGBClassifier(), [1, 2]),
                      EncodedLabelsClassifier)
    assert not isinstance(encode_labels_for(lightgbm.LGBMClassifier(), ["a", "b"]),
                          EncodedLabelsClassifier)


def test_hist_gradient_boosting_splits_values_float32_cannot_tell_apart():
    """Two values 1e-12 apart (the same float32) go to different leaves in
    scikit-learn; a float32 graph would send both one way. The double TreeEnsemble
    keeps them apart."""
    rng = np.random.default_rng(0)
    low, high = 1.0, 1.0 + 1e-12
    assert np.float32(low) == np.float32(high)
    x = np.where(rng.random(400) < 0.5, low, high)
    frame = pd.DataFrame({"x": x, "noise": rng.normal(size=400)})
    y = np.where(x > low, "up", "down")
    pipeline = Pipeline([("model", HistGradientBoostingClassifier(
        max_iter=5, random_state=0))]).fit(frame, y)
    held = pd.DataFrame({"x": [low, high, low, high], "noise": [0.0, 0.0, 1.0, -1.0]})
    assert list(pipeline.predict(held)) == ["down", "up", "down", "up"]
    compiled, report = _compiled(pipeline, frame, held, "binary")
    proba = compiled.predict_proba(rows_of(held))
    assert list(np.asarray(compiled.classes)[proba.argmax(axis=1)]) == ["down", "up", "down",
                                                                         "up"]
    assert report.max_probability_diff < 1e-12


def test_hist_gradient_boosting_routes_missing_values_as_scikit_learn_does():
    """No imputer: NaN reaches HistGradientBoosting, which sends it to each node's
    learned side; the graph keeps that side (the gate's missing-value probes compare
    it), where a forest's NaN is refused (test_onnx_model)."""
    frame = palmerpenguins.load_penguins()
    numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    X, y = frame[numeric], frame["species"]
    assert X.isna().any().all()
    pipeline = Pipeline([("model", HistGradientBoostingClassifier(
        max_iter=TREES, random_state=0))]).fit(X.iloc[:250], y.iloc[:250])
    compiled, report = _compiled(pipeline, X.iloc[:250], X.iloc[250:], "multiclass")
    missing = X.iloc[250:].copy()
    missing.iloc[::2, 0] = np.nan
    proba = compiled.predict_proba(rows_of(missing))
    assert np.abs(proba - pipeline.predict_proba(missing)).max() < 1e-12


def test_categorical_splits_of_hist_gradient_boosting_are_refused_with_the_reason():
    frame = palmerpenguins.load_penguins().dropna()
    X = frame[["island", "bill_length_mm"]]
    encode = ColumnTransformer([("island", OrdinalEncoder(), ["island"])],
                               remainder="passthrough")
    pipeline = Pipeline([("encode", encode), ("model", HistGradientBoostingClassifier(
        max_iter=3, categorical_features=[0], random_state=0))]).fit(X, frame["species"])
    assert any(p.nodes["is_categorical"].any()
               for row in pipeline.named_steps["model"]._predictors for p in row)
    data, report = compile_and_check(pipeline, X, X.head(20), "multiclass")
    assert data is None and report.status == "not_converted"
    assert "categorical splits" in report.reason and "served by scikit-learn" in report.reason


# --- a user's own step, with the converter its author registers --------------------------

class Ratio(TransformerMixin, BaseEstimator):
    """A user's step: each column divided by its training mean (x / mean_)."""

    def fit(self, X, y=None):
        self.mean_ = np.asarray(X, dtype=np.float64).mean(axis=0)
        return self

    def transform(self, X):
        return np.asarray(X, dtype=np.float64) / self.mean_


def _ratio_shape(operator):
    kind = type(operator.inputs[0].type)
    operator.outputs[0].type = kind([operator.inputs[0].get_first_dimension(),
                                     len(operator.raw_operator.mean_)])


def _ratio_converter(scope, operator, container):
    mean = scope.get_unique_variable_name("mean")
    container.add_initializer(mean, onnx.TensorProto.DOUBLE,
                              [1, len(operator.raw_operator.mean_)],
                              operator.raw_operator.mean_.tolist())
    container.add_node("Div", [operator.inputs[0].full_name, mean],
                       [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Div"))


def test_a_users_step_compiles_once_its_converter_is_registered():
    """docs/serving.md "Your own step": without a converter the step is named and served
    by scikit-learn; registered with skl2onnx, the whole Pipeline compiles and the
    parity gate decides as for every other model."""
    from skl2onnx import update_registered_converter

    frame, schema, target = _diabetes()
    X, y = frame.drop(columns=target), frame[target]
    model = REGRESSORS["hist_gradient_boosting"]()  # NaN reaching it keeps its routing
    pipeline = Pipeline([("ratio", Ratio()), ("model", model)]).fit(X.iloc[:350],
                                                                    y.iloc[:350])
    data, report = compile_and_check(pipeline, X.iloc[:350], X.iloc[350:], "regression")
    assert data is None
    assert report.reason == f"skl2onnx has no converter for {Ratio.__module__}.Ratio"
    update_registered_converter(Ratio, "UserRatio", _ratio_shape, _ratio_converter)
    compiled, report = _compiled(pipeline, X.iloc[:350], X.iloc[350:], "regression")
    assert report.max_relative_error <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_a_pipeline_with_a_users_registered_step_compiles_for_every_task(dataset):
    """The user's own step (ml_assets_tests/support/user_steps.py, its converter and
    shape calculator registered on import) inside the user's Pipeline, behind the
    platform's preprocessor: binary, multiclass and regression, numeric and categorical
    inputs with missing values; the gate's labels identical and values within its
    tolerances, independently checked here."""
    trained = train_family("user_step", dataset)
    pipeline, task = trained.pipeline, TASKS[dataset]
    assert any(isinstance(step, CenterScale) for step in _all_steps(pipeline))
    compiled, report = _compiled(pipeline, trained.X_train, trained.X_test, task)
    if task == "regression":
        got = compiled.predict_values(rows_of(trained.X_test))
        expected = pipeline.predict(trained.X_test)
        assert report.max_relative_error <= RELATIVE_TOLERANCE
        assert np.abs(got - expected).max() <= RELATIVE_TOLERANCE * float(np.std(expected))
        return
    proba = compiled.predict_proba(rows_of(trained.X_test))
    assert report.label_mismatches == 0
    assert np.abs(proba - pipeline.predict_proba(trained.X_test)).max() <= PROBABILITY_TOLERANCE
    assert (np.asarray(pipeline.classes_)[proba.argmax(axis=1)]
            == pipeline.predict(trained.X_test)).all()


def _all_steps(pipeline) -> list:
    steps = []
    for _, step in getattr(pipeline, "steps", []):
        steps += [step, *_all_steps(step)]
    return steps
