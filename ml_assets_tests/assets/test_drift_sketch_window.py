"""A month of production days judged from their sketches: each production_data partition
writes its drift sketch (named in its metadata with its rows), and drift_scores pools a
30-day window by merging the days' sketches, with the verdicts of the single pass over
the concatenated rows, while the IO manager never loads a day's frame. A day without a
sketch (materialized before sketches, or its file gone) is loaded instead.

One synthetic champion (a 10-tree forest) with an integer-valued column (ties: the KS
null is resampled from the stored values) and two categorical ones; its reference
profile stored with an MLflow run, as reference_profile stores it."""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    FilesystemIOManager,
    Output,
    asset,
    materialize,
)

from ml_assets.core.data.datasets import SyntheticSpec, make_synthetic
from ml_assets.core.data.schemas import synthetic_schema
from ml_assets.core.drift.check import CheckSettings, judged_answers
from ml_assets.core.drift.scoring import score_drift
from ml_assets.core.drift.sketch_store import PROFILE_ARTIFACT
from ml_assets.core.rollout.traffic import shift_rows
from ml_assets.drift import drift_scores
from ml_assets.monitoring import _profile_for, production_data
from ml_assets.resources import MlflowTracking
from ml_assets_tests.support.graph import lineage_version
from ml_assets_tests.support.models import train_frame
from ml_assets_tests.support.production_days import log_day, monitoring_resources

SPEC = SyntheticSpec(n_rows=3_000, n_numeric=5, n_categorical=2, seed=11)
DAYS = [(dt.date(2026, 11, 2) + dt.timedelta(days=i)).isoformat() for i in range(30)]
ROWS_A_DAY = 12
# 30 days of 12 rows: the last day's window reaches back to the first (360 >= 350).
CONFIG = {"ops": {"drift_scores": {"config": {"min_rows": 350, "max_pooled_days": 30}}}}
LOADS: list[tuple[str, tuple[str, ...]]] = []


class RecordingIOManager(FilesystemIOManager):
    """The filesystem IO manager, recording which asset partitions it loads."""

    def create_io_manager(self, context):
        manager = super().create_io_manager(context)
        load = manager.load_input

        def recorded(input_context):
            keys = (tuple(input_context.asset_partition_keys)
                    if input_context.has_asset_partitions else ())
            LOADS.append((input_context.asset_key.to_user_string(), keys))
            return load(input_context)

        manager.load_input = recorded
        return manager


@pytest.fixture(scope="module")
def month(tmp_path_factory, mlflow_store):
    """The champion, its profile stored with an MLflow run and materialized as
    reference_profile (version and run in its metadata), and 30 logged days: calm,
    then the second half shifted by 0.6 std in half the numeric columns."""
    root = tmp_path_factory.mktemp("sketch_month")
    frame = make_synthetic(SPEC)
    frame["num_00"] = frame["num_00"].round()  # integer-valued: ties
    trained = train_frame(frame.iloc[:1_500], synthetic_schema(SPEC), SPEC.target,
                          n_estimators=10)
    profile = _profile_for(trained.pipeline, SimpleNamespace(X_train=trained.X_train,
                                                             X_test=trained.X_test))
    assert profile.features["num_00"].exact and profile.features["num_00"].values.size < 20

    name = f"sketch_month_{uuid.uuid4().hex[:8]}"
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"], experiment_name=name,
                              registered_model_name=name)
    version = lineage_version(tracking)
    client = tracking.client
    run = client.create_run(client.create_experiment(name))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PROFILE_ARTIFACT).name
        path.write_bytes(profile.to_bytes())
        client.log_artifact(run.info.run_id, str(path), str(Path(PROFILE_ARTIFACT).parent))

    @asset(name="reference_profile", group_name="monitoring")
    def stored_profile() -> Output:
        return Output(profile, metadata={"champion_version": version,
                                         "mlflow_run_id": run.info.run_id})

    fresh = frame.iloc[1_500:].drop(columns=SPEC.target).reset_index(drop=True)
    rng = np.random.default_rng(20260601)
    (root / "dagster").mkdir()
    with DagsterInstance.local_temp(str(root / "dagster")) as instance:
        recording = RecordingIOManager(base_dir=str(root / "storage"))
        resources = monitoring_resources(root, tracking, recording)
        assets = [stored_profile, production_data, drift_scores]
        assert materialize([stored_profile], instance=instance, resources=resources).success
        for position, day in enumerate(DAYS):
            rows = fresh.iloc[rng.choice(len(fresh), size=ROWS_A_DAY, replace=False)]
            if position >= len(DAYS) // 2:
                rows = shift_rows(rows, trained.X_train, 0.6)
            log_day(root / "log.db", rows, day, trained.pipeline, version=version,
                    model_name=name)
            assert materialize(assets, selection=AssetSelection.assets("production_data"),
                               partition_key=day, instance=instance,
                               resources=resources).success
        yield SimpleNamespace(instance=instance, resources=resources, assets=assets,
                              profile=profile, version=version, root=root)


def _judge(month, day: str):
    LOADS.clear()
    result = materialize(month.assets, selection=AssetSelection.assets("drift_scores"),
                         partition_key=day, instance=month.instance,
                         resources=month.resources, run_config=CONFIG)
    assert result.success
    return result.output_for_node("drift_scores"), list(LOADS)


def _stored_day(month, day: str) -> pd.DataFrame:
    return pd.read_pickle(month.root / "storage" / "production_data" / day)


def _single_pass(month, days: list[str]):
    rows = pd.concat([_stored_day(month, d) for d in days], ignore_index=True)
    settings = CheckSettings(min_rows=350, max_pooled_days=30)
    return score_drift(month.profile, rows, settings.drift_config(True),
                       judged_answers(rows, month.version))


def _sketch_metadata(month, day: str):
    (record,) = month.instance.fetch_materializations(AssetRecordsFilter(
        asset_key=AssetKey("production_data"), asset_partitions=[day]), limit=1).records
    return record.asset_materialization.metadata


def _same_verdicts(value: dict, report) -> None:
    assert value["dataset_drifted"] == report.dataset_drifted
    assert value["prediction_drifted"] == report.prediction_drifted
    assert value["drifted_features"] == report.drifted_features
    assert value["dataset_drifted_features"] == report.dataset_drifted_features
    assert value["dataset_p_value"] == pytest.approx(report.dataset_p_value, rel=1e-9)
    for role, table in (("features", report.features), ("predictions", report.predictions)):
        expected = table.set_index("feature")
        for row in value[role]:
            want = expected.loc[row["feature"]]
            assert row["drifted"] == want["drifted"], row["feature"]
            assert row["dataset_drifted"] == want["dataset_drifted"], row["feature"]
            assert row["n_cur"] == want["n_cur"]
            for key in ("statistic", "p_value", "p_adjusted", "threshold"):
                assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (
                    row["feature"], key)
            # the Wasserstein effect size: within its stated error of the exact one
            assert abs(row["effect_size"] - want["effect_size"]) <= row["effect_error"] + 1e-9


def test_each_day_names_its_sketch_and_rows_in_its_metadata(month):
    metadata = _sketch_metadata(month, DAYS[0])
    path = Path(metadata["drift_sketch"].value)
    assert path.is_file() and path.parent.name == DAYS[0]
    assert metadata["drift_sketch_rows"].value == ROWS_A_DAY == (
        metadata["dagster/row_count"].value)
    assert metadata["drift_sketch_version"].value == month.version


def test_a_month_is_judged_from_merged_sketches_with_the_single_pass_verdicts(month):
    """The 30-day window of the last day: judged from the 30 days' sketches, its verdicts
    (and every exact statistic) those of score_drift on the 360 concatenated rows; the IO
    manager loads the reference profile only, no day of production_data."""
    value, loads = _judge(month, DAYS[-1])
    assert value["status"] == "pooled" and value["window_days"] == DAYS
    assert value["rows"] == 30 * ROWS_A_DAY and value["pooled_days"] == 29
    assert value["judged_from"] == "sketches" and value["loaded_days"] == []
    assert [key for key, _ in loads] == ["reference_profile"], loads
    report = _single_pass(month, DAYS)
    _same_verdicts(value, report)
    assert value["prediction_rows"] == 30 * ROWS_A_DAY
    assert report.dataset_drifted  # half the month shifted: the verdict is a real one
    features = {row["feature"]: row for row in value["features"]}
    assert features["num_00"]["null"] != "asymptotic"  # ties: a resampled null
    assert features["cat_00"]["test"] == "chi2"


def test_a_day_without_a_sketch_is_loaded_alone(month):
    """A day whose sketch is gone (as a day materialized before sketches has none) is read
    through the IO manager, alone; the verdicts stay the single-pass ones."""
    path = Path(_sketch_metadata(month, DAYS[3])["drift_sketch"].value)
    path.unlink()
    value, loads = _judge(month, DAYS[-1])
    assert value["judged_from"] == "sketches" and value["loaded_days"] == [DAYS[3]]
    assert ("production_data", (DAYS[3],)) in loads
    assert [key for key, _ in loads] == ["reference_profile", "production_data"], loads
    _same_verdicts(value, _single_pass(month, DAYS))
