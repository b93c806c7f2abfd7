"""Daily batch scoring through the real graph: a champion trained by the train_model job
into a real MLflow registry scores one day's CSV and Parquet files; bad input blocks with
a reason and writes nothing; the output feeds ProductionDataResource like the API's log.
The data is scikit-learn's breast cancer table."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from ml_assets import batch
from ml_assets.core.artifacts.loading import load_pipeline
from ml_assets.core.batch.shards import read_day
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.registry import champion as registry
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource

DAY = "2026-11-20"
CHECKS = {batch.ROW_COUNT_CHECK, batch.COMPLETE_CHECK, batch.PROBABILITY_CHECK,
          batch.FINITE_CHECK, batch.SHARDS_CHECK}


@pytest.fixture(scope="module")
def champion(mlflow_store, tmp_path_factory) -> MlflowTracking:
    """A champion in a real registry, trained and promoted by the train_model job."""
    root = tmp_path_factory.mktemp("batch_champion")
    name = f"t_batch_{uuid.uuid4().hex[:8]}"
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"], experiment_name=name,
                              registered_model_name=name,
                              artifact_location=(root / "art").as_uri())
    (root / "dagster").mkdir()
    with DagsterInstance.local_temp(str(root / "dagster")) as instance:
        trained = defs.resolve_job_def("train_model").execute_in_process(
            instance=instance, resources={
                "data_source": DataSourceResource(kind="breast_cancer"),
                "mlflow_tracking": tracking,
                "production": ProductionDataResource(
                    prediction_log_path=str(root / "log.db"),
                    landing_dir=str(root / "landing"), labels_dir=str(root / "labels"))},
            run_config={"ops": {"trained_model": {"config": {"n_estimators": 25,
                                                             "cv_folds": 2}}}})
    assert trained.success
    assert registry.alias_version(tracking.client, name, registry.CHAMPION) is not None
    return tracking


@pytest.fixture
def production(tmp_path) -> ProductionDataResource:
    return ProductionDataResource(
        prediction_log_path=str(tmp_path / "log.db"), landing_dir=str(tmp_path / "landing"),
        labels_dir=str(tmp_path / "labels"), batch_input_dir=str(tmp_path / "batch_in"),
        batch_output_dir=str(tmp_path / "batch_out"))


def _score(instance, production, champion, day=DAY):
    return materialize(
        [defs.get_assets_def("batch_predictions")], partition_key=day, instance=instance,
        raise_on_error=False,
        resources={"production": production, "mlflow_tracking": champion,
                   "data_source": DataSourceResource(kind="breast_cancer")})


def _day_dir(production: ProductionDataResource, day=DAY) -> Path:
    folder = Path(production.batch_input_dir) / day
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _failure(result):
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data.user_failure_data
    assert data is not None, failure.step_failure_data.error.message  # a Failure, not a crash
    return data.description, data.metadata


def metadata_of(result):
    (materialization,) = [m for m in result.get_asset_materialization_events()
                          if m.asset_key.to_user_string() == "batch_predictions"]
    return materialization.materialization.metadata


def _output_dir_files(production, day=DAY) -> list[str]:
    folder = Path(production.batch_output_dir) / day
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_breast_cancer_frame()


def test_a_day_of_csv_and_parquet_files_is_scored_by_the_champion(
        champion, production, instance, table):
    folder = _day_dir(production)
    labelled = table.sample(60, random_state=1)
    labelled.to_csv(folder / "clinic_a.csv", index=False)  # the target column: ignored
    features = table.drop(columns=BREAST_CANCER_TARGET).sample(40, random_state=2)
    features.to_parquet(folder / "clinic_b.parquet", index=False)
    (folder / "README.txt").write_text("not a table; left alone")

    result = _score(instance, production, champion)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == CHECKS
    assert all(e.passed for e in evaluations.values()), [
        e.description for e in evaluations.values()]

    version = str(registry.alias_version(champion.client, champion.registered_model_name,
                                         registry.CHAMPION).version)
    day_dir = Path(production.batch_output_dir) / DAY
    path = day_dir / "manifest.json"
    written = read_day(day_dir)
    assert len(written) == 100
    assert (written["model_version"] == version).all()
    assert (written["model_name"] == champion.registered_model_name).all()
    assert written["source_file"].value_counts().to_dict() == {"clinic_a.csv": 60,
                                                              "clinic_b.parquet": 40}
    assert written["request_id"].is_unique
    assert written["request_id"].iloc[0] == f"batch-{DAY}-clinic_a-1"
    assert written["request_id"].iloc[-1] == f"batch-{DAY}-clinic_b-40"
    assert BREAST_CANCER_TARGET not in written
    assert str(written["scored_at"].dt.tz) == "UTC"
    proba = written[["proba_benign", "proba_malignant"]].to_numpy()
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert set(written["prediction"]) <= {"benign", "malignant"}
    # The same answers as the registered champion gives the same rows.
    model = load_pipeline(f"models:/{champion.registered_model_name}/{version}")
    rows = pd.concat([labelled.drop(columns=BREAST_CANCER_TARGET), features])
    expected = model.pipeline.predict_proba(rows)
    classes = list(model.pipeline.classes_)
    # The compiled graph answers (float32 trees: within its parity tolerance), with the
    # Pipeline's labels.
    assert metadata_of(result)["runtime"].value == ["onnx"]
    np.testing.assert_allclose(proba[:, [classes.index("benign"),
                                         classes.index("malignant")]], expected, atol=1e-5)
    assert (written["prediction"].to_numpy()
            == model.pipeline.classes_[expected.argmax(axis=1)].astype(str)).all()
    np.testing.assert_allclose(written[list(features.columns)].to_numpy(), rows.to_numpy())
    # A misclassification rate fit for the breast cancer data: the model really scored.
    truth = labelled[BREAST_CANCER_TARGET].to_numpy()
    assert (written["prediction"].iloc[:60].to_numpy() == truth).mean() > 0.85

    metadata = metadata_of(result)
    assert metadata["rows"].value == 100
    assert metadata["model_version"].value == version
    assert metadata["files"].value == {"clinic_a.csv": 60, "clinic_b.parquet": 40}
    assert metadata["output_path"].value == str(path)
    assert metadata["ignored_columns"].value == [BREAST_CANCER_TARGET]
    assert "proba_malignant" in metadata["preview"].value

    # Drift reads the day like the API's logged rows.
    rows_for_drift = production.batch_predictions(DAY)
    assert len(rows_for_drift) == 100
    assert list(rows_for_drift.columns[:30]) == list(features.columns)
    assert {"request_id", "model_version", "prediction", "proba_benign",
            "proba_malignant", "source"} <= set(rows_for_drift.columns)
    assert set(rows_for_drift["source"]) == {"batch"}
    assert (rows_for_drift["model_version"] == version).all()
    assert production.batch_predictions("2026-11-21").empty  # a day not batch-scored

    # A re-run replaces the day whole; no temporary file is left behind.
    (folder / "clinic_b.parquet").unlink()
    table.sample(7, random_state=3).to_csv(folder / "clinic_a.csv", index=False)
    again = _score(instance, production, champion)
    assert again.success
    rescored = read_day(day_dir)
    assert len(rescored) == 7 and set(rescored["source_file"]) == {"clinic_a.csv"}
    assert _output_dir_files(production) == ["manifest.json", "parts"]
    (plan_dir,) = (day_dir / "parts").iterdir()  # the first run's parts are gone
    # the part, its score sketch, and its drift sketch (the champion has a reference
    # profile)
    assert sorted(p.name for p in plan_dir.iterdir()) == [
        "part-00000.parquet", "part-00000.scores.npz", "part-00000.sketch.npz"]
    assert len(production.batch_predictions(DAY)) == 7


def _missing_column(folder: Path, table: pd.DataFrame) -> None:
    table.drop(columns=[BREAST_CANCER_TARGET, "mean radius"]).head(20).to_csv(
        folder / "no_radius.csv", index=False)


def _wrong_type(folder: Path, table: pd.DataFrame) -> None:
    rows = table.drop(columns=BREAST_CANCER_TARGET).head(20).astype({"mean texture": str})
    rows.loc[rows.index[3], "mean texture"] = "seventeen"  # a text column in Parquet
    rows.to_parquet(folder / "typed.parquet", index=False)


def _forbidden_value(folder: Path, table: pd.DataFrame) -> None:
    rows = table.drop(columns=BREAST_CANCER_TARGET).head(20)
    rows.loc[rows.index[4], "mean smoothness"] = 1.7  # a ratio: the schema says <= 1
    rows.to_csv(folder / "ratios.csv", index=False)


def _empty_day(folder: Path, table: pd.DataFrame) -> None:
    (folder / "notes.txt").write_text("no table today")


def _corrupt_parquet(folder: Path, table: pd.DataFrame) -> None:
    table.head(20).to_csv(folder / "a_good.csv", index=False)  # a good file does not help
    (folder / "b_broken.parquet").write_bytes(b"PAR1" + b"\x00\x13garbage" * 40)


@pytest.mark.parametrize(("write", "expected"), [
    (_missing_column, ["no_radius.csv", "'mean radius'", "not in the data"]),
    (_wrong_type, ["typed.parquet", "'mean texture'", "cannot be read as float64",
                   "'seventeen'", "data rows 4"]),
    (_forbidden_value, ["ratios.csv", "'mean smoothness'", "less_than_or_equal_to(1)",
                        "data rows 5"]),
    (_empty_day, [DAY, "holds no .csv or .parquet files"]),
    (_corrupt_parquet, ["b_broken.parquet", "could not read", "as Parquet"]),
], ids=["missing_column", "wrong_type", "forbidden_value", "empty_day", "corrupt_parquet"])
def test_bad_input_blocks_with_a_reason_and_writes_nothing(
        champion, production, instance, table, write, expected):
    write(_day_dir(production), table)
    result = _score(instance, production, champion)
    assert not result.success
    description, metadata = _failure(result)
    for fragment in expected:
        assert fragment in description, (fragment, description)
    assert metadata["problem"].value
    assert expected[0] in metadata["file"].value
    assert not result.get_asset_materialization_events()
    assert _output_dir_files(production) == []
    assert production.batch_predictions(DAY).empty


def test_a_failing_output_check_blocks_and_keeps_the_last_good_output(
        champion, production, instance, table, monkeypatch):
    table.head(30).to_csv(_day_dir(production) / "a.csv", index=False)
    assert _score(instance, production, champion).success
    day_dir = Path(production.batch_output_dir) / DAY
    before = (day_dir / "manifest.json").read_bytes()
    rows_before = read_day(day_dir)

    real = batch.score

    def unbalanced(model, rows):
        outputs, slow = real(model, rows)
        outputs["proba_benign"] = outputs["proba_benign"] * 0.5
        return outputs, slow

    monkeypatch.setattr(batch, "score", unbalanced)
    result = _score(instance, production, champion)
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations[batch.PROBABILITY_CHECK].passed
    assert evaluations[batch.ROW_COUNT_CHECK].passed
    description, _ = _failure(result)
    assert batch.PROBABILITY_CHECK in description and "do not sum to 1" in description
    assert not result.get_asset_materialization_events()
    assert (day_dir / "manifest.json").read_bytes() == before
    pd.testing.assert_frame_equal(read_day(day_dir), rows_before)
    assert _output_dir_files(production) == ["manifest.json", "parts"]


def test_output_checks_judge_what_was_written():
    good = pd.DataFrame({"prediction": ["a", "b"], "model_version": ["3", "3"],
                         "proba_a": [0.9, 0.2], "proba_b": [0.1, 0.8]})
    assert all(o.passed for o in batch.output_checks(good, 2, regression=False))
    outcomes = {o.name: o for o in batch.output_checks(
        good.assign(proba_a=[1.2, 0.2], model_version=["3", None]), 3, regression=False)}
    assert not outcomes[batch.ROW_COUNT_CHECK].passed
    assert not outcomes[batch.COMPLETE_CHECK].passed
    assert not outcomes[batch.PROBABILITY_CHECK].passed
    assert outcomes[batch.PROBABILITY_CHECK].metadata["rows_outside_unit_interval"] == 1
    values = pd.DataFrame({"prediction": [1.5, np.inf], "model_version": ["1", "1"]})
    regression = {o.name: o for o in batch.output_checks(values, 2, regression=True)}
    assert regression[batch.PROBABILITY_CHECK].passed
    assert not regression[batch.FINITE_CHECK].passed


def test_request_ids_name_files_by_stem_unless_two_share_it(tmp_path):
    files = [tmp_path / "a.csv", tmp_path / "a.parquet", tmp_path / "b.csv"]
    assert list(batch.file_keys(files).values()) == ["a.csv", "a.parquet", "b"]


def test_a_day_that_is_no_date_is_refused(production):
    with pytest.raises(ValueError, match="not a date"):
        production.batch_predictions("../../etc")


def test_validation_ignores_other_columns_and_refuses_infinite_numbers(table):
    from ml_assets.core.data.schemas import breast_cancer_schema

    features = [c for c in table.columns if c != BREAST_CANCER_TARGET]
    schema = breast_cancer_schema(features)
    rows = table.head(5).assign(customer_id=range(5))[[*reversed(table.columns), "customer_id"]]
    validated = batch.validate_input(rows, schema, BREAST_CANCER_TARGET, "a.csv")
    assert list(validated.columns) == features  # the schema's order; extras dropped
    rows.loc[rows.index[2], "worst area"] = np.inf
    with pytest.raises(batch.BatchInputError, match=r"'worst area' holds 1 infinite value"
                       r"\(s\) in data rows 3") as refused:
        batch.validate_input(rows, schema, BREAST_CANCER_TARGET, "a.csv")
    assert refused.value.columns == ["worst area"] and refused.value.file == "a.csv"
