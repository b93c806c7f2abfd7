"""Where one /predict row goes with the scikit-learn runtime, in process: the stages of
the route (decode, frame build, transform, predict, log, respond) timed for the path
before issue 21 (a DataFrame through the Pipeline) and the path after (rows through the
numpy replay of the preprocessing, serving/model/row_pipeline.py), interleaved call by
call in one process. Used by benchmarks/bench_serving.py (`--model`, `--servers`)."""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

STAGES = ("decode (key count, pydantic, row)", "input flags", "frame build (DataFrame)",
          "transform (preprocessing)", "predict (estimator)", "log (1 row committed)",
          "respond (orjson)", "total")


def _leaves(pipeline) -> list:
    from serving.model.row_pipeline import _leaves as leaves

    return leaves(pipeline)


def decode_row(model, body: bytes, columns: int) -> tuple[list[list], float, float]:
    """One /predict body to its row as the handler decodes it, then its input flags:
    (rows, perf_counter after the decoding, after the flags)."""
    from serving.http.key_flood import key_flood

    key_flood(body, columns, 1)
    rows = [model.requests.row_of(model.requests.record.model_validate_json(body))]
    decoded = time.perf_counter()
    model.requests.input_flags(rows)
    return rows, decoded, time.perf_counter()


def log_and_respond(log, model, row: list, proba) -> tuple[float, float]:
    """One answered row committed to `log`, then its /predict answer rendered:
    (perf_counter after the commit, after the rendering)."""
    import orjson

    from ml_assets.core.prediction_log import PredictionRecord

    labels = model.labels
    predicted = labels[int(proba.argmax())]
    probabilities = dict(zip(labels, proba.tolist(), strict=True))
    log.append([PredictionRecord(datetime.now(timezone.utc), "x", 0, model.name,
                                 model.version, model.feature_names, row, predicted,
                                 probabilities, "")]).result(timeout=30)
    logged = time.perf_counter()
    orjson.dumps({"prediction": predicted, "confidence": probabilities[predicted],
                  "probabilities": probabilities, "request_id": "x",
                  "model_name": model.name, "model_version": model.version,
                  "variant": "champion"})
    return logged, time.perf_counter()


def single_row_stages(model, body: bytes, workdir: Path, repeats: int = 300) -> dict:
    """{"before": {stage: median ms}, "after": {...}, "model call": {...}} for one
    /predict row of `model` (a ServedModel on the scikit-learn runtime), the two paths
    alternating. `model call` is the prediction alone as the predict thread runs it:
    `Pipeline.predict_proba(frame)` before, `ServedModel.sklearn_proba(rows)` after
    (locks and warning filter included in both)."""
    from ml_assets.core.prediction_log import open_prediction_log
    from serving.model.served import PREDICT_LOCK, quiet_warnings

    fast = model.rows_pipeline
    if fast is None:
        raise SystemExit(f"no rows path for this model: {model.rows_reason}")
    leaves = _leaves(model.pipeline)
    columns = len(model.feature_names) + len(model.excluded_columns)
    log = open_prediction_log(workdir / "row-stages.db", max_queue_rows=10_000)
    times: dict[str, dict[str, list[float]]] = {
        path: {stage: [] for stage in STAGES} for path in ("before", "after")}
    calls: dict[str, list[float]] = {"before": [], "after": []}

    def one(path: str) -> None:
        t0 = time.perf_counter()
        rows, t1, t2 = decode_row(model, body, columns)
        with PREDICT_LOCK, quiet_warnings():
            if path == "before":
                X = model.frame(rows)
                t3 = time.perf_counter()
                for step in leaves[:-1]:
                    X = step.transform(X)
            else:
                t3 = time.perf_counter()
                X = fast.features(rows)
                for step in fast.rest[:-1]:
                    X = step.transform(X)
            t4 = time.perf_counter()
            proba = leaves[-1].predict_proba(X)
        t5 = time.perf_counter()
        t6, t7 = log_and_respond(log, model, rows[0], proba[0])
        marks = (t0, t1, t2, t3, t4, t5, t6, t7)
        spans = [b - a for a, b in zip(marks, marks[1:], strict=False)] + [t7 - t0]
        for stage, span in zip(STAGES, spans, strict=True):
            times[path][stage].append(span * 1000)

    def call(path: str, rows: list[list]) -> None:
        started = time.perf_counter()
        if path == "before":
            frame = model.frame(rows)
            with PREDICT_LOCK, quiet_warnings():
                model.pipeline.predict_proba(frame)
        else:
            model.sklearn_proba(rows)
        calls[path].append((time.perf_counter() - started) * 1000)

    rows = [model.requests.row_of(model.requests.record.model_validate_json(body))]
    try:
        for _ in range(5):  # warm-up
            one("before")
            one("after")
        for _ in range(repeats):
            for path in ("before", "after"):
                one(path)
                call(path, rows)
    finally:
        log.close(30)
    result = {path: {stage: statistics.median(v) for stage, v in stages.items()}
              for path, stages in times.items()}
    result["model call"] = {path: statistics.median(v) for path, v in calls.items()}
    return result


def print_stages(stages: dict, title: str) -> None:
    print(f"\n| stage of one /predict row, {title} (in-process, median ms) | before "
          "(DataFrame) | after (rows) |")
    print("|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage} | {stages['before'][stage]:.3f} | {stages['after'][stage]:.3f} |")
    calls = stages["model call"]
    print(f"| model call alone (predict thread: frame + Pipeline, or sklearn_proba) | "
          f"{calls['before']:.3f} | {calls['after']:.3f} |")
