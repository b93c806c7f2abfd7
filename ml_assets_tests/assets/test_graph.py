"""The whole training graph on real data: defaults, bad data, weak models, mixed types."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from ml_assets.core.data.datasets import SyntheticSpec, load_breast_cancer_frame, make_synthetic
from ml_assets.evaluation import METRICS_CHECK
from ml_assets.resources import DataSourceResource
from ml_assets.validation import SCHEMA_CHECK
from ml_assets_tests.support.graph import check_evaluation, materialized, run_graph


def test_default_dataset_end_to_end_and_reproducible(mlflow_tracking, instance):
    """Defaults (RandomForest, 200 trees, 5-fold CV) on the packaged data; the MLflow run
    holds params, metrics and a model that loads and predicts from raw rows; a second
    run on the same data and config gives identical metrics."""
    source = DataSourceResource(kind="breast_cancer")
    results = [run_graph(source, mlflow_tracking, instance,
                         training={"n_estimators": 200, "cv_folds": 5}) for _ in range(2)]
    for result in results:
        assert result.success
    first, second = (r.output_for_node("model_metrics") for r in results)
    assert first == second
    assert first["accuracy"] > 0.9 and first["roc_auc"] > 0.95
    trained = results[0].output_for_node("trained_model")
    run = mlflow_tracking.client.get_run(trained.mlflow_run_id)
    assert run.data.params["n_estimators"] == "200" and run.data.params["cv_folds"] == "5"
    assert run.data.metrics["test_accuracy"] == first["accuracy"]
    assert "cv_f1_weighted_mean" in run.data.metrics
    assert run.data.tags["dagster_run_id"] == results[0].run_id
    assert run.data.tags["data_fingerprint"] == trained.data_fingerprint
    assert run.data.tags["library.scikit-learn"] == "1.9.1"
    assert run.info.status == "FINISHED"
    model = mlflow.pyfunc.load_model(trained.model_uri)
    rows = load_breast_cancer_frame().drop(columns="diagnosis").tail(20)
    predicted = model.predict(rows)
    assert set(predicted) <= {"benign", "malignant"}
    np.testing.assert_array_equal(predicted, trained.pipeline.predict(rows))
    # Same data, same config: same fingerprint; a different Dagster run, a different MLflow run.
    other = results[1].output_for_node("trained_model")
    assert other.data_fingerprint == trained.data_fingerprint
    assert other.mlflow_run_id != trained.mlflow_run_id


def test_multiclass_categorical_missing_through_the_whole_graph(mlflow_tracking, instance):
    source = DataSourceResource(kind="synthetic", n_rows=900, n_numeric=6, n_categorical=3,
                                n_classes=4, missing_fraction=0.08, class_sep=2.5, seed=4)
    result = run_graph(source, mlflow_tracking, instance)
    assert result.success
    metrics = result.output_for_node("model_metrics")
    assert metrics["roc_auc"] > 0.8
    trained = result.output_for_node("trained_model")
    assert trained.classes == ["class_0", "class_1", "class_2", "class_3"]
    rows = make_synthetic(SyntheticSpec(n_rows=10, n_numeric=6, n_categorical=3, n_classes=4,
                                        missing_fraction=0.3, seed=99)).drop(columns="label")
    rows.loc[0, "cat_00"] = "unseen-category"
    model = mlflow.pyfunc.load_model(trained.model_uri)
    assert set(model.predict(rows)) <= set(trained.classes)


def test_too_weak_model_fails_the_gate_naming_the_metric(mlflow_tracking, instance):
    # No signal at all: every metric sits near chance.
    source = DataSourceResource(kind="synthetic", n_rows=300, n_numeric=4, class_sep=0.0,
                                seed=2)
    result = run_graph(source, mlflow_tracking, instance)
    assert not result.success
    evaluation = check_evaluation(result, METRICS_CHECK)
    assert not evaluation.passed
    failing = evaluation.metadata["failing_metrics"].value
    assert "accuracy" in failing and "roc_auc" in failing
    assert "accuracy" in evaluation.description and "<" in evaluation.description


def test_a_single_threshold_names_only_that_metric(mlflow_tracking, instance):
    source = DataSourceResource(kind="breast_cancer")
    result = run_graph(source, mlflow_tracking, instance, gate={"min_roc_auc": 0.9999})
    evaluation = check_evaluation(result, METRICS_CHECK)
    assert not evaluation.passed
    assert list(evaluation.metadata["failing_metrics"].value) == ["roc_auc"]
    assert evaluation.description.endswith(
        "(thresholds: model_metrics config min_roc_auc; ML_METRIC_THRESHOLD sets every "
        "classification minimum, now 0.8)"), evaluation.description


@pytest.fixture
def user_files(tmp_path):
    frame = make_synthetic(SyntheticSpec(n_rows=400, n_numeric=4, n_categorical=1,
                                         class_sep=2.0, seed=6))
    frame["num_00"] = frame["num_00"].abs()  # a non-negative column: inferred as such
    path = tmp_path / "orders.csv"
    frame.to_csv(path, index=False)
    source = DataSourceResource(kind="files", path=str(path), target="label",
                                schema_dir=str(tmp_path / "schemas"))
    return frame, path, source


def test_user_files_infer_schema_once_and_reuse_it(user_files, mlflow_tracking, instance):
    frame, path, source = user_files
    result = run_graph(source, mlflow_tracking, instance)
    assert result.success
    schema_file = path.parent / "schemas" / "orders" / "v1.yaml"
    assert schema_file.exists()
    evaluation = check_evaluation(result, SCHEMA_CHECK)
    assert "inferred and written" in evaluation.metadata["schema"].value
    again = run_graph(source, mlflow_tracking, instance, selection=["raw_data",
                                                                    "validated_data"])
    evaluation = check_evaluation(again, SCHEMA_CHECK)
    assert evaluation.metadata["schema"].value.startswith("file: ")
    assert not (path.parent / "schemas" / "orders" / "v2.yaml").exists()


@pytest.mark.parametrize("corrupt, column, check", [
    (lambda f: f.drop(columns=["num_01"]), "num_01", "column_in_dataframe"),
    (lambda f: f.assign(num_02=f["num_02"].astype(object).where(f.index != 5, "oops")),
     "num_02", "coerce_dtype"),
    (lambda f: f.assign(num_00=f["num_00"].where(f.index != 7, -3.0)), "num_00",
     "greater_than_or_equal_to"),
])
def test_bad_data_blocks_downstream_with_a_clear_message(user_files, mlflow_tracking,
                                                         instance, corrupt, column, check):
    frame, path, source = user_files
    assert run_graph(source, mlflow_tracking, instance,
                     selection=["raw_data", "validated_data"]).success  # schema v1 inferred
    corrupt(frame).to_csv(path, index=False)
    result = run_graph(source, mlflow_tracking, instance)
    assert not result.success
    evaluation = check_evaluation(result, SCHEMA_CHECK)
    assert not evaluation.passed
    assert column in evaluation.metadata["failing_columns"].value
    assert any(check in c for c in evaluation.metadata["failing_checks"].value)
    assert column in evaluation.description
    sample = evaluation.metadata["failure_sample"].value
    assert column in sample
    for downstream in ("data_split", "feature_preprocessor", "trained_model", "model_metrics"):
        assert not materialized(result, downstream), downstream


def test_missing_file_fails_at_once_without_retries(tmp_path, mlflow_tracking, instance):
    source = DataSourceResource(kind="files", path=str(tmp_path / "nope.csv"), target="y")
    result = run_graph(source, mlflow_tracking, instance, selection=["raw_data"])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "does not exist" in failure.step_failure_data.error.message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_single_class_data_fails_with_a_named_reason(tmp_path, mlflow_tracking, instance):
    pd.DataFrame({"x": np.arange(20.0), "y": ["a"] * 20}).to_csv(tmp_path / "one.csv",
                                                                   index=False)
    source = DataSourceResource(kind="files", path=str(tmp_path / "one.csv"), target="y",
                                schema_dir=str(tmp_path / "schemas"))
    result = run_graph(source, mlflow_tracking, instance)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "single class" in failure.step_failure_data.error.message
