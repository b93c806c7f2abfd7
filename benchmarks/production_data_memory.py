"""What monitoring a batch-scored day costs in memory: a day scored into parts as
`batch_predictions` scores it, then read back the way `production_data` reads it
(`ProductionDataResource.batch_predictions(day)`: every part into one frame, the feature
columns included), in a fresh process whose peak RSS (VmHWM) is measured.

    python benchmarks/production_data_memory.py                 # 1M and 2M rows
    python benchmarks/production_data_memory.py --rows 1000000,4000000
    python benchmarks/production_data_memory.py --in-parts --rows 1000000,4000000

--in-parts: the day left in its parts (above ML_BATCH_ROWS_IN_MEMORY) as production_data
then handles it: the parts' score sketches merged, and, as when the parts have none, the
day's score sketches and drift sketch built from the parts a record batch at a time.

Setup as bench_scale.py's (30 generated features, a 50-tree forest compiled to ONNX,
Parquet files of --file-rows); the day is scored shard by shard in this process
(`score_shard`, then `publish`), not timed. Reported per size: the reader's peak RSS,
its baseline (the same process before reading: imports and interpreter), the frame's
own memory, and seconds; the per-million-row slope says what a larger day would need.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _score_day(ready: dict, out: Path, day: str, model: str) -> int:
    """The day's files scored into parts with a manifest, as the asset does."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    from ml_assets.core.batch.shard_scoring import open_model, publish, score_shard
    from ml_assets.core.batch.shards import plan_shards
    from ml_assets.core.data.schemas import feature_columns

    files = sorted((Path(ready["input_dir"]) / day).glob("*.parquet"))
    plan = plan_shards(files, day=day, model_name=model, model_version=ready["version"],
                       scored_at="2026-11-20T00:00:00+00:00")
    tags = MlflowClient(ready["tracking_uri"]).get_model_version(model, ready["version"]).tags
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model}/{ready['version']}", dst_path=tmp,
            tracking_uri=ready["tracking_uri"]))
        scoring = open_model(local, dict(tags or {}), "auto")
    day_dir = out / day
    results = [score_shard(plan, shard, scoring, day_dir) for shard in plan.shards]
    features = list(feature_columns(scoring.loaded.schema, scoring.loaded.target))
    outcomes, manifest = publish(plan, results, day_dir, features)
    assert manifest is not None, outcomes
    return int(manifest["rows"])


def _read(out: str, day: str, queue) -> None:
    """production_data's read of the day's batch rows, in this fresh process."""
    from ml_assets.resources.production import ProductionDataResource

    resource = ProductionDataResource(prediction_log_path=str(Path(out) / "log.db"),
                                      landing_dir=str(Path(out) / "landing"),
                                      labels_dir=str(Path(out) / "labels"),
                                      batch_output_dir=out)
    baseline = _peak_mib()
    started = time.perf_counter()
    frame = resource.batch_predictions(day)
    seconds = time.perf_counter() - started
    queue.put({"rows": len(frame), "columns": frame.shape[1], "seconds": seconds,
               "baseline_mib": baseline, "peak_mib": _peak_mib(),
               "frame_mib": float(frame.memory_usage(deep=True).sum()) / 2 ** 20})


def _in_parts(out: str, day: str, profile: str, queue) -> None:
    """What production_data does with a day left in its parts, in this fresh process."""
    from ml_assets.core.batch.shards import manifest_score_sketches
    from ml_assets.core.drift.profile import ReferenceProfile
    from ml_assets.core.drift.sketch import merge_sketches
    from ml_assets.core.drift.sketch_store import SketchBasis
    from ml_assets.core.estimation.score_sketch import ScoreSketch, merge_score_sketches
    from ml_assets.in_place import batch_scores_of
    from ml_assets.resources.production import ProductionDataResource

    resource = ProductionDataResource(prediction_log_path=str(Path(out) / "log.db"),
                                      landing_dir=str(Path(out) / "landing"),
                                      labels_dir=str(Path(out) / "labels"),
                                      batch_output_dir=out)
    manifest = resource.batch_manifest(day)
    assert manifest is not None
    basis = SketchBasis(ReferenceProfile.from_bytes(Path(profile).read_bytes()),
                        str(manifest["model_version"]))
    baseline = _peak_mib()
    clock = time.perf_counter()
    paths = manifest_score_sketches(resource.batch_output_dir_of(day), manifest)
    merged = merge_score_sketches(ScoreSketch.from_bytes(p.read_bytes()) for p in paths or [])
    merge_seconds, merge_peak = time.perf_counter() - clock, _peak_mib()
    clock = time.perf_counter()
    scores = batch_scores_of(resource, day, manifest)
    scores_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    drift = merge_sketches(basis.sketch(rows) for rows in resource.batch_batches(day, manifest))
    drift_seconds = time.perf_counter() - clock
    queue.put({"rows": scores.n_rows, "merged_part_sketches_rows": merged.n_rows if merged
               else 0, "drift_sketch_rows": drift.n_rows, "baseline_mib": baseline,
               "peak_after_merge_mib": merge_peak, "peak_mib": _peak_mib(),
               "merge_seconds": merge_seconds, "score_sketches_seconds": scores_seconds,
               "drift_sketch_seconds": drift_seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,2000000",
                        help="comma-separated day sizes")
    parser.add_argument("--file-rows", type=int, default=1_000_000)
    parser.add_argument("--in-parts", action="store_true",
                        help="the day left in its parts, sketched part by part")
    args = parser.parse_args()
    import bench_scale

    results = []
    for rows in (int(r) for r in args.rows.split(",") if r.strip()):
        with tempfile.TemporaryDirectory(prefix="prod-mem-") as tmp:
            root = Path(tmp)
            ready = bench_scale.setup(root, rows, args.file_rows)
            scored = _score_day(ready, root / "out", bench_scale.DAY, bench_scale.MODEL)
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            process = (context.Process(target=_in_parts, args=(
                str(root / "out"), bench_scale.DAY, ready["profile"], queue))
                if args.in_parts else context.Process(target=_read, args=(
                    str(root / "out"), bench_scale.DAY, queue)))
            process.start()
            answer = queue.get(timeout=1800)
            process.join()
            assert answer["rows"] == scored == rows, (answer, scored, rows)
            results.append(answer)
            print(json.dumps(answer), flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        slope = ((last["peak_mib"] - last["baseline_mib"])
                 - (first["peak_mib"] - first["baseline_mib"])) / (
                     (last["rows"] - first["rows"]) / 1e6)
        print(json.dumps({"peak_mib_per_million_rows": slope,
                          "estimated_20m_rows_gib": (first["peak_mib"] + slope * (
                              20 - first["rows"] / 1e6)) / 1024}))


if __name__ == "__main__":
    main()
