"""Benchmark: which runtime serves each model family, and what a row costs in each, in one
run (issue 21: compiled gradient-boosted trees).

    python benchmarks/bench_model_families.py            # 300 single-row calls per runtime
    python benchmarks/bench_model_families.py --calls 50 # quicker

Per family, the platform's served shape as `ml-platform train` builds it with that
estimator and its library defaults (breast cancer, 569 x 30, binary: `build_preprocessor`
+ the estimator): compiled with the platform's converter and parity gate
(`compile_and_check`), then timed in this process, interleaved:

* onnx row     `CompiledModel.predict_proba` on one row of Python values (the service's
               hot path for the compiled runtime), median over `--calls`;
* sklearn row  `Pipeline.predict_proba` on a one-row DataFrame (the scikit-learn
               runtime's work for one row, without the service around it), median;
* onnx / sklearn 1k  the same for 1,000 rows in one call, per row;
* served row: before / after  what the service's scikit-learn runtime spends on one
               validated row: before issue 21 a DataFrame (`frame_from_rows`) through
               the Pipeline; after, `ServedModel.sklearn_proba`'s path, the rows through
               the numpy replay of the preprocessing (serving/model/row_pipeline.py);
               both under the service's one warning filter, alternating call by call.

A last family is the case compilation refuses: a Pipeline of the user's own step
(ClipScaler, no converter) and a LogisticRegression, behind the platform's preprocessing.

Threads: ONNX Runtime one intra-op thread (as served); the libraries their defaults.
The figures are in-process model costs, not HTTP latencies (benchmarks/bench_serving.py
measures the service).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support package


def families():
    import lightgbm
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from ml_assets_tests.support.user_factory import ClipScaler

    found = {
        "RandomForest (built in, 200 trees)": lambda: RandomForestClassifier(
            n_estimators=200, random_state=42, n_jobs=-1),
        "HistGradientBoostingClassifier": lambda: HistGradientBoostingClassifier(
            random_state=42),
        "lightgbm.LGBMClassifier": lambda: lightgbm.LGBMClassifier(verbose=-1,
                                                                   random_state=42),
        "xgboost.XGBClassifier (labels encoded)": lambda: xgboost.XGBClassifier(
            random_state=42),
        "a Pipeline with your own step (ClipScaler + LogisticRegression)": lambda: Pipeline(
            [("clip", ClipScaler()), ("logit", LogisticRegression(max_iter=1000))]),
    }
    try:  # the `catboost` extra
        import catboost
    except ImportError:
        return found
    found["catboost.CatBoostClassifier (held as CatBoostModel)"] = (
        lambda: catboost.CatBoostClassifier(random_seed=42))
    return found


def _median_seconds(call, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _served_row(pipeline, schema, target: str, row: list, calls: int) -> tuple[float, float]:
    """Median seconds of one validated row on the service's scikit-learn runtime: before
    (a DataFrame through the Pipeline) and after (the rows path), alternating."""
    from ml_assets.core.modeling.jobs import one_job
    from serving.model.feature_specs import feature_specs, frame_from_rows
    from serving.model.row_pipeline import row_pipeline
    from serving.model.served import quiet_warnings

    specs = tuple(feature_specs(schema, target))
    one_job(pipeline)
    with quiet_warnings():
        fast, reason = row_pipeline(pipeline, specs, np.nan)
    if fast is None:
        raise SystemExit(f"no rows path: {reason}")
    before, after = [], []
    with quiet_warnings():
        for _ in range(calls):
            started = time.perf_counter()
            pipeline.predict_proba(frame_from_rows([row], specs))
            middle = time.perf_counter()
            fast.predict_proba([row])
            after.append(time.perf_counter() - middle)
            before.append(middle - started)
    return float(np.median(before)), float(np.median(after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--only", default="", help="only the families whose name has this")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from ml_assets.core.artifacts.onnx.gate import compile_and_check
    from ml_assets.core.artifacts.onnx.parity import rows_of
    from ml_assets.core.artifacts.onnx.runtime import CompiledModel
    from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
    from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
    from ml_assets.core.data.schemas import breast_cancer_schema, feature_columns
    from ml_assets.core.modeling.pipeline import fit_final_pipeline
    from ml_assets.core.modeling.training import platform_estimator

    frame = load_breast_cancer_frame()
    schema = breast_cancer_schema([c for c in frame.columns if c != BREAST_CANCER_TARGET])
    split = split_frame(frame, BREAST_CANCER_TARGET, seed=42)
    kinds = feature_columns(schema, BREAST_CANCER_TARGET)
    X_test = split.X_test[list(kinds)]
    preprocessor = build_preprocessor(split.X_train, kinds, task=split.task).fit(
        split.X_train, split.y_train)
    one_frame = X_test.head(1)
    one_row = rows_of(one_frame)
    many_frame = pd.concat([X_test] * (1000 // len(X_test) + 1)).head(1000)
    many_rows = rows_of(many_frame)

    print("| model | runtime served | parity (max abs diff) | onnx row | sklearn row | "
          "onnx 1k (per row) | sklearn 1k (per row) | served sklearn row: before / after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build in families().items():
        if args.only not in name:
            continue
        pipeline = fit_final_pipeline(preprocessor, platform_estimator(build(), split.y_train),
                                      split.X_train, split.y_train)
        data, report = compile_and_check(pipeline, split.X_train, X_test, split.task)
        runtime = "onnx" if data is not None and report.passed else "sklearn"
        sk_row = _median_seconds(lambda p=pipeline: p.predict_proba(one_frame), args.calls)
        sk_many = _median_seconds(lambda p=pipeline: p.predict_proba(many_frame), 5) / 1000
        if runtime == "onnx":
            compiled = CompiledModel.from_bytes(data, list(split.X_train.columns), split.task,
                                                list(pipeline.classes_))
            onnx_row = _median_seconds(lambda c=compiled: c.predict_proba(one_row), args.calls)
            onnx_many = _median_seconds(lambda c=compiled: c.predict_proba(many_rows), 5) / 1000
            shown = f"{onnx_row * 1e3:.3f} ms", f"{onnx_many * 1e6:.1f} µs"
        else:
            shown = "-", "-"
        served = _served_row(pipeline, schema, BREAST_CANCER_TARGET, one_row[0], args.calls)
        print(f"| {name} | {runtime} | {report.max_probability_diff or 0:.1e} | {shown[0]} | "
              f"{sk_row * 1e3:.2f} ms | {shown[1]} | {sk_many * 1e6:.1f} µs | "
              f"{served[0] * 1e3:.2f} ms / {served[1] * 1e3:.3f} ms |")


if __name__ == "__main__":
    main()
