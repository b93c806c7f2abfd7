"""CatBoost without a wrapper of the user's: trained behind the platform's preprocessing
or on raw columns with its own categorical handling, stored as its JSON export that is
checked before CatBoost parses it, and compiled through CatBoost's own ONNX export.
Crafted files (built here from real fitted models, never stored) are refused by the
loader naming the check, in bounded time; legitimate ones load and predict as before."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier, CatBoostRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml_assets.core.artifacts.catboost_checks import ModelCheckError, check_catboost_model
from ml_assets.core.artifacts.loading import FEATURE_SCHEMA_KEY, InvalidModelError, load_pipeline
from ml_assets.core.artifacts.onnx.gate import compile_and_check
from ml_assets.core.artifacts.saving import check_trusted
from ml_assets.core.data.schemas import model_signature, schema_yaml
from ml_assets.core.modeling.catboost_model import CatBoostModel, wrap_catboost
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
from ml_assets.core.modeling.run_params import run_params
from ml_assets_tests.support.crafted_catboost import edit_model_json, edit_skops, holder_state
from ml_assets_tests.support.models import (
    TrainedPipeline,
    diabetes_frame,
    train_breast_cancer,
)

SECONDS = 5.0
HOLDER = "ml_assets.core.modeling.catboost_model.CatBoostModel"


def _small(cls=CatBoostClassifier, **params):
    return cls(iterations=params.pop("iterations", 12), depth=params.pop("depth", 3),
               thread_count=1, **params)


@pytest.fixture(scope="module")
def cancer() -> TrainedPipeline:
    return train_breast_cancer(n_estimators=3, seed=3)


@pytest.fixture(scope="module")
def fitted(cancer) -> Pipeline:
    """CatBoost behind the platform's preprocessing, on string labels."""
    labels = cancer.pipeline.predict(cancer.X_train)
    assert labels.dtype == object  # 'benign' / 'malignant'
    preprocess = cancer.pipeline.named_steps["preprocess"]
    return Pipeline([("preprocess", preprocess), ("model", CatBoostModel(_small()).fit(
        preprocess.transform(cancer.X_train), labels))])


def _save(path: Path, pipeline: Pipeline, cancer: TrainedPipeline) -> Path:
    metadata = {FEATURE_SCHEMA_KEY: schema_yaml(cancer.schema), "target": cancer.target,
                "classes": [str(c) for c in pipeline.classes_]}
    signature = model_signature(cancer.schema, cancer.target,
                                pipeline.predict(cancer.X_train.head(5)))
    mlflow.sklearn.save_model(pipeline, str(path), serialization_format="skops",
                              skops_trusted_types=SKOPS_TRUSTED_TYPES, metadata=metadata,
                              signature=signature, pip_requirements=["scikit-learn"])
    return path


def refused(model_dir: Path) -> InvalidModelError:
    started = time.perf_counter()
    with pytest.raises(InvalidModelError) as caught:
        load_pipeline(str(model_dir), source="version 9")
    assert time.perf_counter() - started < SECONDS
    assert str(caught.value).startswith("refused to open version 9: ")
    return caught.value


# -- legitimate models ----------------------------------------------------------------------

def test_catboost_needs_only_the_platforms_holder_and_loads_back(fitted, cancer, tmp_path):
    needed = check_trusted(fitted)
    assert HOLDER in needed and not [t for t in needed if "catboost" in t.lower() and t != HOLDER]
    loaded = load_pipeline(str(_save(tmp_path / "m", fitted, cancer)), source="m")
    assert list(loaded.pipeline.classes_) == ["benign", "malignant"]
    assert np.array_equal(loaded.pipeline.predict_proba(cancer.X_test),
                          fitted.predict_proba(cancer.X_test))
    assert list(loaded.pipeline.predict(cancer.X_test)) == list(fitted.predict(cancer.X_test))


def test_multiclass_and_regression_exports_pass_the_check():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    classifier = CatBoostModel(_small()).fit(X, y)
    assert check_catboost_model(classifier.model_json_, "m", 4, 3)
    assert classifier.predict_proba(X).shape == (300, 3)
    diabetes = diabetes_frame()
    regressor = CatBoostModel(_small(CatBoostRegressor)).fit(
        diabetes.drop(columns="progression").to_numpy(), diabetes["progression"])
    assert check_catboost_model(regressor.model_json_, "m", 10, None)
    assert not hasattr(regressor, "predict_proba") and not hasattr(regressor, "classes_")


def test_native_categorical_columns_with_missing_values(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    frame = pd.DataFrame({"amount": rng.normal(size=n),
                          "colour": rng.choice(["red", "green", "blue", None], n),
                          "size": rng.choice(["S", "M", "L", "XL", "XXL"], n)})
    y = np.where((frame["colour"] == "red") ^ (frame["amount"] > 0), "yes", "no")
    model = CatBoostModel(_small(iterations=30, depth=4)).fit(frame, y)
    assert model.cat_features_ == ["colour", "size"]  # found, not configured
    assert model.params_["one_hot_max_size"] == 255
    splits = [s["split_type"] for t in json.loads(model.model_json_)["oblivious_trees"]
              for s in t["splits"]]
    assert "OneHotFeature" in splits
    assert (model.predict(frame) == y).mean() > 0.95
    unseen = frame.head(3).assign(colour=["purple", None, "red"])
    assert model.predict_proba(unseen).shape == (3, 2)
    import skops.io

    again = skops.io.loads(skops.io.dumps(model), trusted=[HOLDER])
    assert np.array_equal(again.predict_proba(frame), model.predict_proba(frame))


def test_cat_features_on_the_preprocessed_matrix_says_what_to_set():
    with pytest.raises(ValueError, match="set ML_MODEL_PREPROCESSING=own"):
        CatBoostModel(_small(cat_features=["colour"])).fit(np.zeros((4, 2)), [0, 1, 0, 1])


def test_a_model_with_ctr_features_is_refused_at_training():
    """CTR features are not checked, so they are not stored: refused when trained."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"city": rng.choice([f"c{i}" for i in range(30)], 300)})
    y = np.where(frame["city"].isin(["c1", "c2", "c3"]), "a", "b")
    with pytest.raises(ModelCheckError, match="CTR features") as caught:
        CatBoostModel(_small(one_hot_max_size=2)).fit(frame, y)
    assert caught.value.check == "catboost.kind"


def test_effective_params_include_catboosts_defaults(fitted):
    params = run_params({"model_type": "random_forest", "cv_folds": 5}, fitted, True, {})
    assert params["iterations"] == "12" and params["depth"] == "3"
    assert params["border_count"] == "254"  # CatBoost's own default, logged
    assert params["allow_writing_files"] == "False"  # the platform's quiet default
    assert "model_type" not in params and params["cv_folds"] == 5


def test_wrap_catboost_holds_the_estimator_of_a_pipeline_too():
    pipeline = Pipeline([("scale", StandardScaler()), ("model", _small())])
    wrapped = wrap_catboost(pipeline)
    assert isinstance(wrapped.steps[-1][1], CatBoostModel)
    assert wrap_catboost(StandardScaler()).__class__ is StandardScaler


# -- crafted JSON exports -------------------------------------------------------------------

CONTROL = textwrap.dedent("""
    import sys, numpy as np
    from catboost import CatBoostClassifier
    model = CatBoostClassifier()
    model.load_model(sys.argv[1], format="json")
    print("loaded", flush=True)
    model.predict_proba(np.zeros((2, int(sys.argv[2]))))
    print("predicted", flush=True)
""")


def test_control_an_unchecked_deep_tree_crashes_catboost(fitted, tmp_path):
    """Without the check (CatBoost alone, in a subprocess), a tree made 40 deep loads and
    the first prediction kills the process: what the check prevents."""
    model = fitted.named_steps["model"]
    document = json.loads(model.model_json_)
    tree = document["oblivious_trees"][0]
    tree["splits"] = tree["splits"] * 14  # depth 42, its 8 leaf values unchanged
    (tmp_path / "deep.json").write_text(json.dumps(document))
    done = subprocess.run([sys.executable, "-c", CONTROL, str(tmp_path / "deep.json"),
                           str(model.n_features_in_)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert "loaded" in done.stdout and "predicted" not in done.stdout
    assert done.returncode == -11, (done.returncode, done.stderr[-500:])  # SIGSEGV
    with pytest.raises(ModelCheckError, match="its depth 42 is over CatBoost's 16") as caught:
        check_catboost_model(json.dumps(document), "m", model.n_features_in_, 2)
    assert caught.value.check == "catboost.splits"


def _trees(document):
    return document["oblivious_trees"]


def _deep(document):
    tree = _trees(document)[0]
    tree["splits"] = tree["splits"] * 20  # depth 60: 2**60 leaves if anyone believed it


def _nan_leaf(document):
    _trees(document)[1]["leaf_values"][0] = float("nan")


def _ctr(document):
    document["ctr_data"] = {"x": {"hash_map": [1, 2], "hash_stride": 2}}


def _one_class(document):
    document["model_info"]["class_params"]["class_names"] = [0, 1, 2]


def _drop_feature(document):
    document["features_info"]["float_features"].pop()


def _duplicate_flat_index(document):
    features = document["features_info"]["float_features"]
    features[1]["flat_feature_index"] = features[0]["flat_feature_index"]


def _split(document, key, value):
    _trees(document)[2]["splits"][0][key] = value


@pytest.mark.parametrize(("edit", "check", "words"), [
    (lambda d: _split(d, "float_feature_index", 4000), "catboost.splits",
     r"split 0 of tree 2 of CatBoostModel: it splits float feature 4000, outside 0\.\.19"),
    (lambda d: _trees(d)[0]["leaf_values"].pop(), "catboost.leaves",
     r"tree 0 of CatBoostModel: it has 7 leaf values, not 8"),
    (_deep, "catboost.splits", r"tree 0 of CatBoostModel: its depth 60 is over CatBoost's 16"),
    (_nan_leaf, "catboost.values", r"tree 1 of CatBoostModel: leaf_values\[0\] nan is not "
                                   "finite"),
    (lambda d: _split(d, "border", 1e30), "catboost.splits", r"its border 1e\+30 is not one "
                                                             "of float feature"),
    (lambda d: _split(d, "split_index", 10**6), "catboost.splits",
     r"split_index 1000000 is not its binary feature's index"),
    (lambda d: _split(d, "split_type", "OnlineCtr"), "catboost.kind",
     r"split type 'OnlineCtr' is not checked"),
    (_ctr, "catboost.kind", "it holds CTR features"),
    (_one_class, "catboost.classes", r"class_names \[0, 1, 2\] are not the platform's label "
                                     r"codes 0\.\.1"),
    (_drop_feature, "catboost.features", "the model has 19 float and 0 categorical features, "
                                         r"the estimator takes 20 \(0 categorical\)"),
    (_duplicate_flat_index, "catboost.features", "flat_feature_index values are not each of"),
])
def test_crafted_catboost_models_are_refused_before_catboost_parses_them(
        fitted, cancer, tmp_path, edit, check, words):
    model_dir = _save(tmp_path / "m", fitted, cancer)
    edit_model_json(model_dir, edit)
    error = refused(model_dir)
    assert error.check == check
    assert re.search(words, str(error)), str(error)


def test_a_holder_naming_another_class_is_refused(fitted, cancer, tmp_path):
    model_dir = _save(tmp_path / "m", fitted, cancer)

    def rename(schema):
        holder_state(schema)["estimator"]["content"]["class"]["content"] = json.dumps("Pool")
    edit_skops(model_dir / "model.skops", rename)
    error = refused(model_dir)
    assert error.check == "catboost.record" and "is not one of" in str(error)


def test_without_catboost_installed_the_refusal_says_how_to_install_it(fitted, cancer,
                                                                       tmp_path, monkeypatch):
    model_dir = _save(tmp_path / "m", fitted, cancer)
    monkeypatch.setitem(sys.modules, "catboost", None)  # `import catboost` fails
    error = refused(model_dir)
    assert error.check == "catboost.installed" and '".[catboost]"' in str(error)


def test_the_check_is_what_catboost_parses():
    """Duplicate keys: Python keeps the last, so the checked document (and only it) is
    written out for CatBoost."""
    X = np.random.default_rng(3).normal(size=(100, 2))
    model = CatBoostModel(_small()).fit(X, (X[:, 0] > 0).astype(int))
    text = model.model_json_
    crafted = text[:-1] + ', "oblivious_trees": [{"splits": [], "leaf_values": [1e400]}]}'
    with pytest.raises(ModelCheckError) as caught:
        check_catboost_model(crafted, "m", 2, 2)
    assert caught.value.check == "catboost.values"
    assert json.loads(check_catboost_model(text, "m", 2, 2)) == json.loads(text)


# -- compiled ---------------------------------------------------------------------------------

def test_compiled_through_catboosts_own_export_passes_the_parity_gate(fitted, cancer):
    data, report = compile_and_check(fitted, cancer.X_train.head(50), cancer.X_test, "binary")
    assert data is not None and report.passed, report.reason
    assert report.rows == len(cancer.X_test) and report.probe_rows > 0


def test_multiclass_and_regression_compile(cancer):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    y = np.array(["x", "y", "z"])[(frame["a"] > 0).astype(int) + (frame["b"] > 0.7)]
    model = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                      ("model", CatBoostModel(_small()))])
    model.fit(frame.head(300), y[:300])
    data, report = compile_and_check(model, frame.head(50), frame.tail(100), "multiclass")
    assert report.passed, report.reason
    regressor = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                          ("model", CatBoostModel(_small(CatBoostRegressor)))])
    regressor.fit(frame.head(300), frame["a"].head(300) * 3 + frame["c"].head(300))
    data, report = compile_and_check(regressor, frame.head(50), frame.tail(100), "regression")
    assert report.passed, report.reason


def test_categorical_features_are_not_compiled_and_say_why():
    frame = pd.DataFrame({"amount": np.arange(200.0) % 7,
                          "colour": np.where(np.arange(200) % 3 == 0, "red", "blue")})
    y = np.where(frame["colour"] == "red", "yes", "no")
    model = Pipeline([("model", CatBoostModel(_small()))]).fit(frame, y)
    data, report = compile_and_check(model, frame.head(20), frame.tail(50), "binary")
    assert data is None and not report.passed
    assert "CatBoost's ONNX export does not support categorical features (colour)" in \
        report.reason
