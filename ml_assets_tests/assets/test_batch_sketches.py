"""Batch scoring's shard sketches: each shard's answered rows sketched against the
champion's reference profile as they stream, written beside the part and named in the
manifest; their merge is exactly the sketch of the day's rows read back, and the day's
production_data takes its batch rows' share of the drift sketch from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection, materialize

from ml_assets import batch
from ml_assets.core.batch.shards import manifest_sketches, read_day, read_manifest
from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.drift.sketch import merge_sketches
from ml_assets.core.drift.sketch_store import SketchBasis, read_sketch
from ml_assets.core.estimation.day_scores import DayScores, sketch_rows
from ml_assets.drift import drift_scores
from ml_assets.estimation import estimated_performance
from ml_assets.in_place import BATCH_IN_PARTS
from ml_assets.monitoring import live_performance, production_data
from ml_assets.resources.production import ProductionDataResource
from ml_assets_tests.support.sketch_champion import profile_asset, same_sketch, sketch_champion

DAY = "2026-11-24"


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mlflow_store):
    return sketch_champion(tmp_path_factory.mktemp("batch_sketches"), mlflow_store, DAY)


RUN_CONFIG = {"ops": {"batch_predictions": {"ops": {"plan_batch_shards": {
    "config": {"shard_rows": 100}}}}}}


def _write_day(root: Path) -> None:
    """300 rows in a Parquet file of six 50-row groups, 40 rows in a CSV file."""
    table = load_breast_cancer_frame()
    folder = root / "in" / DAY
    if folder.exists():  # written by an earlier test of the module
        return
    folder.mkdir(parents=True)
    rows = table.drop(columns=BREAST_CANCER_TARGET).sample(300, random_state=4, replace=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                   folder / "big.parquet", row_group_size=50)
    table.sample(40, random_state=5).to_csv(folder / "small.csv", index=False)


def test_shards_write_sketches_that_merge_into_the_days_sketch(champion, instance):
    _write_day(champion.root)
    result = materialize([batch.batch_predictions], partition_key=DAY, instance=instance,
                         resources=champion.resources, run_config=RUN_CONFIG)
    assert result.success
    manifest = read_manifest(champion.out)
    basis = SketchBasis(champion.profile, champion.version)
    paths = manifest_sketches(champion.out, manifest, basis.digest)
    assert paths is not None and len(paths) == len(manifest["parts"]) == 4
    assert all(p.name.endswith(".sketch.npz") and p.parent == (champion.out / m["path"]).parent
               for p, m in zip(paths, manifest["parts"], strict=True))
    (materialization,) = [e.materialization for e in result.get_asset_materialization_events()]
    assert materialization.metadata["drift_sketches"].value == 4
    assert materialization.metadata["drift_sketch_rows"].value == 340
    merged = merge_sketches(read_sketch(p) for p in paths)
    same_sketch(merged, basis.sketch(read_day(champion.out)))

    # production_data of the day: its batch rows' share of the sketch is the shards'.
    stored_profile = profile_asset(champion, instance)
    day = materialize([stored_profile, production_data], selection=AssetSelection.assets(
        "production_data"), partition_key=DAY, instance=instance,
        resources=champion.resources)
    metadata = next(e.materialization for e in day.get_asset_materialization_events()
                    if e.materialization.asset_key.path == ["production_data"]).metadata
    assert metadata["from_batch"].value == 340
    assert metadata["drift_sketch_from_shards"].value == 340
    assert metadata["drift_sketch_rows"].value == 340
    same_sketch(read_sketch(metadata["drift_sketch"].value),
          basis.sketch(day.output_for_node("production_data")))

    # The score sketches: production_data merges the parts', estimated_performance
    # reads them instead of the rows, and reads the rows when the file is unusable.
    assert metadata["score_sketch_from_shards"].value == 340
    assert metadata["score_sketch_rows"].value == {str(champion.version): 340}
    stored = DayScores.from_bytes(Path(metadata["score_sketch"].value).read_bytes())
    (whole,) = sketch_rows(day.output_for_node("production_data")).versions.values()
    np.testing.assert_array_equal(stored.versions[str(champion.version)].keys,
                                  whole.reordered(stored.versions[str(champion.version)]
                                                  .classes).keys)

    def estimate():
        result = materialize([stored_profile, production_data, estimated_performance],
                             selection=AssetSelection.assets("estimated_performance"),
                             partition_key=DAY, instance=instance,
                             resources=champion.resources)
        assert result.success
        event = next(e.materialization for e in result.get_asset_materialization_events())
        return event.metadata, result.output_for_node("estimated_performance")

    from_sketch, value = estimate()
    assert from_sketch["estimated_from"].value == "production_data's score sketches"
    assert value["per_version"][str(champion.version)]["rows"] == 340, value
    Path(metadata["score_sketch"].value).write_bytes(b"torn")
    from_rows, again = estimate()
    assert from_rows["estimated_from"].value == "production_data's rows"
    assert again["per_version"] == value["per_version"]
    assert value["verdict"] in ("within", "possibly_below", "below")
    assert value["per_version"][str(champion.version)]["estimate"]["binning_error"] == {
        "label_probability": 0.0, "accuracy": 0.0, "roc_auc": 0.0}  # a forest: exact


def test_a_day_above_the_memory_limit_stays_in_its_parts_and_is_judged_the_same(
        champion, instance):
    """batch_rows_in_memory below the day's 340 batch rows: production_data's frame holds
    none of them and names the parts; its drift and score sketches, drift_scores,
    estimated_performance and live_performance (labels for 30 batch rows, read back
    alone) come out as with the rows in memory; a sketch file gone makes drift_scores
    read the parts' rows, with the same verdicts; a day scored again since is named."""
    _write_day(champion.root)
    assert materialize([batch.batch_predictions], partition_key=DAY, instance=instance,
                       resources=champion.resources, run_config=RUN_CONFIG).success

    stored_profile = profile_asset(champion, instance)
    rows = read_day(champion.out)
    labels = champion.root / "labels"
    labels.mkdir(exist_ok=True)
    truth = rows["prediction"].astype(str).to_numpy()[:30].copy()
    truth[:8] = np.where(truth[:8] == "benign", "malignant", "benign")
    pd.DataFrame({"request_id": rows["request_id"][:30], "label": truth}).to_csv(
        labels / f"{DAY}.csv", index=False)
    monitored = ["production_data", "drift_scores", "estimated_performance",
                 "live_performance"]

    def run(resources):
        result = materialize([stored_profile, production_data, drift_scores,
                              estimated_performance, live_performance],
                             selection=AssetSelection.assets(*monitored), partition_key=DAY,
                             instance=instance, resources=resources)
        assert result.success
        metadata = {e.materialization.asset_key.path[-1]: e.materialization.metadata
                    for e in result.get_asset_materialization_events()}
        return result, metadata

    try:
        whole, whole_meta = run(champion.resources)
        whole_sketch = read_sketch(whole_meta["production_data"]["drift_sketch"].value)
        small = {**champion.resources, "production": ProductionDataResource(**{
            **champion.resources["production"].model_dump(), "batch_rows_in_memory": 100})}
        parts, parts_meta = run(small)
    finally:
        (labels / f"{DAY}.csv").unlink()
    assert len(whole.output_for_node("production_data")) == 340
    assert len(parts.output_for_node("production_data")) == 0
    day = parts_meta["production_data"]
    assert day[BATCH_IN_PARTS].value == 340 and day["from_batch"].value == 340
    assert day["dagster/row_count"].value == 340
    assert whole_meta["production_data"][BATCH_IN_PARTS].value == 0
    same_sketch(read_sketch(day["drift_sketch"].value), whole_sketch)
    assert day["score_sketch_rows"].value == {str(champion.version): 340}
    for key in ("drift_scores", "estimated_performance"):
        one, two = whole.output_for_node(key), parts.output_for_node(key)
        fields = (("verdict", "per_version") if key == "estimated_performance" else (
            "status", "rows", "day_rows", "drifted_features", "dataset_drifted",
            "dataset_p_value", "prediction_drifted", "prediction_p_value", "judged_from",
            "loaded_days"))
        for field in fields:
            assert one[field] == two[field], (key, field, one[field], two[field])
    live_one = whole.output_for_node("live_performance")
    live_two = parts.output_for_node("live_performance")
    assert live_two == live_one and live_one["all_labelled_rows"] == 30, live_two
    assert parts_meta["live_performance"]["labelled_share"].value == round(30 / 340, 4)

    # parts without sketches (scored before them, or their files lost): production_data
    # builds the day's sketches from the parts, a record batch at a time
    for path in champion.out.glob("parts/*/*.npz"):
        path.unlink()
    rebuilt, rebuilt_meta = run(small)
    day = rebuilt_meta["production_data"]
    assert day["drift_sketch_from_parts"].value == day["score_sketch_from_parts"].value == 340
    assert day["drift_sketch_from_shards"].value == day["score_sketch_from_shards"].value == 0
    same_sketch(read_sketch(day["drift_sketch"].value), whole_sketch)
    assert (rebuilt.output_for_node("estimated_performance")["per_version"]
            == whole.output_for_node("estimated_performance")["per_version"])

    # no usable drift sketch (a new profile, a lost file): drift_scores sketches the day
    # from its frame and its parts, a record batch at a time, without loading it
    Path(day["drift_sketch"].value).unlink()

    def drift(run_config=None):
        result = materialize([stored_profile, production_data, drift_scores],
                             selection=AssetSelection.assets("drift_scores"),
                             partition_key=DAY, instance=instance, resources=small,
                             run_config=run_config)
        assert result.success
        return result.output_for_node("drift_scores")

    expected = whole.output_for_node("drift_scores")
    value = drift()
    assert value["judged_from"] == "sketches" and value["loaded_days"] == []
    assert value["day_rows"] == 340
    assert (value["dataset_drifted"], value["dataset_p_value"]) == (
        expected["dataset_drifted"], expected["dataset_p_value"])
    # where the rows are needed (the fixed thresholds), the parts' rows are read too
    fixed = {"ops": {"drift_scores": {"config": {"calibration": "fixed"}}}}
    value = drift(fixed)
    assert value["judged_from"] == "rows" and value["loaded_days"] == [DAY]
    assert value["day_rows"] == value["rows"] == 340

    # the day scored again: the parts production_data named are gone, and it says so
    assert materialize([batch.batch_predictions], partition_key=DAY, instance=instance,
                       resources=champion.resources, run_config={"ops": {
                           "batch_predictions": {"ops": {"plan_batch_shards": {
                               "config": {"shard_rows": 170}}}}}}).success
    stale = materialize([stored_profile, production_data, drift_scores],
                        selection=AssetSelection.assets("drift_scores"), partition_key=DAY,
                        instance=instance, resources=small, raise_on_error=False)
    assert not stale.success
    failure = next(e for e in stale.all_events if e.is_step_failure)
    assert "materialize production_data of" in str(failure.step_failure_data.error)
