"""A prediction-log day above log_rows_in_memory: production_data reads it a segment at
a time into its drift and score sketches and leaves its rows in the log; every reader
(drift_scores, estimated_performance, live_performance) judges the day as with the rows
in memory, reads the log again only where a sketch cannot answer, and names the fix
when the log below production_data's mark has changed since."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetSelection, materialize

from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.drift.sketch_store import read_sketch
from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog
from ml_assets.drift import drift_scores
from ml_assets.estimation import estimated_performance
from ml_assets.in_place import LOG_IN_PLACE
from ml_assets.monitoring import live_performance, production_data
from ml_assets.resources.production import ProductionDataResource
from ml_assets_tests.support.sketch_champion import profile_asset, same_sketch, sketch_champion

DAY = "2026-11-25"
MONITORED = ["production_data", "drift_scores", "estimated_performance", "live_performance"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mlflow_store):
    return sketch_champion(tmp_path_factory.mktemp("log_in_place"), mlflow_store, DAY)


def _write_log(champion) -> pd.DataFrame:
    """400 rows answered by the champion in commits of 37 rows (some flagged), and what
    production_data leaves out: 20 shadow copies, 5 failed canary attempts, 15 rows of
    another registered model. Returns the champion's rows (request_id, prediction)."""
    table = load_breast_cancer_frame().drop(columns=BREAST_CANCER_TARGET)
    rows = table.sample(400, random_state=11, replace=True).reset_index(drop=True)
    model = champion.model
    classes = [str(c) for c in model.classes_]
    probabilities = model.predict_proba(rows)
    stamp = dt.datetime.fromisoformat(DAY).replace(hour=8, tzinfo=dt.timezone.utc)
    names = list(rows.columns)
    name, version = champion.resources["mlflow_tracking"].registered_model_name, str(
        champion.version)

    def record(i, values, p, **changes):
        fields = {"timestamp": stamp + dt.timedelta(seconds=i), "request_id": f"r{i}",
                  "row_index": 0, "model_name": name, "model_version": version,
                  "feature_names": names, "feature_values": values.tolist(),
                  "prediction": classes[int(p.argmax())],
                  "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
                  "input_flags": "mean radius:out_of_range" if i % 50 == 0 else ""}
        return PredictionRecord(**{**fields, **changes})

    records = [record(i, v, p) for i, (v, p) in enumerate(
        zip(rows.to_numpy(dtype=float), probabilities, strict=True))]
    records += [record(i, rows.iloc[i].to_numpy(dtype=float), probabilities[i],
                       variant="shadow", model_version="99") for i in range(20)]
    records += [record(i, rows.iloc[i].to_numpy(dtype=float), probabilities[i],
                       variant="canary", prediction="", probabilities={},
                       error="RuntimeError: boom") for i in range(20, 25)]
    records += [record(1000 + i, rows.iloc[i].to_numpy(dtype=float), probabilities[i],
                       model_name="another") for i in range(15)]
    order = np.random.default_rng(3).permutation(len(records))
    with SQLitePredictionLog(champion.root / "log.db") as log:
        for start in range(0, len(records), 37):
            log.append_many([records[k] for k in order[start:start + 37]]).result(30)
    return pd.DataFrame({"request_id": [f"r{i}" for i in range(400)],
                         "prediction": [classes[int(p.argmax())] for p in probabilities]})


def test_a_log_day_above_the_memory_limit_is_judged_from_its_segments(champion, instance):
    answered = _write_log(champion)
    labels = champion.root / "labels"
    labels.mkdir(exist_ok=True)
    truth = answered["prediction"].to_numpy()[:40].copy()
    truth[:9] = np.where(truth[:9] == "benign", "malignant", "benign")
    pd.DataFrame({"request_id": answered["request_id"][:40], "label": truth}).to_csv(
        labels / f"{DAY}.csv", index=False)
    stored_profile = profile_asset(champion, instance)

    def run(resources, selection=MONITORED, **kwargs):
        result = materialize([stored_profile, production_data, drift_scores,
                              estimated_performance, live_performance],
                             selection=AssetSelection.assets(*selection), partition_key=DAY,
                             instance=instance, resources=resources, **kwargs)
        metadata = {e.materialization.asset_key.path[-1]: e.materialization.metadata
                    for e in result.get_asset_materialization_events()}
        return result, metadata

    whole, whole_meta = run(champion.resources)
    whole_sketch = read_sketch(whole_meta["production_data"]["drift_sketch"].value)
    small = {**champion.resources, "production": ProductionDataResource(**{
        **champion.resources["production"].model_dump(), "log_rows_in_memory": 100,
        "log_segment_rows": 90})}
    kept, kept_meta = run(small)
    assert whole.success and kept.success
    assert len(whole.output_for_node("production_data")) == 400
    assert len(kept.output_for_node("production_data")) == 0
    day, one = kept_meta["production_data"], whole_meta["production_data"]
    assert day[LOG_IN_PLACE].value == 400 and LOG_IN_PLACE not in one
    assert day["log_rows_read"].value == 440
    for key in ("dagster/row_count", "from_prediction_log", "excluded_rows", "flagged_rows",
                "flags_by_reason", "model_versions", "score_sketch_rows",
                "score_sketch_left_out", "drift_sketch_rows"):
        assert day[key].value == one[key].value, (key, day[key].value, one[key].value)
    assert one["flagged_rows"].value == 8
    assert one["excluded_rows"].value == {"answered by another registered model ('another')": 15}
    same_sketch(read_sketch(day["drift_sketch"].value), whole_sketch)
    for key in ("drift_scores", "estimated_performance"):
        a, b = whole.output_for_node(key), kept.output_for_node(key)
        fields = (("verdict", "per_version") if key == "estimated_performance" else (
            "status", "rows", "day_rows", "drifted_features", "dataset_drifted",
            "dataset_p_value", "prediction_drifted", "prediction_p_value", "judged_from"))
        for field in fields:
            assert a[field] == b[field], (key, field, a[field], b[field])
    live = kept.output_for_node("live_performance")
    assert live == whole.output_for_node("live_performance")
    assert live["all_labelled_rows"] == 40 and live["champion_version"] == str(
        champion.version)
    assert kept_meta["live_performance"]["labelled_share"].value == round(40 / 400, 4)

    # the score sketch file torn: estimated_performance reads the log's segments again
    Path(day["score_sketch"].value).write_bytes(b"torn")
    again, meta = run(small, ["estimated_performance"])
    assert meta["estimated_performance"]["estimated_from"].value == "production_data's rows"
    assert (again.output_for_node("estimated_performance")["per_version"]
            == whole.output_for_node("estimated_performance")["per_version"])

    # no usable drift sketch: drift_scores sketches the day segment by segment, unloaded;
    # where rows are needed (fixed thresholds) it reads them back from the log
    Path(day["drift_sketch"].value).unlink()
    expected = whole.output_for_node("drift_scores")
    value = run(small, ["drift_scores"])[0].output_for_node("drift_scores")
    assert value["judged_from"] == "sketches" and value["loaded_days"] == []
    assert (value["day_rows"], value["dataset_p_value"]) == (400, expected["dataset_p_value"])
    fixed = {"ops": {"drift_scores": {"config": {"calibration": "fixed"}}}}
    value = run(small, ["drift_scores"], run_config=fixed)[0].output_for_node("drift_scores")
    assert value["judged_from"] == "rows" and value["day_rows"] == value["rows"] == 400

    # a commit of the day after production_data's mark is not read by its readers ...
    tracking = champion.resources["mlflow_tracking"]
    with SQLitePredictionLog(champion.root / "log.db") as log:
        late = PredictionRecord(
            dt.datetime.fromisoformat(DAY).replace(hour=23, tzinfo=dt.timezone.utc), "r0",
            1, tracking.registered_model_name, str(champion.version), ["mean radius"],
            [1.0], "benign", {"benign": 1.0, "malignant": 0.0})
        log.append_many([late]).result(30)
    live = run(small, ["live_performance"])[0].output_for_node("live_performance")
    assert live["all_labelled_rows"] == 40
    # ... but a log whose rows below it changed is named, with the fix
    with sqlite3.connect(champion.root / "log.db") as conn:
        conn.execute("DELETE FROM prediction_batches WHERE id = (SELECT MIN(id) FROM "
                     "prediction_batches)")
    stale, _ = run(small, ["live_performance"], raise_on_error=False)
    assert not stale.success
    failure = next(e for e in stale.all_events if e.is_step_failure)
    assert f"materialize production_data of {DAY} again" in str(
        failure.step_failure_data.error)
    (labels / f"{DAY}.csv").unlink()
