"""Orchestration overhead: the whole training graph in Dagster vs the same steps as a
plain Python script, in one run, on the default dataset and on a large synthetic one.

    python benchmarks/bench_training.py                   # default + 1,000,000 x 30
    python benchmarks/bench_training.py --large-rows 100000 --repeats 3   # quicker

Each measurement runs in a fresh subprocess (so peak RSS is that variant's own), the
two variants alternate, and the table reports medians and the Dagster/plain ratio.
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

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def run_plain(args: dict) -> dict:
    """The same steps as the graph, as a plain script: load, validate, split, fit the
    preprocessor, cross-validate, final fit, log to MLflow, held-out metrics + picture."""
    import mlflow

    from ml_assets.core.artifacts.saving import log_pipeline
    from ml_assets.core.data.preprocessing import build_preprocessor, feature_kinds, split_frame
    from ml_assets.core.data.provenance import frame_fingerprint
    from ml_assets.core.data.schemas import validate_frame
    from ml_assets.core.modeling import pipeline as modeling
    from ml_assets.core.modeling.metrics import (
        classification_metrics,
        confusion_matrix_png,
        confusion_table,
    )
    from ml_assets.resources import DataSourceResource

    start = time.perf_counter()
    source = DataSourceResource(**args["source"])
    raw = source.load()
    frame_fingerprint(raw)
    schema, _ = source.schema_for(raw)
    frame, report = validate_frame(raw, schema)
    assert report.passed, report.message
    target = source.target_column
    split = split_frame(frame, target, 0.2, 42)
    kinds = feature_kinds(split.X_train, "")
    pre = build_preprocessor(split.X_train, kinds, 20).fit(split.X_train, split.y_train)
    params = modeling.ModelParams(**args["model"])
    estimator = modeling.build_estimator(params)
    cv = modeling.cross_validate_pipeline(pre, estimator, split.X_train, split.y_train,
                                          args["cv_folds"], 42)
    pipeline = modeling.fit_final_pipeline(pre, estimator, split.X_train, split.y_train)
    fingerprint = frame_fingerprint(split.X_train) + frame_fingerprint(split.y_train)
    mlflow.set_tracking_uri(args["tracking_uri"])
    mlflow.set_experiment("bench_plain")
    with mlflow.start_run():
        mlflow.log_params({**args["model"], "cv_folds": args["cv_folds"]})
        mlflow.log_metrics({"cv_mean": cv.mean, "cv_std": cv.std})
        mlflow.set_tag("data_fingerprint", fingerprint)
        info = log_pipeline(pipeline, split.X_train, schema, target)
        proba = pipeline.predict_proba(split.X_test)
        predicted = pipeline.classes_[proba.argmax(axis=1)]
        metrics = classification_metrics(split.y_test, predicted, proba, pipeline.classes_)
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()},
                           model_id=info.model_id)
        png = confusion_matrix_png(confusion_table(split.y_test, predicted, pipeline.classes_))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "confusion_matrix.png").write_bytes(png)
            mlflow.log_artifact(str(Path(tmp) / "confusion_matrix.png"))
    return {"seconds": time.perf_counter() - start, "metrics": metrics}


def run_dagster(args: dict) -> dict:
    """The whole training graph (raw_data .. model_metrics, the `training` group of the
    `train_model` job), materialized in a persistent local instance."""
    from dagster import AssetSelection, DagsterInstance

    from ml_assets.definitions import defs
    from ml_assets.resources import DataSourceResource, MlflowTracking

    model = args["model"]
    run_config = {
        "ops": {"trained_model": {"config": {**{k: v for k, v in model.items()
                                               if k != "max_depth"},
                                            "cv_folds": args["cv_folds"]}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=AssetSelection.groups("training").resolve(defs.resolve_asset_graph()))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as home, DagsterInstance.local_temp(home) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=run_config,
            resources={"data_source": DataSourceResource(**args["source"]),
                       "mlflow_tracking": MlflowTracking(tracking_uri=args["tracking_uri"],
                                                         experiment_name="bench_dagster")})
        assert result.success
        metrics = result.output_for_node("model_metrics")
    return {"seconds": time.perf_counter() - start, "metrics": metrics}


def child(variant: str, args_json: str) -> None:
    args = json.loads(args_json)
    warm_start = time.perf_counter()
    import dagster  # noqa: F401 - import cost is not what is measured
    import mlflow  # noqa: F401
    import sklearn  # noqa: F401

    imports = time.perf_counter() - warm_start
    out = (run_plain if variant == "plain" else run_dagster)(args)
    out.update(peak_rss_gib=_peak_rss_gib(), imports_seconds=imports)
    print("RESULT " + json.dumps(out))


def measure(variant: str, args: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", variant, json.dumps(args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def scenario(name: str, args: dict, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {"plain": [], "dagster": []}
    for i in range(repeats):
        for variant in (("plain", "dagster") if i % 2 == 0 else ("dagster", "plain")):
            result = measure(variant, args)
            runs[variant].append(result)
            print(f"  {name:<28} {variant:<8} {result['seconds']:8.2f} s  "
                  f"peak {result['peak_rss_gib']:.2f} GiB", flush=True)
    plain = statistics.median(r["seconds"] for r in runs["plain"])
    dagster = statistics.median(r["seconds"] for r in runs["dagster"])
    same = runs["plain"][0]["metrics"] == runs["dagster"][0]["metrics"]
    return {"name": name, "plain_s": plain, "dagster_s": dagster, "ratio": dagster / plain,
            "plain_peak": max(r["peak_rss_gib"] for r in runs["plain"]),
            "dagster_peak": max(r["peak_rss_gib"] for r in runs["dagster"]),
            "repeats": repeats, "same_metrics": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--large-rows", type=int, default=1_000_000)
    parser.add_argument("--large-features", type=int, default=30)
    parser.add_argument("--max-iter", type=int, default=100,
                        help="HistGradientBoosting iterations on the large run")
    parser.add_argument("--repeats", type=int, default=5, help="repeats on the default data")
    parser.add_argument("--large-repeats", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as store:
        tracking_uri = f"sqlite:///{store}/mlflow.db"
        import mlflow

        mlflow.MlflowClient(tracking_uri).search_experiments()  # migrations, once
        default = {"source": {"kind": "breast_cancer"}, "tracking_uri": tracking_uri,
                   "cv_folds": 5,
                   "model": {"model_type": "random_forest", "n_estimators": 200}}
        large = {"source": {"kind": "synthetic", "n_rows": args.large_rows,
                            "n_numeric": args.large_features, "seed": 0},
                 "tracking_uri": tracking_uri, "cv_folds": 3,
                 "model": {"model_type": "hist_gradient_boosting", "max_iter": args.max_iter}}
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        rows = [scenario("breast_cancer (569 x 30)", default, args.repeats),
                scenario(f"synthetic ({args.large_rows:,} x {args.large_features})", large,
                         args.large_repeats)]
    print("\n| dataset | plain script (s) | Dagster graph (s) | ratio | peak plain | "
          "peak Dagster | same metrics | runs |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['plain_s']:.2f} | {r['dagster_s']:.2f} | "
              f"{r['ratio']:.2f}x | {r['plain_peak']:.2f} GiB | {r['dagster_peak']:.2f} GiB | "
              f"{'yes' if r['same_metrics'] else 'NO'} | {r['repeats']} |")


if __name__ == "__main__":
    main()
