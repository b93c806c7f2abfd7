"""The right evidence at the right time: production rows belong to the registered model
(and dataset) that answered them, the daily schedule judges the complete previous day,
labels rebuild the day's production data before judging it, a corrupt labels or landing
file is named and never blocks the rest, and `simulate` sends rows the champion never
trained on."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import (
    DagsterInstance,
    build_schedule_context,
    build_schedule_from_partitioned_job,
    build_sensor_context,
    materialize,
)

from ml_assets import automation, cli
from ml_assets.core.data.datasets import load_breast_cancer_frame
from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog
from ml_assets.definitions import defs
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets.settings import PlatformSettings
from ml_assets.shared import EVIDENCE_CHECK
from ml_assets_tests.support.graph import lineage_version
from ml_assets_tests.unit.test_production_rows import corrupt_bytes

DAY = "2026-11-20"
FAST = {"ops": {"trained_model": {"config": {"n_estimators": 10, "cv_folds": 2}}}}
TRAIN = defs.resolve_job_def("train_model")


def _production(root: Path) -> ProductionDataResource:
    return ProductionDataResource(prediction_log_path=str(root / "prediction_log.db"),
                                  landing_dir=str(root / "landing"),
                                  labels_dir=str(root / "labels"))


def _log(production: ProductionDataResource, frame: pd.DataFrame, target: str, model: str,
         version: str, day: str = DAY, variant: str = "champion",
         predictions=None) -> list[tuple[str, str]]:
    """Log `frame`'s rows as the API would (answered by `model` `version`, predicting the
    true label unless `predictions` is given); returns (request_id, true label) pairs."""
    features = frame.drop(columns=target)
    truth = frame[target].astype(str).tolist()
    predicted = truth if predictions is None else [str(p) for p in predictions]
    classes = sorted(set(truth) | set(predicted))
    when = dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=dt.timezone.utc)
    ids = [uuid.uuid4().hex for _ in range(len(frame))]
    log = SQLitePredictionLog(production.prediction_log_path)
    log.append_many([PredictionRecord(
        when, rid, 0, model, version, list(features.columns), row.tolist(), answer,
        {c: 0.9 if c == answer else 0.1 / (len(classes) - 1) for c in classes},
        variant=variant)
        for rid, row, answer in zip(ids, features.to_numpy(), predicted, strict=True)]
    ).result(30)
    log.close()
    return list(zip(ids, truth, strict=True))


def _labels(production: ProductionDataResource, pairs: list[tuple[str, str]],
            name: str) -> None:
    folder = Path(production.labels_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(pairs, columns=["request_id", "label"]).to_csv(folder / name, index=False)


def credit_frame(rows: int = 400, seed: int = 5) -> pd.DataFrame:
    """A credit table like the README's "Your own data" one: Status good/bad from
    income, amount and seniority (separable enough to pass the default gate)."""
    rng = np.random.default_rng(seed)
    income = rng.gamma(4.0, 40.0, rows).round(1)
    amount = rng.gamma(3.0, 300.0, rows).round(0)
    seniority = rng.integers(0, 30, rows)
    home = rng.choice(["rent", "owner", "parents", "other"], rows)
    score = income / 40 + seniority / 6 - amount / 300 + rng.normal(0, 0.3, rows)
    return pd.DataFrame({"Seniority": seniority, "Home": home, "Income": income,
                         "Amount": amount,
                         "Status": np.where(score > np.median(score), "good", "bad")})


def _metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def quick_start(mlflow_store, tmp_path_factory):
    """The README's quick start: the breast-cancer model trained through the real graph,
    champion version 1 of its own registered model."""
    root = tmp_path_factory.mktemp("quick_start")
    name = f"bc_{uuid.uuid4().hex[:8]}"
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"], experiment_name=name,
                              registered_model_name=name,
                              artifact_location=(root / "art").as_uri())
    (root / "dagster").mkdir()
    with DagsterInstance.local_temp(str(root / "dagster")) as instance:
        result = TRAIN.execute_in_process(
            instance=instance, run_config=FAST,
            resources={"data_source": DataSourceResource(kind="breast_cancer"),
                       "mlflow_tracking": tracking, "production": _production(root / "empty")})
        assert result.success
        yield tracking, result


def test_the_readme_sequence_trains_the_second_model_on_its_own_rows(
        quick_start, instance, mlflow_store, tmp_path):
    """Quick start, simulate (1,000 labelled breast-cancer rows), then "Your own data"
    (a credit table) in the same home: the credit model never sees a breast-cancer row,
    under its own registered model name or under the same one."""
    bc_tracking, _ = quick_start
    home = tmp_path / "home"
    production = _production(home)
    cancer = load_breast_cancer_frame().sample(1000, replace=True, random_state=1)
    _labels(production, _log(production, cancer, "diagnosis",
                             bc_tracking.registered_model_name, "1"), "labels-bc.csv")

    credit_csv = tmp_path / "credit.csv"
    credit_frame().to_csv(credit_csv, index=False)
    credit = DataSourceResource(kind="files", path=str(credit_csv), target="Status",
                                schema_dir=str(home / "schemas"))
    credit_name = f"credit_{uuid.uuid4().hex[:8]}"
    credit_tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                                     experiment_name=credit_name,
                                     registered_model_name=credit_name,
                                     artifact_location=(tmp_path / "art").as_uri())
    resources = {"data_source": credit, "mlflow_tracking": credit_tracking,
                 "production": production}
    first = TRAIN.execute_in_process(instance=instance, resources=resources, run_config=FAST)
    assert first.success
    raw = _metadata(first, "raw_data")
    assert raw["production_rows"] == 0 and raw["source_rows"] == 400
    assert raw["production_rows_excluded"] == {
        f"answered by another registered model ({bc_tracking.registered_model_name!r})": 1000}
    assert set(raw["class_counts"]) == {"bad", "good"}
    schema_text = (home / "schemas" / "credit" / "v1.yaml").read_text()
    assert "benign" not in schema_text and "malignant" not in schema_text
    registered = credit_tracking.client.get_model_version(credit_name, "1")
    assert registered.tags["dataset"] == "credit"

    # The credit model's own traffic, labelled: its retrain learns from those rows only.
    own = credit_frame(rows=120, seed=9)
    _labels(production, _log(production, own, "Status", credit_name, "1", day="2026-11-21"),
            "labels-credit.csv")
    raw_data = defs.get_assets_def("raw_data")
    again = materialize([raw_data], instance=instance, resources=resources)
    frame = again.output_for_node("raw_data")
    assert len(frame) == 520 and set(frame["Status"]) == {"bad", "good"}
    assert not frame.tail(120)[["Seniority", "Income", "Amount"]].isna().any().any()
    assert _metadata(again, "raw_data")["production_rows"] == 120

    # Drift and live performance see the same scope: the credit day only.
    monitoring = [defs.get_assets_def(k) for k in ("production_data", "live_performance")]
    day = materialize(monitoring, instance=instance, resources=resources,
                      partition_key="2026-11-21")
    assert len(day.output_for_node("production_data")) == 120
    assert day.output_for_node("live_performance")["labelled_rows"] == 120
    bc_day = materialize(monitoring, instance=instance, resources=resources,
                         partition_key=DAY)
    assert bc_day.output_for_node("production_data").empty
    assert _metadata(bc_day, "production_data")["excluded_rows"] == {
        f"answered by another registered model ({bc_tracking.registered_model_name!r})": 1000}

    # "Your own data" under the SAME registered model name as the quick start: version 1
    # was trained on breast_cancer, so its rows are not the credit lineage's either.
    same = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name=credit_name,
                          registered_model_name=bc_tracking.registered_model_name)
    shared = materialize([raw_data], instance=instance,
                         resources={**resources, "mlflow_tracking": same})
    assert shared.output_for_node("raw_data").shape[0] == 400
    excluded = _metadata(shared, "raw_data")["production_rows_excluded"]
    assert excluded[f"version 1 of {bc_tracking.registered_model_name!r} (trained on dataset "
                    "'breast_cancer')"] == 1000


def test_the_daily_schedule_scores_the_complete_previous_day():
    at = dt.datetime(2026, 11, 21, 0, 30, tzinfo=dt.timezone.utc)
    repository = defs.get_repository_def()
    with build_schedule_context(scheduled_execution_time=at,
                                repository_def=repository) as context:
        request = automation.daily_drift_schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == "2026-11-20"
    assert request.tags[automation.TRIGGER_TAG] == "daily_schedule"
    schedule = repository.get_schedule_def("daily_drift_scoring")
    assert schedule.cron_schedule == "30 0 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "score_drift"
    # What the former partitioned-job schedule asked for: the day that had just begun.
    former = build_schedule_from_partitioned_job(
        automation.score_drift_job, name="former", hour_of_day=0, minute_of_hour=30)
    with build_schedule_context(scheduled_execution_time=at,
                                repository_def=repository) as context:
        (old,) = former.evaluate_tick(context).run_requests
    assert old.partition_key == "2026-11-21"
    # Before the first partition there is nothing to score.
    early = dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.timezone.utc)
    with build_schedule_context(scheduled_execution_time=early,
                                repository_def=repository) as context:
        skipped = automation.daily_drift_schedule.evaluate_tick(context)
    assert not skipped.run_requests and "not a partition" in skipped.skip_message


def test_labels_rebuild_the_day_before_judging_it(instance, tmp_path, mlflow_tracking):
    """production_data was materialized before the day's predictions were logged; the
    labels' run rebuilds it first, so live_performance counts every labelled row (alone,
    it would judge the stale day: 0 labelled rows)."""
    production = _production(tmp_path)
    version = lineage_version(mlflow_tracking)
    resources = {"production": production, "mlflow_tracking": mlflow_tracking,
                 "data_source": DataSourceResource(kind="breast_cancer")}
    assets = [defs.get_assets_def(k) for k in ("production_data", "live_performance")]
    early = materialize(assets, selection=["production_data"], partition_key=DAY,
                        instance=instance, resources=resources)
    assert early.output_for_node("production_data").empty
    frame = load_breast_cancer_frame().sample(60, random_state=4)
    pairs = _log(production, frame, "diagnosis", mlflow_tracking.registered_model_name, version)
    _labels(production, pairs, "labels-1.csv")

    stale = materialize(assets, selection=["live_performance"], partition_key=DAY,
                        instance=instance, resources=resources)
    assert stale.output_for_node("live_performance")["labelled_rows"] == 0

    with build_sensor_context(instance=instance, resources={"production": production}) as ctx:
        (request,) = automation.live_performance_on_labels(ctx).run_requests
    keys = [k.to_user_string() for k in request.asset_selection]
    assert keys == ["production_data", "live_performance"]
    run = materialize(assets, selection=keys, partition_key=request.partition_key,
                      instance=instance, resources=resources)
    performance = run.output_for_node("live_performance")
    assert performance["labelled_rows"] == 60 and performance["accuracy"] == 1.0


def test_live_performance_is_per_version_and_variant(instance, tmp_path, mlflow_tracking):
    production = _production(tmp_path)
    versions = [lineage_version(mlflow_tracking) for _ in range(3)]
    name = mlflow_tracking.registered_model_name
    frame = load_breast_cancer_frame().sample(300, random_state=8)
    wrong = np.where(frame["diagnosis"] == "benign", "malignant", "benign")
    pairs = (_log(production, frame.iloc[:120], "diagnosis", name, versions[0])
             + _log(production, frame.iloc[120:180], "diagnosis", name, versions[1],
                    variant="canary", predictions=wrong[120:180])
             + _log(production, frame.iloc[180:], "diagnosis", name, versions[2]))
    _labels(production, pairs, "labels.csv")
    run = materialize([defs.get_assets_def(k) for k in ("production_data", "live_performance")],
                      partition_key=DAY, instance=instance,
                      resources={"production": production, "mlflow_tracking": mlflow_tracking,
                                 "data_source": DataSourceResource(kind="breast_cancer")})
    value = run.output_for_node("live_performance")
    rows = {(r["model_version"], r["variant"]): r for r in value["per_version"]}
    assert {k: r["labelled_rows"] for k, r in rows.items()} == {
        (versions[0], "champion"): 120, (versions[2], "champion"): 120,
        (versions[1], "canary"): 60}
    assert rows[(versions[1], "canary")]["accuracy"] == 0.0
    assert value["champion_version"] == versions[2] and value["labelled_rows"] == 120
    assert value["accuracy"] == 1.0 and value["all_labelled_rows"] == 300
    metadata = _metadata(run, "live_performance")
    assert metadata["champion_version"] == versions[2]
    assert len(metadata["per_version_json"]) == 3 and "canary" in metadata["per_version"]


def test_a_corrupt_labels_or_landing_file_is_named_and_blocks_nothing(
        instance, tmp_path, mlflow_tracking):
    production = _production(tmp_path)
    version = lineage_version(mlflow_tracking)
    resources = {"production": production, "mlflow_tracking": mlflow_tracking,
                 "data_source": DataSourceResource(kind="breast_cancer")}
    frame = load_breast_cancer_frame()
    pairs = _log(production, frame.sample(40, random_state=2), "diagnosis",
                 mlflow_tracking.registered_model_name, version)
    _labels(production, pairs, "labels-1.csv")
    corrupt_labels = Path(production.labels_dir) / "labels-0.csv"
    corrupt_labels.write_bytes(corrupt_bytes())
    landing = Path(production.landing_dir) / DAY
    landing.mkdir(parents=True)
    frame.sample(25, random_state=3).to_csv(landing / "good.csv", index=False)
    corrupt_landing = landing / "broken.parquet"
    corrupt_landing.write_bytes(corrupt_bytes(seed=4))

    # The label sensor still requests the day, and names the file it left out.
    with build_sensor_context(instance=instance, resources={"production": production}) as ctx:
        tick = automation.live_performance_on_labels(ctx)
    assert [r.partition_key for r in tick.run_requests] == [DAY]

    # Training data: every readable row is used; the files are named in the metadata.
    raw = materialize([defs.get_assets_def("raw_data")], instance=instance,
                      resources=resources)
    assert raw.success
    metadata = _metadata(raw, "raw_data")
    assert metadata["production_rows"] == 40 + 25
    skipped = metadata["skipped_files"]
    assert any(s.startswith(f"{corrupt_labels}: ") and "0x87" in s for s in skipped)
    assert any(s.startswith(f"{corrupt_landing}: ") for s in skipped)

    # production_data and live_performance run, each with a WARN check naming its file.
    day = materialize([defs.get_assets_def(k) for k in ("production_data", "live_performance")],
                      partition_key=DAY, instance=instance, resources=resources)
    assert day.success
    assert len(day.output_for_node("production_data")) == 40 + 25
    assert day.output_for_node("live_performance")["labelled_rows"] == 40
    checks = {e.asset_key.to_user_string(): e for e in day.get_asset_check_evaluations()
              if e.check_name == EVIDENCE_CHECK}
    assert not checks["production_data"].passed
    assert checks["production_data"].severity.value == "WARN"
    assert str(corrupt_landing) in checks["production_data"].description
    assert not checks["live_performance"].passed
    assert str(corrupt_labels) in checks["live_performance"].description
    assert "not UTF-8" in checks["live_performance"].description

    # Once removed, the checks pass again.
    corrupt_labels.unlink()
    corrupt_landing.unlink()
    clean = materialize([defs.get_assets_def(k) for k in ("production_data", "live_performance")],
                        partition_key=DAY, instance=instance, resources=resources)
    assert all(e.passed for e in clean.get_asset_check_evaluations())


def test_simulate_sends_the_champions_held_out_rows(quick_start, mlflow_store, tmp_path,
                                                    monkeypatch, capsys):
    tracking, trained = quick_start
    split = trained.output_for_node("data_split")
    settings = dataclasses.replace(PlatformSettings.from_env(),
                                   mlflow_tracking_uri=mlflow_store["tracking_uri"],
                                   registered_model_name=tracking.registered_model_name)
    frame = load_breast_cancer_frame()
    chosen = cli.held_out_traffic(settings, frame, "diagnosis")
    positions = sorted(split.X_test.index)
    assert len(chosen.rows) == len(split.X_test) == 114
    pd.testing.assert_frame_equal(chosen.rows, frame.iloc[positions].reset_index(drop=True))
    assert set(split.X_train.index).isdisjoint(positions)
    # So the champion's live accuracy on them is its held-out accuracy, not its training one.
    model = trained.output_for_node("trained_model").pipeline
    live = float(np.mean(model.predict(chosen.rows.drop(columns="diagnosis"))
                         == chosen.rows["diagnosis"].to_numpy()))
    assert live == pytest.approx(trained.output_for_node("model_metrics")["accuracy"])

    from ml_assets.core.rollout import traffic

    seen: dict = {}

    def fake(url, rows, target, **kwargs):
        seen["rows"] = rows
        return traffic.SimulationResult(sent=1, ok=1)

    monkeypatch.setattr(traffic, "simulate", fake)
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store["tracking_uri"])
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", tracking.registered_model_name)
    assert cli.main(["simulate", "--requests", "5", "--no-labels"]) == 0
    assert len(seen["rows"]) == 114
    assert "114 held-out rows of the champion's split (never trained on)" in \
        capsys.readouterr().out
    assert cli.main(["simulate", "--requests", "5", "--no-labels", "--rows", "all"]) == 0
    assert len(seen["rows"]) == 569
    monkeypatch.setenv("ML_REGISTERED_MODEL_NAME", f"none_{uuid.uuid4().hex[:6]}")
    assert cli.main(["simulate", "--requests", "5", "--no-labels"]) == 1
    assert "has no champion yet" in capsys.readouterr().err


def test_a_version_registered_before_the_dataset_tag_is_known_by_its_schema(mlflow_store,
                                                                              unique_name):
    """Versions registered without the `dataset` tag (before it existed, or by hand) are
    placed by their feature schema's name, and the tag is written for the next reader."""
    from mlflow.tracking import MlflowClient

    from ml_assets.core.registry.lineage import DATASET_TAG, model_lineage
    from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer

    version, _ = register(train_breast_cancer(n_estimators=5), unique_name,
                          experiment_id(unique_name), alias=None)
    client = MlflowClient(mlflow_store["tracking_uri"])
    assert DATASET_TAG not in client.get_model_version(unique_name, version).tags
    lineage = model_lineage(client, unique_name, "breast_cancer")
    assert lineage.versions == {version}
    assert client.get_model_version(unique_name, version).tags[DATASET_TAG] == "breast_cancer"
    other = model_lineage(client, unique_name, "credit")
    assert not other.versions
    assert other.other_versions == {version: "trained on dataset 'breast_cancer'"}
