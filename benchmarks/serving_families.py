"""The per-family table of benchmarks/bench_serving.py: for each model family, the
service's compiled (ONNX Runtime) and scikit-learn runtimes on the same model, in the
same run, rounds interleaved.

Per family, the platform's served shape with the library's defaults on breast cancer
(569 x 30, binary; `ml_assets_tests.support.families.train_family`: the platform's
preprocessor, then the estimator), registered and compiled with its parity gate as the
pipeline does. Two services (`python -m serving`, 1 worker, prediction log on) serve
it: ML_API_RUNTIME=onnx and ML_API_RUNTIME=sklearn. Their answers to the one-row and
the 1,000-row bodies are checked first (labels identical to the Pipeline's,
probabilities within the gate's tolerance; the scikit-learn runtime's equal to 1e-12).
Then `repeats` rounds, each measuring one row on /predict at c=1 and 1,000 rows on
/predict/batch at c=4 on both runtimes, the order of the runtimes alternating from
round to round; every figure is the median over the rounds."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

BATCH_ROWS = 1000
CASES = (("1 row, c=1", False, 1), (f"{BATCH_ROWS:,} rows, c=4", True, 4))
RUNTIMES = ("onnx", "sklearn")


def estimators() -> dict[str, Callable[[], object]]:
    """Family label -> its estimator with the library's defaults (the built-in forest
    with the platform's)."""
    import lightgbm
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ml_assets.core.modeling.pipeline import ModelParams, build_estimator
    from ml_assets_tests.support.user_steps import make_model

    return {
        "RandomForest (built in, 200 trees)": lambda: build_estimator(
            ModelParams(task="binary")),
        "HistGradientBoostingClassifier": lambda: HistGradientBoostingClassifier(
            random_state=42),
        "lightgbm.LGBMClassifier": lambda: lightgbm.LGBMClassifier(verbose=-1,
                                                                   random_state=42),
        "xgboost.XGBClassifier": lambda: xgboost.XGBClassifier(random_state=42),
        "Pipeline(user's CenterScale, HistGradientBoosting)": lambda: make_model(
            "binary", max_iter=100),
    }


def _records(frame) -> list[dict]:
    from ml_assets.core.artifacts.onnx.parity import rows_of

    return [dict(zip(map(str, frame.columns), row, strict=True)) for row in rows_of(frame)]


def register_families(workdir: Path) -> list[dict]:
    """Each family trained, registered (compiled, parity checked) as version 1 and
    champion of its own model; its request bodies written."""
    from mlflow import MlflowClient

    from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV
    from ml_assets_tests.support.families import train_family
    from ml_assets_tests.support.models import experiment_id, register
    from ml_assets_tests.support.user_steps import TRUSTED

    os.environ[TRUSTED_TYPES_ENV] = TRUSTED  # the user's step, reviewed
    families = []
    for index, (label, build) in enumerate(estimators().items()):
        trained = train_family("", "cancer", build())
        name = f"bench_family_{index}"
        register(trained, name, experiment_id(name, (workdir / "artifacts").as_uri()),
                 compile=True)
        tags = MlflowClient().get_model_version(name, "1").tags
        rng = np.random.default_rng(index)
        batch = trained.X_test.iloc[rng.integers(0, len(trained.X_test), BATCH_ROWS)]
        one = trained.X_test.iloc[[0]]
        bodies = {"single": workdir / f"{name}_1.json", "batch": workdir / f"{name}_1000.json"}
        # json.dumps writes floats exactly (pandas' to_json rounds to 10 digits)
        bodies["single"].write_text(json.dumps(_records(one)[0]))
        bodies["batch"].write_text(json.dumps({"records": _records(batch)}))
        families.append({"label": label, "name": name, "trained": trained, "batch": batch,
                         "one": one, "bodies": bodies, "parity": tags.get("onnx.parity"),
                         "reason": tags.get("onnx.parity.reason", ""),
                         "max_dp": tags.get("onnx.parity.max_probability_diff")})
        print(f"registered {label}: onnx.parity={tags.get('onnx.parity')} "
              f"max |dp|={tags.get('onnx.parity.max_probability_diff')} "
              f"{tags.get('onnx.parity.reason', '')}", flush=True)
    return families


def check_answers(url: str, runtime: str, family: dict) -> str:
    """The service's answers to both bodies against the Pipeline's; raises when they
    differ. Returns the largest probability difference, formatted."""
    from ml_assets.core.artifacts.onnx.parity import PROBABILITY_TOLERANCE

    model = httpx.get(f"{url}/model", timeout=30).json()
    if model["runtime"] != runtime:
        raise AssertionError(f"{family['label']}: /model says runtime {model['runtime']} "
                             f"({model['runtime_reason']}), not {runtime}")
    pipeline = family["trained"].pipeline
    classes = [str(c) for c in pipeline.classes_]
    worst = 0.0
    for frame, body, path in ((family["one"], family["bodies"]["single"], "/predict"),
                              (family["batch"], family["bodies"]["batch"], "/predict/batch")):
        response = httpx.post(url + path, content=body.read_bytes(), timeout=60,
                              headers={"Content-Type": "application/json"})
        response.raise_for_status()
        answer = response.json()
        answers = answer["predictions"] if "predictions" in answer else [answer]
        labels = [a["prediction"] for a in answers]
        if labels != [str(c) for c in pipeline.predict(frame)]:
            raise AssertionError(f"{family['label']} ({runtime}): labels differ from the "
                                 "Pipeline's")
        served = np.array([[a["probabilities"][c] for c in classes] for a in answers])
        diff = float(np.abs(served - pipeline.predict_proba(frame)).max())
        limit = PROBABILITY_TOLERANCE if runtime == "onnx" else 1e-12
        if diff > limit:
            raise AssertionError(f"{family['label']} ({runtime}): probabilities differ by "
                                 f"{diff:.2e} (> {limit:g})")
        worst = max(worst, diff)
    return f"{worst:.1e}"


def run_families(args, load, server: Callable, env: dict, workdir: Path) -> dict:
    """The table's figures: {(family, case, runtime): median result} and the checks."""
    from ml_assets.core.artifacts.loading import TRUSTED_TYPES_ENV

    families = register_families(workdir)
    results: dict[tuple[str, str, str], dict] = {}
    checks: dict[tuple[str, str], str] = {}
    for family in families:
        runtimes = RUNTIMES if family["parity"] == "passed" else ("sklearn",)
        servers = {runtime: server(
            f"{family['label']} {runtime}",
            [sys.executable, "-m", "serving", "--port", "{port}", "--log-level", "warning"],
            {**env, "ML_REGISTERED_MODEL_NAME": family["name"], "ML_API_HOST": "127.0.0.1",
             "ML_API_POLL_SECONDS": "0", "ML_API_MAX_BATCH": str(BATCH_ROWS),
             "ML_API_RUNTIME": runtime, "ML_API_WORKERS": "1",
             TRUSTED_TYPES_ENV: os.environ[TRUSTED_TYPES_ENV],
             "ML_PLATFORM_HOME": str(workdir / f"home-{family['name']}-{runtime}")},
            "/ready", workdir / f"{family['name']}-{runtime}.log") for runtime in runtimes}
        with contextlib.ExitStack() as stack:
            for running in servers.values():
                stack.enter_context(running)
            runs: dict[tuple[str, str], list[dict]] = {}
            for runtime, running in servers.items():
                checks[(family["label"], runtime)] = check_answers(running.url, runtime,
                                                                   family)
                load(running.url + "/predict", family["bodies"]["single"], 4, 2.0, workdir)
                load(running.url + "/predict/batch", family["bodies"]["batch"], 2, 2.0,
                     workdir)
            for round_ in range(args.repeats):
                order = runtimes if round_ % 2 == 0 else tuple(reversed(runtimes))
                for case, is_batch, concurrency in CASES:
                    for runtime in order:
                        url = servers[runtime].url + ("/predict/batch" if is_batch
                                                      else "/predict")
                        body = family["bodies"]["batch" if is_batch else "single"]
                        runs.setdefault((case, runtime), []).append(
                            load(url, body, concurrency, args.seconds, workdir))
            for (case, runtime), measured in runs.items():
                results[(family["label"], case, runtime)] = {
                    key: statistics.median(r[key] for r in measured)
                    for key in ("rps", "p50_ms", "p99_ms")} | {
                    "errors": sum(r["errors"] for r in measured), "runs": measured}
                r = results[(family["label"], case, runtime)]
                print(f"  {family['label']:<52} {case:<16} {runtime:<8} {r['rps']:9.1f} "
                      f"req/s  p50 {r['p50_ms']:8.2f} ms  errors {r['errors']}", flush=True)
    return {"results": results, "checks": checks,
            "parity": {f["label"]: (f["parity"], f["max_dp"], f["reason"]) for f in families}}


def print_families(figures: dict, args) -> None:
    """The per-family table (Markdown)."""
    results, checks = figures["results"], figures["checks"]
    print(f"\n## Per family: compiled vs scikit-learn runtime (median of {args.repeats} "
          f"interleaved rounds x {args.seconds:g} s)\n")
    print("| family | load | onnx p50 ms | sklearn p50 ms | onnx req/s | sklearn req/s | "
          "per row, onnx / sklearn | onnx / sklearn req/s | answers checked (labels, max "
          "abs dp onnx / sklearn) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, (parity, _max_dp, reason) in figures["parity"].items():
        for case, is_batch, _ in CASES:
            rows = BATCH_ROWS if is_batch else 1
            sk = results[(label, case, "sklearn")]
            onnx = results.get((label, case, "onnx"))
            if onnx is None:
                print(f"| {label} | {case} | - | {sk['p50_ms']:.2f} | - | {sk['rps']:,.1f} "
                      f"| - | - | identical, - / {checks[(label, 'sklearn')]} (onnx refused: "
                      f"{reason or parity}) |")
                continue
            errors = onnx["errors"] + sk["errors"]
            # one row: its latency; 1,000 rows at c=4: the service's time per row
            # (1 / rows per second), as a batch's p50 includes waiting for the others
            per_row = (f"{1e6 / (onnx['rps'] * rows):.0f} µs / "
                       f"{1e6 / (sk['rps'] * rows):.0f} µs" if is_batch else
                       f"{onnx['p50_ms']:.2f} ms / {sk['p50_ms']:.2f} ms")
            print(f"| {label} | {case} | {onnx['p50_ms']:.2f} | {sk['p50_ms']:.2f} | "
                  f"{onnx['rps']:,.1f} | {sk['rps']:,.1f} | {per_row} | "
                  f"{onnx['rps'] / sk['rps']:.2f}x | identical, {checks[(label, 'onnx')]} / "
                  f"{checks[(label, 'sklearn')]}{f'; {errors} errors' if errors else ''} |")
