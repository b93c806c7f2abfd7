"""One shard step's scoring against a plain ONNX Runtime script over the same rows, with
no Dagster around it: where a step's time goes, without the executor's start-ups.

    python benchmarks/bench_shard_step.py                          # 1,000,000 rows, 3 rounds
    python benchmarks/bench_shard_step.py --baseline /path/to/other/checkout
    python benchmarks/bench_shard_step.py --sketch       # steps also sketch drift

Setup as bench_scale.py's (a 50-tree forest on 30 generated features, registered and
compiled; one Parquet file, row groups of 100,000). Each round runs, each in its own
child process and in this order: the plain script (pyarrow record batches ->
`session.run` on one thread -> prediction and probabilities written as Parquet), this
checkout's `score_shard` over the file as one shard (model download and load timed
apart), and with `--baseline` the same from another checkout (its code first on the
path). Reported: medians of wall and CPU seconds (this process's user + system) of the
scoring alone, ratios to the plain script from the same rounds, and this checkout's
seconds per stage (`ShardResult.seconds`). On a loaded machine trust CPU ratios before
wall ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # children import from their PYTHONPATH


def plain(ready: dict) -> dict:
    """What a person would write with onnxruntime and pyarrow alone (bench_scale's)."""
    from bench_scale import score_plain

    graph = next((Path(ready["root"]) / "art").rglob("model.onnx"))
    started, cpu = time.perf_counter(), time.process_time()
    score_plain(graph.read_bytes(),
                sorted((Path(ready["input_dir"]) / ready["day"]).glob("*.parquet")),
                Path(tempfile.mkdtemp(prefix="plain-", dir=ready["root"])))
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu}


def step(ready: dict) -> dict:
    """`score_shard` over the day's first file as one shard, as a shard step runs it."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    from ml_assets.core.batch.shard_scoring import open_model, score_shard
    from ml_assets.core.batch.shards import plan_shards

    files = sorted((Path(ready["input_dir"]) / ready["day"]).glob("*.parquet"))[:1]
    plan = plan_shards(files, day=ready["day"], model_name=ready["model"],
                       model_version=ready["version"], scored_at="2026-11-20T00:00:00+00:00",
                       shard_rows=10 ** 12)
    started = time.perf_counter()
    tags = MlflowClient(ready["tracking_uri"]).get_model_version(
        ready["model"], ready["version"]).tags
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ready['model']}/{ready['version']}", dst_path=tmp,
            tracking_uri=ready["tracking_uri"]))
        model = open_model(local, dict(tags or {}), "auto")
    load = time.perf_counter() - started
    basis = None
    if ready.get("sketch"):  # as a champion with a stored reference profile is scored
        from ml_assets.core.drift.profile import ReferenceProfile
        from ml_assets.core.drift.sketch_store import SketchBasis

        basis = SketchBasis(ReferenceProfile.from_bytes(Path(ready["profile"]).read_bytes()),
                            str(ready["version"]))
    started, cpu = time.perf_counter(), time.process_time()
    result = score_shard(plan, plan.shards[0], model,
                         Path(tempfile.mkdtemp(prefix="step-", dir=ready["root"])),
                         sketch=basis)
    assert result.passed, result.outcomes
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu,
            "load": load, "seconds": getattr(result, "seconds", {}),
            "pipeline_rows": result.pipeline_rows, "peak_rss_mib": result.peak_rss_mib}


def _run(kind: str, ready_file: Path, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR":
           "false", "MLFLOW_TRACKING_URI": json.loads(ready_file.read_text())["tracking_uri"]}
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(ready_file)],
                          env=env, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} with {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare")
    parser.add_argument("--sketch", action="store_true",
                        help="steps also sketch drift against the setup's reference profile "
                        "(what a champion with a stored profile costs a step)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, ready_file = args.child
        ready = json.loads(Path(ready_file).read_text())
        print(json.dumps((plain if kind == "plain" else step)(ready)))
        return
    sys.path.insert(0, str(ROOT))
    import bench_scale

    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        root = Path(tmp)
        ready = bench_scale.setup(root, args.rows, args.rows)
        ready.update(root=str(root), day=bench_scale.DAY, model=bench_scale.MODEL,
                     sketch=args.sketch)
        ready_file = root / "ready.json"
        ready_file.write_text(json.dumps(ready))
        variants = {"plain": ("plain", ROOT), "step": ("step", ROOT)}
        if args.baseline:
            variants["baseline step"] = ("step", args.baseline.resolve())
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, (kind, code) in variants.items():
                results[name].append(_run(kind, ready_file, code))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{k} {v[-1]['wall']:.2f} s" for k, v in results.items()), flush=True)
    median = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu")}
              for k, v in results.items()}
    summary = {
        "rows": args.rows, "rounds": args.rounds, "drift_sketch": args.sketch,
        "median_seconds": median,
        "ratio_to_plain": {k: {m: median[k][m] / median["plain"][m] for m in ("wall", "cpu")}
                           for k in results if k != "plain"},
        "model_load_seconds": statistics.median(r["load"] for r in results["step"]),
        "step_stages": {s: statistics.median(r["seconds"][s] for r in results["step"])
                        for s in results["step"][0]["seconds"]},
        "pipeline_rows": results["step"][0]["pipeline_rows"],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results["step"]),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
