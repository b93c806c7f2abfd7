"""Each asset materialized on its own (upstream values come from storage)."""

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from ml_assets.core.data.preprocessing import Split
from ml_assets.core.modeling.pipeline import TrainedModel
from ml_assets.ingestion import INGESTION_RETRY_POLICY
from ml_assets.resources import DataSourceResource
from ml_assets_tests.support.graph import run_graph


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with DagsterInstance.local_temp(str(tmp_path_factory.mktemp("dagster"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def source():
    return DataSourceResource(kind="synthetic", n_rows=400, n_numeric=5, n_categorical=1,
                              missing_fraction=0.05, class_sep=2.0, seed=11)


@pytest.fixture(scope="module")
def tracking(mlflow_store, tmp_path_factory):
    from ml_assets.resources import MlflowTracking

    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name="asset_tests",
                          artifact_location=tmp_path_factory.mktemp("art").as_uri())


UPSTREAM = ["raw_data", "validated_data", "data_split", "feature_preprocessor",
            "trained_model"]


@pytest.fixture(scope="module", autouse=True)
def upstream_in_storage(source, tracking, instance):
    """Every upstream value in storage before any test, so each test's asset reads its
    inputs from storage whatever order the tests run in (ML_TEST_SHUFFLE found the file
    relying on its own order)."""
    result = run_graph(source, tracking, instance, selection=UPSTREAM)
    assert result.success, [e.message for e in result.all_events if e.is_failure]


def _one(name, source, tracking, instance, **config):
    result = run_graph(source, tracking, instance, selection=[name], **config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result, result.output_for_node(name)


def test_raw_data(source, tracking, instance):
    result, frame = _one("raw_data", source, tracking, instance)
    assert frame.shape == (400, 7)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["dagster/row_count"].value == 400
    assert len(metadata["fingerprint"].value) == 64
    assert INGESTION_RETRY_POLICY.max_retries == 2 and INGESTION_RETRY_POLICY.delay == 300


def test_validated_data(source, tracking, instance):
    result, frame = _one("validated_data", source, tracking, instance)
    assert isinstance(frame, pd.DataFrame) and frame["num_00"].dtype == "float64"
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["failures"].value == 0


def test_data_split(source, tracking, instance):
    result, split = _one("data_split", source, tracking, instance, split={"test_size": 0.25})
    assert isinstance(split, Split) and len(split.X_test) == 100


def test_feature_preprocessor(source, tracking, instance):
    result, pre = _one("feature_preprocessor", source, tracking, instance,
                       features={"k_best": 4})
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert len(metadata["selected_features"].value) == 4


def test_trained_model(source, tracking, instance):
    result, trained = _one("trained_model", source, tracking, instance)
    assert isinstance(trained, TrainedModel)
    assert trained.model_uri.startswith("models:/") and trained.params["n_estimators"] == 25
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    for key in ("data_fingerprint", "code_version", "dagster_run_id", "library_versions",
                "cv_f1_weighted_mean", "mlflow_run_id"):
        assert key in metadata
    assert metadata["dagster_run_id"].value == result.run_id


def test_model_metrics(source, tracking, instance):
    result, metrics = _one("model_metrics", source, tracking, instance)
    assert set(metrics) == {"accuracy", "precision_weighted", "recall_weighted", "f1_weighted",
                            "roc_auc"}
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert "data:image/png;base64," in metadata["confusion_matrix_plot"].value
    assert instance.get_latest_materialization_event(AssetKey("model_metrics")) is not None
