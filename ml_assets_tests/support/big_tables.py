"""A flights-like table at real size, and one training run over it through the platform's
own code (schema inference and its YAML round trip, the split, the preprocessor, the
served Pipeline), reporting the process's peak RSS. Run as a child process so the peak is
this run's alone: `python -m ml_assets_tests.support.big_tables --rows 300000`."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import pandas as pd

TARGET = "late"
TAIL_NUMBERS = 4_000


def flights_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` flights: `rownames` unique but shuffled and with gaps (R's row names after a
    monthly split and a filter), `tailnum` with TAIL_NUMBERS values of skewed frequency
    (a few missing), a few numeric and low-cardinality columns, and a binary target that
    depends on the delay, the carrier and the tail number."""
    rng = np.random.default_rng(seed)
    tails = np.array([f"N{i:04d}{'ABCDEFGH'[i % 8]}" for i in range(TAIL_NUMBERS)])
    weights = 1.0 / np.arange(1, TAIL_NUMBERS + 1) ** 0.7
    tail_index = rng.choice(TAIL_NUMBERS, rows, p=weights / weights.sum())
    carriers = np.array(["UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX",
                         "FL", "AS", "F9", "YV", "HA", "OO"])
    carrier = rng.integers(0, len(carriers), rows)
    dep_delay = rng.gamma(1.5, 12.0, rows) - 10 + 4 * (carrier % 3)
    dep_delay[rng.random(rows) < 0.02] = np.nan
    score = (np.nan_to_num(dep_delay, nan=15.0) / 20 + (tail_index % 7 == 0) * 0.8
             + rng.normal(0, 0.8, rows))
    frame = pd.DataFrame({
        "rownames": rng.permutation(int(rows * 1.12))[:rows] + 1,
        "month": rng.integers(1, 12, rows),
        "hour": rng.integers(5, 24, rows),
        "carrier": carriers[carrier],
        "origin": rng.choice(["EWR", "JFK", "LGA"], rows),
        "tailnum": tails[tail_index].astype(object),
        "dep_delay": dep_delay.round(),
        "distance": rng.gamma(2.0, 500.0, rows).round().astype(np.int64) + 80,
        "air_time": rng.gamma(2.0, 60.0, rows).round(1),
        TARGET: np.where(score > np.quantile(score, 0.7), "late", "on_time"),
    })
    frame.loc[rng.random(rows) < 0.005, "tailnum"] = None
    return frame


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train(rows: int, seed: int = 0) -> dict:
    """Infer the schema, split, fit the preprocessor and a RandomForest (20 trees, depth
    12: the size of the model is not what this measures) as training does, predict the
    held-out rows with unseen tail numbers; what was decided, the width and the peak."""
    from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
    from ml_assets.core.data.schema_inference import checked_schema
    from ml_assets.core.data.schemas import (
        excluded_columns,
        feature_columns,
        feature_encodings,
        validate_frame,
    )
    from ml_assets.core.modeling.pipeline import ModelParams, build_estimator, fit_final_pipeline

    started = time.monotonic()
    frame = flights_frame(rows, seed)
    after_data = peak_rss_bytes()
    schema = checked_schema(frame, TARGET, name="flights")
    validated, report = validate_frame(frame, schema)
    if not report.passed:
        raise SystemExit(f"the flights frame fails its own schema: {report.message}")
    kinds = feature_columns(schema, TARGET)
    split = split_frame(validated, TARGET, seed=seed, features=kinds,
                        excluded=excluded_columns(schema, TARGET))
    del frame, validated
    preprocessor = build_preprocessor(split.X_train, kinds, k_best=0, task=split.task,
                                      encodings=feature_encodings(schema, TARGET))
    preprocessor.fit(split.X_train, split.y_train)
    width = int(preprocessor.transform(split.X_train.head(5)).shape[1])
    estimator = build_estimator(ModelParams(n_estimators=20, max_depth=12, n_jobs=1,
                                            task=split.task))
    pipeline = fit_final_pipeline(preprocessor, estimator, split.X_train, split.y_train)
    held_out = split.X_test[list(kinds)].copy()
    held_out.iloc[:100, held_out.columns.get_loc("tailnum")] = "N-NEVER-SEEN"
    accuracy = float((pipeline.predict(held_out) == split.y_test.to_numpy()).mean())
    proba = pipeline.predict_proba(held_out.head(100))
    encoder = pipeline.named_steps["preprocess"].named_steps["columns"] \
        .named_transformers_["categorical_top_k"].named_steps["one_hot"]
    return {
        "rows": rows, "train_rows": len(split.X_train), "seconds": time.monotonic() - started,
        "peak_rss_bytes": peak_rss_bytes(), "rss_after_data_bytes": after_data,
        "features": kinds, "excluded": excluded_columns(schema, TARGET),
        "encodings": feature_encodings(schema, TARGET),
        "tailnum_note": schema.columns["tailnum"].metadata.get("note", ""),
        "preprocessed_width": width, "top_k_columns": [
            len(encoder._compute_transformed_categories(i)) for i in
            range(len(encoder.categories_))],
        "tailnum_categories_seen": int(len(encoder.categories_[0])),
        "held_out_accuracy": accuracy, "unseen_proba_finite": bool(np.isfinite(proba).all()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(train(args.rows, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
