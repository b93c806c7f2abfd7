"""Pure features, modeling, metrics and provenance: no Dagster involved."""

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ml_assets.core.data.datasets import SyntheticSpec, load_breast_cancer_frame, make_synthetic
from ml_assets.core.data.preprocessing import (
    build_preprocessor,
    feature_kinds,
    selected_features,
    split_frame,
)
from ml_assets.core.data.provenance import code_version, frame_fingerprint, library_versions
from ml_assets.core.modeling.metrics import (
    classification_metrics,
    confusion_matrix_png,
    confusion_table,
    failing_metrics,
    residual_plot_png,
)
from ml_assets.core.modeling.pipeline import (
    SKOPS_TRUSTED_TYPES,
    ModelParams,
    build_estimator,
    cross_validate_pipeline,
    fit_final_pipeline,
)
from ml_assets.core.modeling.tasks import better, detect_task, regression_metrics


@pytest.fixture(scope="module")
def mixed():
    spec = SyntheticSpec(n_rows=600, n_numeric=4, n_categorical=2, n_classes=3,
                         missing_fraction=0.1, seed=5)
    frame = make_synthetic(spec)
    split = split_frame(frame, "label", test_size=0.25, seed=1)
    return frame, split


def test_split_is_stratified_and_seeded(mixed):
    frame, split = mixed
    assert len(split.X_test) == 150 and "label" not in split.X_train
    overall = frame["label"].value_counts(normalize=True)
    test = split.y_test.value_counts(normalize=True)
    assert (overall - test).abs().max() < 0.01
    again = split_frame(frame, "label", test_size=0.25, seed=1)
    assert again.X_test.index.equals(split.X_test.index)
    other = split_frame(frame, "label", test_size=0.25, seed=2)
    assert not other.X_test.index.equals(split.X_test.index)


def test_split_refuses_a_class_too_rare_to_split():
    frame = pd.DataFrame({"x": range(6), "y": ["a", "a", "a", "b", "b", "c"]})
    with pytest.raises(ValueError, match="class 'c'"):
        split_frame(frame, "y")
    with pytest.raises(ValueError, match="single class"):
        split_frame(frame.assign(y="a"), "y")


def test_preprocessor_is_fitted_on_train_only(mixed):
    _, split = mixed
    kinds = feature_kinds(split.X_train, "")
    assert kinds == {"num_00": "numeric", "num_01": "numeric", "num_02": "numeric",
                     "num_03": "numeric", "cat_00": "categorical", "cat_01": "categorical"}
    pre = build_preprocessor(split.X_train, kinds, k_best=6).fit(split.X_train, split.y_train)
    scaler = pre.named_steps["columns"].named_transformers_["numeric"].named_steps["scale"]
    train_median_filled = split.X_train[["num_00"]].fillna(split.X_train["num_00"].median())
    assert scaler.mean_[0] == pytest.approx(train_median_filled["num_00"].mean())
    out = pre.transform(split.X_test)
    assert out.shape == (len(split.X_test), 6) and not np.isnan(out).any()
    assert len(selected_features(pre)) == 6
    # Unseen categories at prediction time are ignored, not an error.
    unseen = split.X_test.head(3).assign(cat_00="never-seen")
    assert pre.transform(unseen).shape == (3, 6)


def test_k_best_is_capped_at_the_encoded_width(mixed):
    _, split = mixed
    kinds = feature_kinds(split.X_train, "")
    pre = build_preprocessor(split.X_train, kinds, k_best=1000)
    assert pre.named_steps["select"].k == "all"


@pytest.fixture(scope="module")
def continuous():
    """A regression frame: numeric and categorical features, missing values, a
    continuous target."""
    spec = SyntheticSpec(n_rows=400, n_numeric=4, n_categorical=2, missing_fraction=0.1,
                         seed=8)
    frame = make_synthetic(spec)
    rng = np.random.default_rng(8)
    frame["price"] = (3 * frame["num_00"].fillna(0) - 2 * frame["num_01"].fillna(0)
                      + (frame["cat_00"] == "c0").astype(float) + rng.normal(0, 0.3, 400))
    frame = frame.drop(columns="label")
    return frame, split_frame(frame, "price", test_size=0.25, seed=1)


@pytest.mark.parametrize("model_type", ["random_forest", "hist_gradient_boosting"])
def test_regression_pipeline_needs_no_unlisted_type(continuous, model_type):
    _, split = continuous
    assert split.task == "regression" and split.classes == []
    kinds = feature_kinds(split.X_train, "")
    pre = build_preprocessor(split.X_train, kinds, k_best=6, task="regression")
    assert pre.named_steps["select"].score_func.__name__ == "f_regression"
    params = ModelParams(model_type=model_type, n_estimators=20, max_iter=20, seed=3,
                         task="regression")
    estimator = build_estimator(params)
    assert type(estimator).__name__.endswith("Regressor")
    cv = cross_validate_pipeline(pre, estimator, split.X_train, split.y_train, folds=3,
                                 seed=3, scoring="neg_root_mean_squared_error",
                                 stratified=False)
    assert len(cv.scores) == 3 and cv.mean < 0
    pipeline = fit_final_pipeline(pre.fit(split.X_train, split.y_train), estimator,
                                  split.X_train, split.y_train)
    blob = sio.dumps(pipeline)
    assert set(sio.get_untrusted_types(data=blob)) <= set(SKOPS_TRUSTED_TYPES)
    loaded = sio.loads(blob, trusted=SKOPS_TRUSTED_TYPES)
    # Parallel trees sum their predictions in any order: equal to the last bits only.
    np.testing.assert_allclose(loaded.predict(split.X_test), pipeline.predict(split.X_test),
                               rtol=1e-12)
    metrics = regression_metrics(split.y_test, pipeline.predict(split.X_test))
    assert metrics["r2"] > 0.5


def test_regression_split_is_plain_seeded_and_numeric(continuous):
    frame, split = continuous
    assert split.y_train.dtype == "float64" and len(split.X_test) == 100
    assert "distinct numeric values" in split.task_reason
    again = split_frame(frame, "price", test_size=0.25, seed=1)
    assert again.X_test.index.equals(split.X_test.index)
    # The same rows a plain (unstratified) seeded split gives.
    from sklearn.model_selection import train_test_split

    _, X_test = train_test_split(frame, test_size=0.25, random_state=1)
    assert X_test.index.equals(split.X_test.index)
    forced = split_frame(frame.assign(price=frame["price"].round().clip(-1, 1)), "price",
                         task="regression")
    assert forced.task == "regression" and "set in the configuration" in forced.task_reason


def test_task_detection():
    assert detect_task(pd.Series(np.linspace(0, 1, 50), name="y")).task == "regression"
    assert detect_task(pd.Series([0.5, 1.5, 0.5, 2.5], name="y")).task == "regression"
    assert detect_task(pd.Series([0, 1, 1, 0] * 10, name="y")).task == "binary"
    assert detect_task(pd.Series(list(range(5)) * 10, name="y")).task == "multiclass"
    assert detect_task(pd.Series(["a", "b", "c"] * 9, name="y")).task == "multiclass"
    assert detect_task(pd.Series(np.arange(100.0), name="y"),
                       "classification").task == "multiclass"
    with pytest.raises(ValueError, match="not numbers"):
        detect_task(pd.Series(["a", "b"] * 5, name="y"), "regression")
    with pytest.raises(ValueError, match="unknown task 'clustering'"):
        detect_task(pd.Series([1, 2]), "clustering")  # type: ignore[arg-type]


def test_a_continuous_target_is_inferred_as_a_number_not_as_classes():
    from importlib.resources import files

    from ml_assets.core.data.schema_inference import infer_schema

    penguins = pd.read_csv(files("palmerpenguins") / "data" / "penguins.csv")
    penguins = penguins.dropna(subset=["body_mass_g"])
    schema = infer_schema(penguins, "body_mass_g")
    target = schema.columns["body_mass_g"]
    assert str(target.dtype) == "float64" and not target.checks and not target.nullable
    species = infer_schema(penguins, "species").columns["species"]
    assert str(species.dtype) == "str" and species.checks  # labels keep their isin list
    as_classes = infer_schema(penguins, "year", task="classification").columns["year"]
    assert as_classes.checks  # three years: classes, with an isin list


def test_regression_metrics_gate_directions_and_residual_plot():
    metrics = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 4.0])
    assert metrics["rmse"] == pytest.approx(np.sqrt(0.125))
    assert metrics["mae"] == pytest.approx(0.25) and metrics["r2"] == pytest.approx(0.9)
    assert metrics["mape"] == pytest.approx((0.5 + 0 + 0.5 / 3) / 4)
    assert np.isnan(regression_metrics([0.0, 1.0], [0.1, 1.0])["mape"])
    failures = failing_metrics(metrics, {"r2": 0.95}, {"rmse": 0.1, "mae": 1.0})
    assert failures == {"r2": "0.9000 < 0.9500", "rmse": f"{metrics['rmse']:.4f} > 0.1000"}
    assert failing_metrics({"rmse": 1.0}, {}, {"mape": 0.1}) == {"mape": "was not computed"}
    assert residual_plot_png([1.0, 2.0, 3.0], [1.1, 1.9, 3.2]).startswith(b"\x89PNG")
    assert better("rmse", 1.0, 2.0) == 1.0 and better("r2", 0.5, 0.7) == pytest.approx(-0.2)


@pytest.mark.parametrize("model_type", ["random_forest", "hist_gradient_boosting"])
def test_cv_and_final_pipeline_roundtrip_through_skops(mixed, model_type):
    _, split = mixed
    kinds = feature_kinds(split.X_train, "")
    pre = build_preprocessor(split.X_train, kinds, k_best=8)
    params = ModelParams(model_type=model_type, n_estimators=20, max_iter=20, seed=3)
    cv = cross_validate_pipeline(pre, build_estimator(params), split.X_train, split.y_train,
                                 folds=3, seed=3)
    assert len(cv.scores) == 3 and 0.5 < cv.mean <= 1.0 and cv.std >= 0
    fitted_pre = pre.fit(split.X_train, split.y_train)
    pipeline = fit_final_pipeline(fitted_pre, build_estimator(params), split.X_train,
                                  split.y_train)
    blob = sio.dumps(pipeline)
    # The reviewed list covers every type the pipeline needs, and nothing less works.
    assert set(sio.get_untrusted_types(data=blob)) <= set(SKOPS_TRUSTED_TYPES)
    loaded = sio.loads(blob, trusted=SKOPS_TRUSTED_TYPES)
    np.testing.assert_array_equal(loaded.predict_proba(split.X_test),
                                  pipeline.predict_proba(split.X_test))


def test_training_is_reproducible(mixed):
    _, split = mixed
    kinds = feature_kinds(split.X_train, "")
    probas = []
    for _ in range(2):
        pre = build_preprocessor(split.X_train, kinds).fit(split.X_train, split.y_train)
        model = fit_final_pipeline(pre, build_estimator(ModelParams(n_estimators=30, seed=9)),
                                   split.X_train, split.y_train)
        probas.append(model.predict_proba(split.X_test))
    np.testing.assert_array_equal(*probas)


def test_unknown_model_type_is_named():
    with pytest.raises(ValueError, match="unknown model_type 'svm'"):
        build_estimator(ModelParams(model_type="svm"))


def test_cv_needs_two_folds(mixed):
    _, split = mixed
    with pytest.raises(ValueError, match="at least 2"):
        cross_validate_pipeline(build_preprocessor(split.X_train, {"num_00": "numeric"}),
                                build_estimator(ModelParams()), split.X_train, split.y_train,
                                folds=1)


def test_metrics_match_sklearn_binary_and_multiclass():
    rng = np.random.default_rng(0)
    y = np.array(["benign", "malignant"])[rng.integers(0, 2, 200)]
    proba1 = np.clip(np.where(y == "malignant", 0.7, 0.3) + rng.normal(0, 0.2, 200), 0, 1)
    proba = np.column_stack([1 - proba1, proba1])
    pred = np.where(proba1 > 0.5, "malignant", "benign")
    metrics = classification_metrics(y, pred, proba, ["benign", "malignant"])
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y == "malignant", proba1))
    y3 = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    p3 = rng.dirichlet([1, 1, 1], 300)
    pred3 = np.array(["a", "b", "c"])[p3.argmax(1)]
    m3 = classification_metrics(y3, pred3, p3, ["a", "b", "c"])
    assert m3["f1_weighted"] == pytest.approx(f1_score(y3, pred3, average="weighted"))
    assert m3["roc_auc"] == pytest.approx(
        roc_auc_score(y3, p3, multi_class="ovr", average="weighted"))


def test_failing_metrics_names_each_metric():
    failures = failing_metrics({"accuracy": 0.9, "roc_auc": 0.55, "f1_weighted": float("nan")},
                               {"accuracy": 0.8, "roc_auc": 0.8, "f1_weighted": 0.8,
                                "recall_weighted": 0.8})
    assert set(failures) == {"roc_auc", "f1_weighted", "recall_weighted"}
    assert failures["roc_auc"] == "0.5500 < 0.8000"


def test_confusion_matrix_picture_is_a_png():
    table = confusion_table(["a", "b", "a"], ["a", "a", "a"], ["a", "b"])
    assert table.loc["true a", "pred a"] == 2 and table.loc["true b", "pred a"] == 1
    assert confusion_matrix_png(table).startswith(b"\x89PNG")


def test_fingerprint_tracks_values_and_order():
    frame = load_breast_cancer_frame()
    assert frame_fingerprint(frame) == frame_fingerprint(frame.copy())
    changed = frame.copy()
    changed.iloc[0, 0] += 1e-9
    assert frame_fingerprint(changed) != frame_fingerprint(frame)
    assert frame_fingerprint(frame.iloc[::-1]) != frame_fingerprint(frame)


def test_code_and_library_versions():
    assert code_version() != ""
    versions = library_versions()
    assert versions["scikit-learn"] == "1.9.1" and "dagster" in versions
