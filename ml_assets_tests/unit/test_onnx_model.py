"""The compiled (ONNX) flavour of a served Pipeline: conversion, parity (identical labels,
probabilities and values within tolerance, on held-out rows plus missing-value and
unseen-category probes), refusals (unconvertible estimators, NaN-routing trees, graphs
that are not the platform's), the rows fast path, and the MLflow round trip."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import onnx
import palmerpenguins
import pandas as pd
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml_assets.core.artifacts.compilation import compile_version, read_compiled
from ml_assets.core.artifacts.onnx import runtime
from ml_assets.core.artifacts.onnx.columns import _served_dtypes
from ml_assets.core.artifacts.onnx.contract import (
    NAN_STRING,
    ONNX_ARTIFACT,
    CompiledModelError,
    ConversionError,
)
from ml_assets.core.artifacts.onnx.convert import compile_pipeline
from ml_assets.core.artifacts.onnx.gate import compile_and_check
from ml_assets.core.artifacts.onnx.graph_check import ALLOWED_OPS
from ml_assets.core.artifacts.onnx.parity import (
    PROBABILITY_TOLERANCE,
    RELATIVE_TOLERANCE,
    check_parity,
    rows_of,
)
from ml_assets.core.artifacts.onnx.runtime import TIE_TOLERANCE, CompiledModel, near_ties
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
from ml_assets.core.data.schema_inference import infer_schema
from ml_assets.core.data.schemas import breast_cancer_schema, feature_columns
from ml_assets.core.modeling import estimators
from ml_assets.core.modeling.pipeline import ModelParams, build_estimator, fit_final_pipeline
from ml_assets_tests.support import user_factory
from ml_assets_tests.support.models import (
    DIABETES_TARGET,
    TrainedPipeline,
    diabetes_frame,
    experiment_id,
    register,
    train_regression,
)

SPECIES = "species"


def _platform(frame: pd.DataFrame, schema, target: str, estimator) -> tuple[TrainedPipeline,
                                                                           str]:
    """The platform's served shape: its preprocessor (fitted on the training split) and
    `estimator`, as training builds it."""
    split = split_frame(frame, target, seed=42)
    kinds = feature_columns(schema, target)
    preprocessor = build_preprocessor(split.X_train, kinds, task=split.task).fit(
        split.X_train, split.y_train)
    pipeline = fit_final_pipeline(preprocessor, estimator, split.X_train, split.y_train)
    return TrainedPipeline(pipeline, split.X_train, split.X_test[list(kinds)], schema,
                           target), split.task


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    return load_breast_cancer_frame()


@pytest.fixture(scope="module")
def cancer_schema(cancer):
    return breast_cancer_schema([c for c in cancer.columns if c != BREAST_CANCER_TARGET])


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    frame = palmerpenguins.load_penguins()
    assert frame["sex"].isna().any() and frame["bill_length_mm"].isna().any()
    return frame


@pytest.fixture(scope="module")
def forest(cancer, cancer_schema):
    """RandomForest (40 trees) on breast cancer, compiled."""
    trained, task = _platform(cancer, cancer_schema, BREAST_CANCER_TARGET,
                              build_estimator(ModelParams(n_estimators=40)))
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test, task)
    assert data is not None, report.reason
    compiled = CompiledModel.from_bytes(data, list(trained.X_train.columns), task,
                                        trained.pipeline.classes_)
    return trained, data, report, compiled


@pytest.fixture(scope="module")
def penguin_forest(penguins):
    trained, task = _platform(penguins, infer_schema(penguins, SPECIES), SPECIES,
                              build_estimator(ModelParams(n_estimators=30)))
    assert task == "multiclass"
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test, task)
    assert data is not None, report.reason
    compiled = CompiledModel.from_bytes(data, list(trained.X_train.columns), task,
                                        trained.pipeline.classes_)
    return trained, data, report, compiled


def _labels_identical(trained: TrainedPipeline, compiled: CompiledModel) -> None:
    """Independently of check_parity: the served labels of every held-out row (argmax of
    the graph's probabilities; the Pipeline's own on near ties, as the service answers
    them) are the Pipeline's own predictions."""
    rows = rows_of(trained.X_test)
    proba = compiled.predict_proba(rows)
    expected_labels = trained.pipeline.predict(trained.X_test)
    labels = np.where(near_ties(proba), expected_labels,
                      np.asarray(trained.pipeline.classes_)[proba.argmax(axis=1)])
    assert (labels == expected_labels).all()
    expected = trained.pipeline.predict_proba(trained.X_test)
    assert np.abs(proba - expected).max() <= PROBABILITY_TOLERANCE


# --- parity on real models --------------------------------------------------------------

def test_random_forest_binary_has_identical_labels(forest):
    trained, data, report, compiled = forest
    assert report.passed and report.reason == ""
    assert report.rows == len(trained.X_test) and report.label_mismatches == 0
    # 30 features missing + every one missing, each on 3 rows.
    assert report.probe_rows == 31 * 3
    assert report.max_probability_diff is not None
    assert report.max_probability_diff <= PROBABILITY_TOLERANCE
    assert report.sha256 == hashlib.sha256(data).hexdigest() == compiled.sha256
    _labels_identical(trained, compiled)
    graph = onnx.load_from_string(data)
    assert [i.name for i in graph.graph.input] == list(trained.X_train.columns)
    assert {o.name for o in graph.graph.output} == {"label", "probabilities"}


@pytest.mark.parametrize("estimator", [
    GradientBoostingClassifier(n_estimators=30, random_state=0),
    LogisticRegression(max_iter=5000),
], ids=["gradient_boosting", "logistic_regression"])
def test_other_estimators_behind_the_platform_preprocessor(cancer, cancer_schema, estimator):
    trained, task = _platform(cancer, cancer_schema, BREAST_CANCER_TARGET, estimator)
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test, task)
    assert data is not None and report.passed, report.reason
    assert report.label_mismatches == 0 and report.probe_rows > 0
    _labels_identical(trained, CompiledModel.from_bytes(
        data, list(trained.X_train.columns), task, trained.pipeline.classes_))


def test_a_users_estimator_class_through_the_platform_preprocessor(cancer, cancer_schema):
    user = estimators.from_class("sklearn.linear_model:LogisticRegression",
                                 {"C": 0.5, "max_iter": 5000}, "binary")
    trained, task = _platform(cancer, cancer_schema, BREAST_CANCER_TARGET, user.fresh())
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test, task)
    assert data is not None and report.passed, report.reason
    # float64 end to end: nothing but rounding differs.
    assert report.max_probability_diff is not None and report.max_probability_diff < 1e-9


def test_penguins_multiclass_with_string_categoricals_and_missing_values(penguin_forest):
    trained, data, report, compiled = penguin_forest
    assert report.passed, report.reason
    assert compiled.kinds == ("string", "number", "number", "number", "number", "string",
                              "number")
    # 7 features missing, island and sex unseen, every one missing: 3 rows each.
    assert report.probe_rows == (7 + 2 + 1) * 3
    assert trained.X_train["sex"].isna().any()
    _labels_identical(trained, compiled)


def test_a_missing_category_is_imputed_as_in_training_on_both_runtimes(penguin_forest):
    """A training frame holds NaN for a missing category (imputed "__missing__"); a
    served row holds None, which serving hands the Pipeline as NaN too
    (frame_from_rows), and the graph feeds as NaN: both runtimes impute it. A frame's
    None (an unknown category to scikit-learn's NaN imputer) stays told apart on the
    frame path."""
    from serving.model.feature_specs import FeatureSpec, frame_from_rows

    trained, _, _, compiled = penguin_forest
    base = _served_dtypes(trained.X_test.head(20)).reset_index(drop=True)
    with_none = base.assign(sex=None, island=None)
    with_nan = base.assign(sex=np.nan, island=np.nan)
    pipeline = trained.pipeline
    none_sklearn = pipeline.predict_proba(with_none)
    nan_sklearn = pipeline.predict_proba(with_nan)
    assert np.abs(none_sklearn - nan_sklearn).max() > 0.05  # the two really differ
    rows = rows_of(with_none)
    assert rows[0][0] is None  # what the service's validated rows hold
    specs = tuple(FeatureSpec(c, "string" if k == "string" else "number", True)
                  for c, k in zip(base.columns, compiled.kinds, strict=True))
    served = pipeline.predict_proba(frame_from_rows(rows, specs))
    assert np.abs(served - nan_sklearn).max() < 1e-12  # serving imputes, as training did
    assert np.abs(compiled.predict_proba(rows) - nan_sklearn).max() < 1e-4
    assert np.abs(compiled.predict_proba_frame(with_none) - none_sklearn).max() < 1e-4
    assert np.abs(compiled.predict_proba_frame(with_nan) - nan_sklearn).max() < 1e-4


def test_regression_ridge_and_tree_regressors():
    models = {
        "ridge": train_regression(Ridge()),
        "gradient_boosting": train_regression(GradientBoostingRegressor(
            n_estimators=40, random_state=0)),
        "forest_with_imputer": train_regression(Pipeline([
            ("impute", SimpleImputer()),
            ("forest", RandomForestRegressor(n_estimators=20, random_state=0))])),
    }
    for name, trained in models.items():
        data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test,
                                         "regression")
        assert data is not None and report.passed, f"{name}: {report.reason}"
        assert report.max_relative_error is not None
        assert report.max_relative_error <= RELATIVE_TOLERANCE
        assert report.max_probability_diff is None and report.rows == len(trained.X_test)
        compiled = CompiledModel.from_bytes(data, list(trained.X_train.columns),
                                            "regression", None)
        values = compiled.predict_values(rows_of(trained.X_test))
        expected = trained.pipeline.predict(trained.X_test)
        assert values.shape == expected.shape and values.dtype == np.float64
        assert np.abs(values - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
        graph = onnx.load_from_string(data)
        assert [o.name for o in graph.graph.output] == ["variable"]
    # The imputer is honoured: a missing value is imputed, and probed.
    assert compile_and_check(models["forest_with_imputer"].pipeline,
                             models["forest_with_imputer"].X_train,
                             models["forest_with_imputer"].X_test,
                             "regression")[1].probe_rows == 11 * 3


def test_a_users_own_pipeline_owning_its_preprocessing(penguins):
    """A factory's whole Pipeline (its own ColumnTransformer), served as the one step
    `model`, on raw penguin columns with strings and missing values."""
    numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    own = Pipeline([
        ("columns", ColumnTransformer([
            ("numbers", Pipeline([("impute", SimpleImputer(strategy="mean")),
                                  ("scale", StandardScaler())]), numeric),
            ("words", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                ("one_hot", OneHotEncoder(handle_unknown="ignore"))]),
             ["island", "sex"]),
        ])),
        ("classifier", LogisticRegression(max_iter=2000)),
    ])
    split = split_frame(penguins, SPECIES, seed=3)
    X_train = split.X_train[numeric + ["island", "sex"]]
    pipeline = fit_final_pipeline(None, own, X_train, split.y_train)
    data, report = compile_and_check(pipeline, X_train, split.X_test, "multiclass")
    assert data is not None and report.passed, report.reason
    assert report.probe_rows == (6 + 2 + 1) * 3 and report.label_mismatches == 0


# --- refusals -----------------------------------------------------------------------------

def test_an_unconvertible_transformer_is_named_and_nothing_is_compiled():
    trained = train_regression(user_factory.make_model(), scale=False)
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test,
                                     "regression")
    assert data is None and not report.passed and not report.converted
    assert report.reason == ("skl2onnx has no converter for "
                             "ml_assets_tests.support.user_factory.ClipScaler")
    assert report.status == "not_converted"
    tags = report.as_tags()
    assert tags["onnx.parity"] == "not_converted"
    assert tags["onnx.parity.reason"] == report.reason and "onnx.sha256" not in tags
    with pytest.raises(ConversionError, match="ClipScaler"):
        compile_pipeline(trained.pipeline, trained.X_train, "regression")


def test_a_forest_routing_raw_nan_is_refused_unless_no_feature_can_be_missing():
    trained = train_regression()  # StandardScaler + RandomForestRegressor: no imputer
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test,
                                     "regression")
    assert data is None and report.status == "not_converted"
    assert "reaches RandomForestRegressor as NaN" in report.reason
    assert "imputer" in report.reason
    # A schema with no nullable feature: NaN never reaches it, so the graph is exact.
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test,
                                     "regression", missing=[])
    assert data is not None and report.passed and report.probe_rows == 0, report.reason


def test_a_classifier_without_probabilities_or_a_wrong_task_is_refused(forest):
    trained = forest[0]
    with pytest.raises(ConversionError, match="unknown task"):
        compile_pipeline(trained.pipeline, trained.X_train, "ranking")
    ridge = train_regression(Ridge())
    with pytest.raises(ConversionError, match="has no predict_proba"):
        compile_pipeline(ridge.pipeline, ridge.X_train, "binary")


# --- parity failures are detected -------------------------------------------------------

def test_a_tolerance_of_zero_fails_on_float32_tree_sums(forest):
    trained, _, _, compiled = forest
    report = check_parity(trained.pipeline, compiled, trained.X_test, "binary",
                          probability_tolerance=0.0)
    assert not report.passed and report.status == "failed"
    assert report.label_mismatches == 0 and report.max_probability_diff
    assert report.max_probability_diff > 0
    assert "have probabilities off by more than 0, up to" in report.reason
    assert report.as_tags()["onnx.parity"] == "failed"


def test_another_models_graph_fails_with_the_rows_named(cancer, cancer_schema, forest):
    trained, _, _, _ = forest
    other, task = _platform(cancer, cancer_schema, BREAST_CANCER_TARGET,
                            build_estimator(ModelParams(n_estimators=1, max_depth=1, seed=7)))
    impostor = CompiledModel.from_bytes(
        compile_pipeline(other.pipeline, other.X_train, task),
        list(other.X_train.columns), task, other.pipeline.classes_)
    report = check_parity(trained.pipeline, impostor, trained.X_test, task)
    assert not report.passed and report.label_mismatches > 0
    total = report.rows + report.probe_rows
    assert report.reason.startswith(f"{report.label_mismatches} of {total} labels differ (")
    assert "row " in report.reason


def test_a_regression_graph_that_differs_fails_with_figures():
    trained = train_regression(Ridge(alpha=1.0))
    other = train_regression(Ridge(alpha=30.0))
    impostor = CompiledModel.from_bytes(compile_pipeline(other.pipeline, other.X_train,
                                                         "regression"),
                                        list(other.X_train.columns), "regression", None)
    report = check_parity(trained.pipeline, impostor, trained.X_test, "regression")
    assert not report.passed and report.max_relative_error is not None
    assert report.max_relative_error > RELATIVE_TOLERANCE
    assert "values differ by more than 0.0001 relative" in report.reason
    assert "onnx " in report.reason and "sklearn " in report.reason


def test_non_finite_answers_fail(forest):
    trained, data, _, _ = forest

    class Overflowing(CompiledModel):
        def run(self, feed):
            out = super().run(feed)
            out[::7] = np.inf
            return out

    compiled = Overflowing.from_bytes(data, list(trained.X_train.columns), "binary",
                                      trained.pipeline.classes_)
    report = check_parity(trained.pipeline, compiled, trained.X_test, "binary")
    assert not report.passed
    assert "answers are not finite where the Pipeline's are (row 0, row 7" in report.reason


# --- the compiled model treats its file as untrusted ------------------------------------

def _tampered(data: bytes, change) -> bytes:
    model = onnx.load_from_string(data)
    change(model)
    return model.SerializeToString()


def test_graphs_that_are_not_the_platforms_are_refused(forest, monkeypatch):
    trained, data, _, _ = forest
    names = list(trained.X_train.columns)
    classes = trained.pipeline.classes_

    def custom_domain(model):
        model.graph.node[-1].domain = "com.microsoft"

    def external(model):
        tensor = model.graph.initializer[0]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "/etc/passwd"

    def function(model):
        model.functions.add().name = "hidden"

    cases = {
        "operator domain 'com.microsoft'": _tampered(data, custom_domain),
        "external data": _tampered(data, external),
        "local functions": _tampered(data, function),
        "not an ONNX model": b"\x00not a model" * 10,
    }
    for message, blob in cases.items():
        with pytest.raises(CompiledModelError, match=message):
            CompiledModel.from_bytes(blob, names, "binary", classes)
    with pytest.raises(CompiledModelError, match="are not the model's features"):
        CompiledModel.from_bytes(data, names[::-1], "binary", classes)
    with pytest.raises(CompiledModelError, match="are not the model's features"):
        CompiledModel.from_bytes(data, names[:-1], "binary", classes)
    with pytest.raises(CompiledModelError, match="no 'variable' output"):
        CompiledModel.from_bytes(data, names, "regression", None)
    with pytest.raises(CompiledModelError, match="for 3 classes|with shape"):
        CompiledModel.from_bytes(data, names, "binary", ["a", "b", "c"])
    monkeypatch.setattr("ml_assets.core.artifacts.onnx.runtime.MAX_BYTES", len(data) - 1)
    with pytest.raises(CompiledModelError, match="over the"):
        CompiledModel.from_bytes(data, names, "binary", classes)
    monkeypatch.undo()
    assert CompiledModel.from_bytes(data, names, "binary", classes).feature_names == tuple(
        names)


# --- the rows fast path -----------------------------------------------------------------

def test_rows_and_frames_give_the_same_inputs_and_answers(forest, penguin_forest):
    for trained, _, _, compiled in (forest, penguin_forest):
        frame = _served_dtypes(trained.X_test).reset_index(drop=True)
        for i, column in enumerate(frame.columns):  # a missing value in every column
            frame.loc[i, column] = np.nan  # serving's missing value for the Pipeline
        rows = rows_of(frame)  # the service's rows: None
        assert sum(v is None for row in rows for v in row) == len(frame.columns)
        from_rows, from_frame = compiled.inputs(rows), compiled.inputs_from_frame(frame)
        assert set(from_rows) == set(compiled.feature_names) == set(from_frame)
        for name, kind in zip(compiled.feature_names, compiled.kinds, strict=True):
            assert from_rows[name].shape == (len(rows), 1)
            assert from_rows[name].dtype == (np.float64 if kind == "number" else object)
            if kind == "number":
                np.testing.assert_array_equal(from_rows[name], from_frame[name])
            else:
                assert from_rows[name].tolist() == from_frame[name].tolist()
        np.testing.assert_array_equal(compiled.predict_proba(rows),
                                      compiled.predict_proba_frame(frame))
        one = compiled.predict_proba(rows[:1])
        np.testing.assert_array_equal(one, compiled.predict_proba(rows)[:1])
    penguin = penguin_forest[3]
    row = [None, 40.0, None, 190, 3800, None, 2008]
    assert penguin.inputs([row])["sex"].tolist() == [[NAN_STRING]]
    assert np.isnan(penguin.inputs([row])["bill_depth_mm"][0, 0])
    assert penguin.predict_proba([]).shape == (0, 3)


def test_a_feed_above_run_rows_runs_in_pieces_with_the_whole_runs_answers(
        forest, penguin_forest, monkeypatch):
    """`run` splits a feed of more than RUN_ROWS rows into pieces (numbers and strings,
    probabilities and a regressor's values) and joins their answers in order: the same
    array one whole session.run gives. A graph whose pieces do not join is a ValueError
    naming the rows; one whose joined pieces hold other rows than asked is still refused
    by the shape checks after the join."""
    ridge = train_regression(Ridge())
    data, report = compile_and_check(ridge.pipeline, ridge.X_train, ridge.X_test, "regression")
    assert data is not None, report.reason
    regressor = CompiledModel.from_bytes(data, list(ridge.X_train.columns), "regression", None)
    for frame, compiled in ((forest[0].X_test, forest[3]), (penguin_forest[0].X_test,
                                                           penguin_forest[3]),
                            (ridge.X_test, regressor)):
        frame = pd.concat([frame] * 3, ignore_index=True)
        feed = compiled.inputs_from_frame(frame)
        whole = compiled.session.run(compiled._output, feed)[0]
        assert len(whole) == len(frame)
        with monkeypatch.context() as patch:
            patch.setattr(runtime, "RUN_ROWS", 7)  # a piece count that leaves a rest
            calls: list[int] = []
            patch.setattr(compiled, "session", _Counting(compiled.session.run, calls))
            np.testing.assert_array_equal(compiled.run(feed), whole)
            assert calls == [min(7, len(frame) - s) for s in range(0, len(frame), 7)]
            patch.setattr(runtime, "RUN_ROWS", len(frame))  # at the limit: one run
            calls.clear()
            np.testing.assert_array_equal(compiled.run(feed), whole)
            assert calls == [len(frame)]
    trained, _, _, compiled = forest
    feed = compiled.inputs_from_frame(trained.X_test)
    monkeypatch.setattr(runtime, "RUN_ROWS", 7)
    monkeypatch.setattr(compiled, "session", _Counting(
        lambda names, piece: [np.float64(len(next(iter(piece.values()))))], []))
    with pytest.raises(ValueError, match=f"outputs for {len(trained.X_test)} rows"):
        compiled.run(feed)
    monkeypatch.setattr(compiled, "session", _Counting(  # one row per piece, whatever asked
        lambda names, piece: [np.array([[0.25, 0.75]], dtype=np.float32)], []))
    pieces = -(-len(trained.X_test) // 7)
    with pytest.raises(ValueError, match=rf"shape \({pieces}, 2\) for {len(trained.X_test)}"):
        compiled.predict_proba_frame(trained.X_test)


class _Counting:
    """A session stand-in: counts the rows of each run and answers with `run`'s."""

    def __init__(self, run, calls: list) -> None:
        self._run, self._calls = run, calls

    def run(self, names, feed):
        self._calls.append(len(next(iter(feed.values()))))
        return self._run(names, feed)


def test_concurrent_calls_give_the_sequential_answers(forest):
    trained, _, _, compiled = forest
    rows = rows_of(trained.X_test)
    expected = compiled.predict_proba(rows)
    results: list = [None] * 8

    def work(i: int) -> None:
        results[i] = [compiled.predict_proba(rows[j:j + 5]) for j in range(0, len(rows), 5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for chunks in results:
        np.testing.assert_array_equal(np.concatenate(chunks), expected)


def test_the_report_as_tags_and_metadata(forest):
    report = forest[2]
    tags = report.as_tags()
    assert tags["onnx.parity"] == "passed" and "onnx.parity.reason" not in tags
    assert tags["onnx.sha256"] == report.sha256 and len(report.sha256) == 64
    assert tags["onnx.runtime"] == "onnxruntime 1.31.1"
    assert tags["onnx.converter"] == "skl2onnx 1.20.0"
    assert tags["onnx.parity.rows"] == str(report.rows)
    assert tags["onnx.opset"].startswith("ai.onnx=")
    assert float(tags["onnx.parity.max_probability_diff"]) == pytest.approx(
        report.max_probability_diff, rel=1e-2)
    assert all(isinstance(v, str) for v in tags.values())
    assert set(report.as_tags(prefix="x.")) == {k.replace("onnx.", "x.", 1) for k in tags}
    metadata = report.as_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["parity"] == "passed" and metadata["rows"] == report.rows


# --- MLflow: log with the version, tag it, load it back ---------------------------------

def _download(name: str, version: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=tempfile.mkdtemp()))


def test_compile_version_and_read_compiled_round_trip(mlflow_store, unique_name, forest):
    """model.onnx travels with the version however it was registered: a logged model
    (its id given, or only in the version's source), or a run's path (runs:/)."""
    trained = forest[0]
    names, classes = list(trained.X_train.columns), list(trained.pipeline.classes_)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    client = MlflowClient()
    for how in ("model_id", "source", "runs"):
        if how != "runs":  # a logged model each: "source" must not find model_id's file
            version, info = register(trained, unique_name, experiment, alias=None,
                                     compile=False)
        else:  # the run's own (empty) model path
            version = client.create_model_version(unique_name, f"runs:/{info.run_id}/model",
                                                  info.run_id).version
        report = compile_version(client, unique_name, version,
                                 info.model_id if how == "model_id" else None, info.run_id,
                                 trained.pipeline, trained.X_train, trained.X_test, "binary")
        assert report.passed, f"{how}: {report.reason}"
        tags = client.get_model_version(unique_name, version).tags
        assert {k: v for k, v in tags.items() if k.startswith("onnx.")} == report.as_tags()
        directory = _download(unique_name, version)
        assert (directory / ONNX_ARTIFACT).is_file(), how
        assert (directory / "MLmodel").is_file() == (how != "runs")
        assert hashlib.sha256((directory / ONNX_ARTIFACT).read_bytes()).hexdigest() == tags[
            "onnx.sha256"]
        compiled, reason = read_compiled(directory, tags, names, "binary", classes)
        assert reason == "" and compiled is not None
        np.testing.assert_array_equal(compiled.predict_proba(rows_of(trained.X_test)),
                                      forest[3].predict_proba(rows_of(trained.X_test)))
        # The run's metrics are the model's as the service shows them: left alone.
        assert not any(k.startswith("onnx") for k in client.get_run(info.run_id).data.metrics)
    # What the loader refuses, and why.
    altered = {**tags, "onnx.sha256": "0" * 64}
    assert read_compiled(directory, altered, names, "binary", classes) == (
        None, "model.onnx sha256 differs from the version's onnx.sha256 tag")
    failed = {**tags, "onnx.parity": "failed", "onnx.parity.reason": "2 of 9 labels differ"}
    assert read_compiled(directory, failed, names, "binary", classes) == (
        None, "parity failed: 2 of 9 labels differ")
    elsewhere = {**tags, "onnx.runtime": "onnxruntime 1.0.0"}
    assert "checked on onnxruntime 1.0.0" in read_compiled(directory, elsewhere, names,
                                                           "binary", classes)[1]
    compiled, reason = read_compiled(directory, tags, names[::-1], "binary", classes)
    assert compiled is None and reason.startswith("model.onnx refused: the graph's inputs")
    (directory / ONNX_ARTIFACT).unlink()
    assert read_compiled(directory, tags, names, "binary", classes) == (
        None, "model.onnx is missing from the version's artifacts")


def test_compile_version_of_an_unconvertible_model(mlflow_store, unique_name, monkeypatch):
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", user_factory.TRUSTED)
    trained = train_regression(user_factory.make_model(), scale=False)
    experiment = experiment_id(unique_name, mlflow_store["artifact_root"])
    version, info = register(trained, unique_name, experiment, alias=None, compile=False)
    client = MlflowClient()
    report = compile_version(client, unique_name, version, info.model_id, info.run_id,
                             trained.pipeline, trained.X_train, trained.X_test, "regression")
    assert report.status == "not_converted"
    tags = client.get_model_version(unique_name, version).tags
    assert tags["onnx.parity"] == "not_converted" and "onnx.sha256" not in tags
    directory = _download(unique_name, version)
    assert not (directory / ONNX_ARTIFACT).exists()
    compiled, reason = read_compiled(directory, tags, list(trained.X_train.columns),
                                     "regression", None)
    assert compiled is None
    assert reason == ("no compiled graph: skl2onnx has no converter for "
                      "ml_assets_tests.support.user_factory.ClipScaler")
    assert read_compiled(directory, {}, [], "regression", None)[1] == (
        "no compiled graph: the version has no onnx.parity tag")


# --- near ties are the Pipeline's to answer ---------------------------------------------

def test_near_ties_flags_rows_whose_top_two_are_within_the_tolerance():
    two = np.array([[0.499996, 0.500004], [0.5, 0.5], [0.4, 0.6], [0.50000006, 0.49999997]])
    assert near_ties(two).tolist() == [True, True, False, True]
    assert near_ties(two, tolerance=1e-7).tolist() == [False, True, False, True]
    three = np.array([[0.2, 0.399996, 0.400004], [0.2, 0.3, 0.5], [0.45, 0.1, 0.45]])
    assert near_ties(three).tolist() == [True, False, True]
    assert near_ties(np.ones((3, 1))).tolist() == [False] * 3  # one class: never a tie
    assert near_ties(np.empty((0, 2))).shape == (0,)


def test_a_real_near_tie_keeps_the_graphs_probabilities_and_the_pipelines_label():
    """sklearn [0.499996, 0.500004] is class 1; snapping both to the max made the
    graph's argmax class 0."""
    X = pd.DataFrame({"x": [-1.0, 1.0, -2.0, 2.0]})
    model = Pipeline([("model", LogisticRegression())]).fit(X, [0, 1, 0, 1])
    model[-1].coef_ = np.array([[1.0]])
    model[-1].intercept_ = np.array([0.0])
    row = pd.DataFrame({"x": [1.6e-5, 0.5]})
    expected = model.predict_proba(row)
    assert 0 < expected[0, 1] - expected[0, 0] < TIE_TOLERANCE
    assert model.predict(row).tolist() == [1, 1]
    compiled = CompiledModel.from_bytes(compile_pipeline(model, X, "binary"), ["x"],
                                        "binary", model.classes_)
    got = compiled.predict_proba(rows_of(row))
    assert np.abs(got - expected).max() < 1e-12  # as the graph computes them
    assert got.argmax(axis=1).tolist() == [1, 1]
    assert near_ties(got).tolist() == [True, False]
    report = check_parity(model, compiled, row, "binary")
    assert report.passed and report.pipeline_rows >= 1, report.reason


def test_exact_ties_of_an_even_forest_pass_parity_as_pipeline_rows(cancer, cancer_schema):
    trained, task = _platform(cancer, cancer_schema, BREAST_CANCER_TARGET,
                              RandomForestClassifier(n_estimators=4, random_state=0))
    expected = trained.pipeline.predict_proba(trained.X_test)
    assert (expected[:, 0] == expected[:, 1]).any()  # exact 0.5 / 0.5 on held-out rows
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test, task)
    assert data is not None and report.passed, report.reason
    assert report.pipeline_rows >= (expected[:, 0] == expected[:, 1]).sum() >= 1
    assert report.label_mismatches == 0
    assert report.as_tags()["onnx.parity.pipeline_rows"] == str(report.pipeline_rows)
    assert report.as_metadata()["pipeline_rows"] == report.pipeline_rows
    compiled = CompiledModel.from_bytes(data, list(trained.X_train.columns), task,
                                        trained.pipeline.classes_)
    got = compiled.predict_proba(rows_of(trained.X_test))
    served = ~near_ties(got)  # the rows the graph answers: the Pipeline's labels
    assert (np.asarray(trained.pipeline.classes_)[got.argmax(axis=1)][served]
            == trained.pipeline.predict(trained.X_test)[served]).all()


# --- float64 estimators are not compiled to float32 -------------------------------------
# (HistGradientBoosting is compiled in float64: test_onnx_boosters.py)

def test_a_double_graph_onnxruntime_refuses_is_not_retried_in_float32(monkeypatch):
    trained = train_regression(Ridge())
    monkeypatch.setattr("ml_assets.core.artifacts.onnx.convert._runs",
                        lambda model: "no kernel for MatMul(double)")
    with pytest.raises(ConversionError, match="cannot run the float64 graph of Ridge.*"
                                              "no kernel for MatMul"):
        compile_pipeline(trained.pipeline, trained.X_train, "regression")


# --- the regression bound is relative to the target's scale -----------------------------

def test_a_ten_percent_error_on_a_tiny_target_is_detected(monkeypatch):
    frame = diabetes_frame()
    frame[DIABETES_TARGET] = frame[DIABETES_TARGET] * 1e-6  # values around 1.5e-4
    trained = train_regression(Ridge(), frame=frame)
    data, report = compile_and_check(trained.pipeline, trained.X_train, trained.X_test,
                                     "regression")
    assert data is not None and report.passed, report.reason
    scale = float(np.std(trained.pipeline.predict(trained.X_test)))
    assert report.relative_scale == pytest.approx(scale)
    assert report.as_tags()["onnx.parity.relative_scale"] == f"{scale:.6g}"
    compiled = CompiledModel.from_bytes(data, list(trained.X_train.columns), "regression",
                                        None)
    honest = CompiledModel.predict_values
    monkeypatch.setattr(CompiledModel, "predict_values",
                        lambda self, rows: honest(self, rows) * 1.1)
    report = check_parity(trained.pipeline, compiled, trained.X_test, "regression")
    assert not report.passed and report.max_relative_error is not None
    assert report.max_relative_error > 0.05
    assert "relative to max(|sklearn|, " in report.reason


# --- a hostile graph is refused before it runs ------------------------------------------

def _hostile(nodes, initializers=(), outputs=None) -> bytes:
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
        outputs or [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                  [None, 2])],
        initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()


def _refused_quickly(blob: bytes, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CompiledModelError, match=match):
        CompiledModel.from_bytes(blob, ["x"], "binary", [0, 1])
    assert time.perf_counter() - start < 1.0


def test_a_loop_with_a_huge_trip_count_is_refused_unrun():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [2**62])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    blob = _hostile([helper.make_node("Loop", ["trip", "cond"], [], body=body),
                     helper.make_node("Identity", ["x"], ["probabilities"])], [trip, cond])
    _refused_quickly(blob, "'Loop' operator")


def test_constant_of_shape_two_to_the_forty_is_refused_unrun():
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [2**40])
    blob = _hostile([helper.make_node("ConstantOfShape", ["shape"], ["probabilities"])],
                    [shape])
    _refused_quickly(blob, "'ConstantOfShape' operator")


def test_a_subgraph_attribute_on_an_allowed_operator_is_refused():
    body = helper.make_graph([], "hidden", [], [])
    node = helper.make_node("Identity", ["x"], ["probabilities"])
    node.attribute.append(helper.make_attribute("payload", body))
    _refused_quickly(_hostile([node]), "subgraph attribute 'payload'")


def test_absurd_or_external_constants_are_refused(monkeypatch):
    identity = [helper.make_node("Identity", ["x"], ["probabilities"])]
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[2**40])
    _refused_quickly(_hostile(identity, [huge]), "dimensions \\[1099511627776\\], over")
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2**40, 1])
    _refused_quickly(_hostile([helper.make_node("Reshape", ["x", "shape"], ["probabilities"])],
                              [shape]), "Reshape's shape has a dimension over")
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    values.data_location = TensorProto.EXTERNAL
    entry = values.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [1],
                                                                  [0]), [4])
    node = helper.make_node("Identity", ["x"], ["probabilities"])
    node.attribute.append(helper.make_attribute("s", sparse))
    _refused_quickly(_hostile([node]), "external data")
    weights = helper.make_tensor("w", TensorProto.DOUBLE, [64], [0.0] * 64)
    monkeypatch.setattr("ml_assets.core.artifacts.onnx.graph_check.MAX_INITIALIZER_BYTES", 100)
    _refused_quickly(_hostile(identity, [weights]), "constant tensors are over")


def test_every_graph_the_platform_compiles_uses_only_allowed_operators(forest,
                                                                      penguin_forest):
    for data in (forest[1], penguin_forest[1]):
        ops = {(n.domain, n.op_type) for n in onnx.load_from_string(data).graph.node}
        assert ops <= ALLOWED_OPS
