"""Benchmark: what a tuning trial costs against a plain k-fold CV fit of the same
pipeline on the same data, in one run (issue 11: Optuna tuning).

    python benchmarks/bench_tuning.py                     # 5 repeats x 10 trials
    python benchmarks/bench_tuning.py --quick             # 2 repeats x 4 trials, 3 folds
    python benchmarks/bench_tuning.py --synthetic-rows 20000   # also a larger synthetic frame

Datasets: scikit-learn's breast cancer (569 x 30, binary, f1_weighted, stratified folds)
and diabetes (442 x 10, regression, neg_root_mean_squared_error, plain folds);
optionally a synthetic classification frame (`ml_assets.core.data.datasets.make_synthetic`).
Every pipeline is `build_preprocessor` (impute, scale, SelectKBest) + the platform's
default model, RandomForest with 200 trees (seed 42, n_jobs=-1), refitted in every fold.

Per dataset and repeat, interleaved (plain, fixed, default, plain) so drift of the
machine hits all of them alike; the baseline's median is over both of its runs:

* plain    `cross_validate_pipeline` with the fixed default parameters: the baseline.
* fixed    `tuning.tune` with a one-choice space (n_estimators: [200]), so every trial
           fits exactly the baseline's pipeline on the same folds: trial / plain is the
           pure overhead of tuning (Optuna's sampler and storage, pruning checks, the
           fold loop, cloning).
* default  `tuning.tune` over `DEFAULT_SPACES["random_forest"]` (TPE, median pruner):
           what a typical trial costs, how many trials are pruned, and the fold fits
           pruning saved (the folds a pruned trial skipped, at that trial's own mean
           fold time).

Inside a trial the pipeline's fit and predict calls are timed (a Pipeline subclass),
so "bookkeeping" = trial wall time minus the fold fits and scoring inside it. A trial's
wall time runs from the previous trial's end callback to its own (sampling, storage and
callback included). The optional MLflow column is the cost the training asset adds per
trial: a nested child run in a temporary SQLite store (created and warmed before
timing: its first use runs migrations for seconds) with params, one metric, a tag and
set_terminated. Figures are medians over repeats (per-trial figures: over all trials).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_assets.core.data.preprocessing import build_preprocessor  # noqa: E402
from ml_assets.core.modeling import pipeline as modeling  # noqa: E402
from ml_assets.core.modeling import tuning  # noqa: E402

# Every fit / predict of a TimedPipeline, in order: (kind, seconds).
_CALLS: list[tuple[str, float]] = []


class TimedPipeline(Pipeline):
    """A Pipeline that records how long each fit and predict takes (clone keeps the
    class, so tune's per-fold clones are timed too)."""

    def fit(self, X, y=None, **params):
        started = time.perf_counter()
        try:
            return super().fit(X, y, **params)
        finally:
            _CALLS.append(("fit", time.perf_counter() - started))

    def predict(self, X, **params):
        started = time.perf_counter()
        try:
            return super().predict(X, **params)
        finally:
            _CALLS.append(("predict", time.perf_counter() - started))

    def predict_proba(self, X, **params):
        started = time.perf_counter()
        try:
            return super().predict_proba(X, **params)
        finally:
            _CALLS.append(("predict", time.perf_counter() - started))


@dataclass
class Dataset:
    name: str
    X: pd.DataFrame
    y: pd.Series
    task: str  # "classification" or "regression"
    scoring: str

    @property
    def stratified(self) -> bool:
        return self.task == "classification"

    @property
    def label(self) -> str:
        return f"{self.name} ({len(self.X):,} x {self.X.shape[1]})"


def load_datasets(synthetic_rows: int) -> list[Dataset]:
    from sklearn.datasets import load_diabetes

    from ml_assets.core.data.datasets import (
        BREAST_CANCER_TARGET,
        SyntheticSpec,
        load_breast_cancer_frame,
        make_synthetic,
    )

    cancer = load_breast_cancer_frame()
    diabetes = load_diabetes(as_frame=True).frame
    sets = [Dataset("breast_cancer", cancer.drop(columns=[BREAST_CANCER_TARGET]),
                    cancer[BREAST_CANCER_TARGET], "classification", "f1_weighted"),
            Dataset("diabetes", diabetes.drop(columns=["target"]), diabetes["target"],
                    "regression", "neg_root_mean_squared_error")]
    if synthetic_rows:
        spec = SyntheticSpec(n_rows=synthetic_rows, n_numeric=20, seed=0)
        frame = make_synthetic(spec)
        sets.append(Dataset("synthetic", frame.drop(columns=[spec.target]),
                            frame[spec.target], "classification", "f1_weighted"))
    return sets


def preprocessor(data: Dataset) -> Pipeline:
    """build_preprocessor over every column (all numeric): impute, scale, SelectKBest(20)
    by f_classif, or f_regression for a regression target."""
    return build_preprocessor(data.X, {column: "numeric" for column in data.X.columns}, 20,
                              task=data.task)


def estimator(data: Dataset, **overrides):
    """The platform's default model (RandomForest, 200 trees, seed 42, n_jobs=-1) for the
    dataset's task, as `modeling.build_estimator` builds it; `overrides`: a trial's."""
    task = "regression" if data.task == "regression" else "binary"
    return modeling.build_estimator(modeling.ModelParams(**{"task": task, **overrides}))


def plain_cv(data: Dataset, folds: int, seed: int) -> tuple[float, float]:
    """(seconds, mean score) of the baseline: one k-fold CV of the fixed pipeline, split
    as tune splits (stratified for classification, plain shuffled k-fold for regression)."""
    pre, model = preprocessor(data), estimator(data)
    started = time.perf_counter()
    cv = modeling.cross_validate_pipeline(pre, model, data.X, data.y, folds, seed,
                                          data.scoring, stratified=data.stratified)
    return time.perf_counter() - started, cv.mean


@dataclass
class TuneRun:
    seconds: float
    best_score: float
    trial_s: list[float] = field(default_factory=list)
    work_s: list[float] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    saved_s: float = 0.0


def tune_run(data: Dataset, space: dict, trials: int, folds: int, seed: int) -> TuneRun:
    pre = preprocessor(data)

    def make_pipeline(params: dict) -> Pipeline:
        return TimedPipeline([("preprocess", pre), ("model", estimator(data, **params))])

    run = TuneRun(0.0, float("nan"))
    last_end = [time.perf_counter()]  # when the previous trial ended
    last_call = [0]  # and where its calls end in _CALLS

    def on_trial(record: tuning.TrialRecord) -> None:
        now = time.perf_counter()
        work = sum(seconds for _, seconds in _CALLS[last_call[0]:])
        run.trial_s.append(now - last_end[0])
        run.work_s.append(work)
        run.states.append(record.state)
        done = len(record.fold_scores)
        if record.state == "pruned" and done:
            run.saved_s += (folds - done) * work / done
        last_end[0], last_call[0] = now, len(_CALLS)

    _CALLS.clear()
    started = time.perf_counter()
    last_end[0] = started
    result = tuning.tune(make_pipeline, data.X, data.y, tuning.parse_space(space),
                         n_trials=trials, timeout_seconds=None, seed=seed, folds=folds,
                         scoring=data.scoring, stratified=data.stratified, on_trial=on_trial)
    run.seconds = time.perf_counter() - started
    run.best_score = result.best_score
    return run


class ChildRuns:
    """Nested MLflow child runs in one temporary SQLite store, created and warmed once
    (its first use runs migrations for seconds); None when MLflow is not importable."""

    PARAMS = {"n_estimators": 200, "max_depth": 12, "min_samples_leaf": 3}

    def __init__(self, workdir: Path) -> None:
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.mlflow = mlflow
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.MlflowClient(uri).search_experiments()  # migrations, once, untimed
        mlflow.set_experiment(experiment_name="bench_tuning")
        self.number = 0
        self.time(5)  # warm the store's caches and the code paths, untimed

    def time(self, count: int) -> list[float]:
        """ms per child run (params, one metric, a tag, set_terminated) of one parent."""
        mlflow, timings = self.mlflow, []
        with mlflow.start_run(run_name="tuning-parent"):
            for _ in range(count):
                self.number += 1
                started = time.perf_counter()
                with mlflow.start_run(run_name=f"trial-{self.number}", nested=True):
                    mlflow.log_params(self.PARAMS)
                    mlflow.log_metric("cv_score", 0.95)
                    mlflow.set_tag("trial_state", "complete")
                timings.append(1000 * (time.perf_counter() - started))
        return timings


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement")
    parser.add_argument("--trials", type=int, default=10, help="tuning trials per run")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--synthetic-rows", type=int, default=0,
                        help="also a synthetic frame of this many rows x 20 (0: off)")
    parser.add_argument("--mlflow-runs", type=int, default=30,
                        help="timed MLflow child runs per repeat (0: skip the column)")
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats x 4 trials, 3 folds, 10 MLflow runs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.trials, args.folds = 2, 4, 3
        args.mlflow_runs = min(args.mlflow_runs, 10)
    print(f"{platform.platform()}; {os.cpu_count()} CPUs; Python {platform.python_version()};"
          f" {args.repeats} repeats x {args.trials} trials, {args.folds}-fold CV, seed "
          f"{args.seed}; load average {os.getloadavg()[0]:.2f}", flush=True)
    datasets = load_datasets(args.synthetic_rows)
    fixed_space = {"n_estimators": {"type": "categorical", "choices": [200]}}
    default_space = tuning.DEFAULT_SPACES["random_forest"]
    plain: dict[str, list[tuple[float, float]]] = {}
    tuned: dict[tuple[str, str], list[TuneRun]] = {}
    mlflow_ms: list[float] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench_tuning_"))
    try:
        for data in datasets:  # warm-up, untimed: imports (optuna), first fits
            plain_cv(data, 2, args.seed)
            tune_run(data, fixed_space, 1, 2, args.seed)
        child_runs = None
        if args.mlflow_runs:
            try:
                child_runs = ChildRuns(workdir)
            except ImportError:
                print("MLflow is not importable: no MLflow column", flush=True)
        for repeat in range(args.repeats):
            for data in datasets:
                for variant, space in (("plain", None), ("fixed", fixed_space),
                                       ("default", default_space), ("plain", None)):
                    if space is None:  # the baseline brackets the two tuning runs
                        seconds, score = plain_cv(data, args.folds, args.seed)
                        plain.setdefault(data.name, []).append((seconds, score))
                        print(f"  run {repeat + 1} {data.label:<26} plain    {seconds:7.2f}"
                              f" s  score {score:.4f}", flush=True)
                        continue
                    run = tune_run(data, space, args.trials, args.folds, args.seed)
                    tuned.setdefault((data.name, variant), []).append(run)
                    print(f"  run {repeat + 1} {data.label:<26} {variant:<8} {run.seconds:7.2f}"
                          f" s  best {run.best_score:.4f}  trial median "
                          f"{median(run.trial_s):.2f} s  pruned "
                          f"{run.states.count('pruned')}/{len(run.states)}  saved "
                          f"{run.saved_s:.2f} s", flush=True)
            if child_runs is not None:
                mlflow_ms += child_runs.time(args.mlflow_runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"load average at the end {os.getloadavg()[0]:.2f} (1 min), "
          f"{os.getloadavg()[2]:.2f} (15 min)")
    mlflow_cell = f"{median(mlflow_ms):.1f}" if mlflow_ms else "n/a"
    print(f"\nmedians; trial / plain = per-trial wall time over one plain {args.folds}-fold "
          "CV fit measured in the same run; bookkeeping = trial wall minus the fits and "
          "predictions inside it")
    print("| dataset | variant | plain CV s | tune s | per-trial s | trial / plain | "
          "fits in trial s | bookkeeping ms/trial | pruned | fits saved by pruning s | "
          "MLflow child run ms | same score as plain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    summary = {}
    for data in datasets:
        base = median(s for s, _ in plain[data.name])
        base_score = plain[data.name][0][1]
        for variant in ("fixed", "default"):
            runs = tuned[(data.name, variant)]
            per_trial = median(t for r in runs for t in r.trial_s)
            work = median(w for r in runs for w in r.work_s)
            overhead = median(1000 * (t - w) for r in runs
                              for t, w in zip(r.trial_s, r.work_s, strict=True))
            pruned = median(r.states.count("pruned") for r in runs)
            saved = median(r.saved_s for r in runs)
            total = median(r.seconds for r in runs)
            same = ("yes" if abs(runs[0].best_score - base_score) < 1e-9 else
                    f"no ({runs[0].best_score:.4f})") if variant == "fixed" else "-"
            print(f"| {data.label} | {variant} | {base:.2f} | {total:.2f} | {per_trial:.2f} | "
                  f"{per_trial / base:.3f} | {work:.2f} | {overhead:.1f} | "
                  f"{pruned:g}/{args.trials} | {saved:.2f} | {mlflow_cell} | {same} |")
            summary[f"{data.name} | {variant}"] = {
                "plain_s": base, "tune_s": total, "per_trial_s": per_trial,
                "ratio": per_trial / base, "fits_s": work, "bookkeeping_ms": overhead,
                "pruned": pruned, "saved_s": saved,
                "runs": [r.__dict__ for r in runs]}
    if mlflow_ms:
        print(f"\nMLflow child run (SQLite, warmed): median {median(mlflow_ms):.1f} ms, "
              f"p90 {sorted(mlflow_ms)[int(0.9 * (len(mlflow_ms) - 1))]:.1f} ms over "
              f"{len(mlflow_ms)} runs")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "mlflow_ms": mlflow_ms,
                                         "plain": plain}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"took {time.time() - started:.0f} s")
    sys.exit(code)
