"""ml_assets.core.modeling.estimators: the user's estimator class or factory, named by import
path, checked against the task, and recorded (module, file, version, source hash)."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline

from ml_assets.core.modeling import estimators
from ml_assets.core.modeling.estimators import (
    UserModelError,
    from_class,
    from_factory,
    parse_params,
    resolve,
)

USER_MODULE = """
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def build(C=1.0):
    return LogisticRegression(C=C, max_iter=500)


def build_pipeline():
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])


def build_regressor():
    return LinearRegression()


def fitted():
    return LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])


def fitted_pipeline():
    return build_pipeline().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])


def broken():
    raise RuntimeError("the database of hyper-parameters is down")


def not_an_estimator():
    return {"fit": "no"}


class Model(LogisticRegression):
    pass
"""


@pytest.fixture(autouse=True, scope="module")
def _distributions_once():
    """importlib.metadata.packages_distributions() scans every installed distribution
    (about a second in this environment); resolve() calls it each time. Same answer,
    computed once for this module."""
    import importlib.metadata

    mapping = importlib.metadata.packages_distributions()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.metadata, "packages_distributions", lambda: mapping)
        yield


@pytest.fixture
def user_module(tmp_path: Path):
    """A module written into a temporary project directory, under a fresh name (the
    import system caches modules by name); removed from sys.modules and sys.path after."""
    name = f"user_model_{uuid.uuid4().hex[:8]}"
    file = tmp_path / f"{name}.py"
    file.write_text(textwrap.dedent(USER_MODULE))
    saved_path = list(sys.path)
    yield name, file, tmp_path
    sys.modules.pop(name, None)
    sys.path[:] = saved_path


def test_resolve_with_a_colon_and_with_a_dot():
    by_colon, code = resolve("sklearn.linear_model:LogisticRegression")
    by_dot, _ = resolve("sklearn.linear_model.LogisticRegression")
    assert by_colon is by_dot is LogisticRegression
    assert code.import_path == "sklearn.linear_model:LogisticRegression"
    assert code.package_version is not None and code.package_version.startswith(
        "scikit-learn==")
    assert code.version == code.package_version


def test_resolve_a_nested_attribute():
    target, _ = resolve("sklearn.linear_model:LogisticRegression.fit")
    assert target is LogisticRegression.fit


@pytest.mark.parametrize("path", ["LogisticRegression", "sklearn.linear_model:",
                                  ":LogisticRegression", "sklearn linear:Model",
                                  "sklearn.linear_model:Logistic-Regression"])
def test_a_path_that_is_not_an_import_path(path):
    with pytest.raises(UserModelError, match="is not an import path; write it as "
                                             "package.module:Name"):
        resolve(path)


def test_a_module_that_is_not_found_names_the_module_and_the_project(tmp_path):
    with pytest.raises(UserModelError) as caught:
        resolve("no_such_module_zq7:Model", project_dir=tmp_path)
    message = str(caught.value)
    assert "cannot import module 'no_such_module_zq7'" in message
    assert str(tmp_path.resolve()) in message
    assert "installed package" in message


def test_a_missing_attribute_is_named():
    with pytest.raises(UserModelError, match="module 'sklearn.linear_model' has no "
                                             "attribute 'NoSuchModel'"):
        resolve("sklearn.linear_model:NoSuchModel")


def test_from_class_with_params():
    model = from_class("sklearn.linear_model:LogisticRegression", {"C": 0.5}, "binary")
    assert isinstance(model.estimator, LogisticRegression)
    assert model.estimator.C == 0.5
    assert model.params == {"C": 0.5}
    assert model.owns_preprocessing is False
    fresh = model.fresh()
    assert fresh is not model.estimator and fresh.get_params() == model.estimator.get_params()


def test_from_class_with_bad_params_names_them():
    with pytest.raises(UserModelError, match=r"sklearn.linear_model:LogisticRegression does "
                                             r"not accept the parameters \{'not_a_param': 1\}"):
        from_class("sklearn.linear_model:LogisticRegression", {"not_a_param": 1}, "binary")


def test_from_class_refuses_a_function():
    with pytest.raises(UserModelError, match="is not a class; use ML_MODEL_FACTORY"):
        from_class("sklearn.base:clone", {}, "binary")


def test_a_regressor_for_a_classification_target():
    with pytest.raises(UserModelError, match="is a regressor but the target is a binary "
                                             "classification target.*ML_TASK=regression"):
        from_class("sklearn.linear_model:LinearRegression", {}, "binary")


def test_a_classifier_for_a_regression_target():
    with pytest.raises(UserModelError, match="is a classifier but the target is a "
                                             "regression target.*ML_TASK=classification"):
        from_class("sklearn.linear_model:LogisticRegression", {}, "regression")


def test_a_regressor_for_a_regression_target():
    model = from_class("sklearn.linear_model:LinearRegression", {}, "regression")
    assert isinstance(model.estimator, LinearRegression)


def test_a_classifier_without_predict_proba():
    with pytest.raises(UserModelError, match="has no predict_proba.*probability=True"):
        from_class("sklearn.svm:LinearSVC", {}, "binary")
    with pytest.raises(UserModelError, match="has no predict_proba"):
        from_class("sklearn.svm:SVC", {}, "multiclass")
    assert from_class("sklearn.svm:SVC", {"probability": True}, "multiclass")


def test_from_factory_in_the_project_directory(user_module):
    name, file, project = user_module
    model = from_factory(f"{name}:build", "binary", owns_preprocessing=False,
                         project_dir=project, params={"C": 0.25})
    assert isinstance(model.estimator, LogisticRegression) and model.estimator.C == 0.25
    assert model.params == {"C": 0.25} and model.owns_preprocessing is False
    assert model.code.module_file == str(file)
    assert model.code.package_version is None


def test_user_code_has_the_sha256_of_the_module_file(user_module):
    name, file, project = user_module
    model = from_factory(f"{name}.build", "binary", owns_preprocessing=False,
                         project_dir=project)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert model.code.source_sha256 == digest
    assert model.code.version == digest[:12]
    tags = model.code.as_tags()
    assert tags == {"user_model.import_path": f"{name}.build",
                    "user_model.module_file": str(file),
                    "user_model.source_sha256": digest}


def test_a_factory_pipeline_that_owns_its_preprocessing(user_module):
    name, _, project = user_module
    model = from_factory(f"{name}:build_pipeline", "binary", owns_preprocessing=True,
                         project_dir=project)
    assert isinstance(model.estimator, Pipeline) and model.owns_preprocessing is True
    assert estimators.describe(model.estimator) == (
        "sklearn.linear_model._logistic.LogisticRegression")


def test_a_factory_class_from_the_project_directory(user_module):
    name, _, project = user_module
    model = from_class(f"{name}:Model", {"C": 2.0}, "binary", project_dir=project)
    assert type(model.estimator).__name__ == "Model" and model.estimator.C == 2.0


def test_a_factory_returning_a_fitted_estimator_is_refused(user_module):
    name, _, project = user_module
    for factory in ("fitted", "fitted_pipeline"):
        with pytest.raises(UserModelError, match="returned a fitted estimator; return it "
                                                 "unfitted"):
            from_factory(f"{name}:{factory}", "binary", owns_preprocessing=False,
                         project_dir=project)


def test_a_failing_factory_is_named_without_a_traceback(user_module):
    name, _, project = user_module
    with pytest.raises(UserModelError, match=f"the model factory {name}:broken failed: the "
                                             "database of hyper-parameters is down"):
        from_factory(f"{name}:broken", "binary", owns_preprocessing=False,
                     project_dir=project)


def test_a_factory_returning_something_else(user_module):
    name, _, project = user_module
    with pytest.raises(UserModelError, match="returned dict, which does not follow "
                                             "scikit-learn's estimator protocol: it has no "
                                             "fit, predict"):
        from_factory(f"{name}:not_an_estimator", "binary", owns_preprocessing=False,
                     project_dir=project)


def test_a_factory_is_checked_against_the_task(user_module):
    name, _, project = user_module
    with pytest.raises(UserModelError, match="is a regressor"):
        from_factory(f"{name}:build_regressor", "binary", owns_preprocessing=False,
                     project_dir=project)


def test_a_factory_that_is_a_class_is_refused(user_module):
    name, _, project = user_module
    with pytest.raises(UserModelError, match="is not a function; use ML_ESTIMATOR"):
        from_factory(f"{name}:Model", "binary", owns_preprocessing=False,
                     project_dir=project)


def test_a_factory_given_parameters_it_does_not_take(user_module):
    name, _, project = user_module
    with pytest.raises(UserModelError, match="the model factory .* failed: .*unexpected "
                                             "keyword argument 'depth'"):
        from_factory(f"{name}:build", "binary", owns_preprocessing=False,
                     project_dir=project, params={"depth": 3})


def _factory(tmp_path, source: str) -> str:
    name = f"user_duck_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_a_duck_typed_estimator_is_told_what_it_lacks(tmp_path):
    name = _factory(tmp_path, """
        class Duck:
            def fit(self, X, y):
                return self

            def predict(self, X):
                return X

            def predict_proba(self, X):
                return X

            def get_params(self, deep=True):
                return {}


        def build():
            return Duck()
        """)
    saved_path = list(sys.path)
    try:
        with pytest.raises(UserModelError, match=r"returned Duck, which does not follow "
                                                 r"scikit-learn's estimator protocol: it has "
                                                 r"no set_params, __sklearn_tags__ \(the "
                                                 r"platform needs fit, predict"):
            from_factory(f"{name}:build", "binary", owns_preprocessing=False,
                         project_dir=tmp_path)
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = saved_path


def test_an_estimator_following_the_protocol_without_scikit_learns_bases_is_accepted(
        tmp_path):
    name = _factory(tmp_path, """
        import numpy as np
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags


        class Majority:
            def __init__(self, prior=1.0):
                self.prior = prior

            def fit(self, X, y):
                self.classes_, counts = np.unique(y, return_counts=True)
                self.share_ = (counts + self.prior) / (counts + self.prior).sum()
                return self

            def predict_proba(self, X):
                return np.tile(self.share_, (len(X), 1))

            def predict(self, X):
                return self.classes_[self.predict_proba(X).argmax(axis=1)]

            def get_params(self, deep=True):
                return {"prior": self.prior}

            def set_params(self, **params):
                self.prior = params.get("prior", self.prior)
                return self

            def __sklearn_tags__(self):
                return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                            classifier_tags=ClassifierTags(), input_tags=InputTags())


        def build(prior=1.0):
            return Majority(prior)
        """)
    saved_path = list(sys.path)
    try:
        user = from_factory(f"{name}:build", "binary", owns_preprocessing=False,
                            project_dir=tmp_path, params={"prior": 2.0})
        fitted = user.fresh().fit(np.zeros((4, 1)), np.array(["a", "b", "b", "b"]))
        assert list(fitted.predict(np.zeros((2, 1)))) == ["b", "b"]
        with pytest.raises(UserModelError, match="is a classifier but the target is a "
                                                 "regression target"):
            from_factory(f"{name}:build", "regression", owns_preprocessing=False,
                         project_dir=tmp_path)
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = saved_path


def test_a_factory_returning_catboost_unfitted_is_accepted_and_fitted_is_refused(tmp_path):
    name = _factory(tmp_path, """
        import numpy as np
        from catboost import CatBoostClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler


        def build():
            return Pipeline([("scale", StandardScaler()),
                             ("model", CatBoostClassifier(iterations=5))])


        def fitted():
            return CatBoostClassifier(iterations=2, logging_level="Silent",
                                      allow_writing_files=False).fit(
                np.arange(8.0).reshape(4, 2), [0, 1, 0, 1])
        """)
    saved_path = list(sys.path)
    try:
        user = from_factory(f"{name}:build", "binary", owns_preprocessing=True,
                            project_dir=tmp_path)
        assert type(user.estimator.steps[-1][1]).__name__ == "CatBoostClassifier"
        with pytest.raises(UserModelError, match="returned a fitted estimator"):
            from_factory(f"{name}:fitted", "binary", owns_preprocessing=False,
                         project_dir=tmp_path)
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = saved_path


def test_catboost_by_import_path_needs_no_wrapper():
    user = from_class("catboost:CatBoostClassifier", {"iterations": 5}, "binary")
    assert type(user.estimator).__name__ == "CatBoostClassifier"
    regressor = from_class("catboost:CatBoostRegressor", {}, "regression")
    assert type(regressor.estimator).__name__ == "CatBoostRegressor"
    with pytest.raises(UserModelError, match="is a regressor but the target is a binary"):
        from_class("catboost:CatBoostRegressor", {}, "binary")


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_parse_params_of_nothing(text):
    assert parse_params(text) == {}


def test_parse_params_of_an_object():
    assert parse_params('{"C": 0.5, "penalty": null, "fit_intercept": false}') == {
        "C": 0.5, "penalty": None, "fit_intercept": False}


def test_parse_params_of_bad_json_names_the_source():
    with pytest.raises(UserModelError, match=r"ML_ESTIMATOR_PARAMS is not valid JSON "
                                             r"\(.* at column \d+\)"):
        parse_params("{C: 0.5}")
    with pytest.raises(UserModelError, match="^ML_FACTORY_PARAMS is not valid JSON"):
        parse_params("{'C': 0.5}", source="ML_FACTORY_PARAMS")


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ("0.5", "float"),
                                            ('"C=0.5"', "str"), ("null", "NoneType")])
def test_parse_params_of_something_else_than_an_object(text, kind):
    with pytest.raises(UserModelError, match=f"must be a JSON object like .*, not {kind}$"):
        parse_params(text)
