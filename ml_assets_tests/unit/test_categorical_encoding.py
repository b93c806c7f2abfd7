"""The categorical encoding rule (ml_assets.core.data.encodings): what inference records,
what the preprocessor applies (bounded width, rare and unseen values in "other"), its ONNX
graph's parity with scikit-learn; and integer identifiers recognised whatever their order."""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
import pytest

from ml_assets.core.artifacts.onnx.gate import compile_and_check
from ml_assets.core.data.encodings import (
    ONE_HOT,
    ONE_HOT_MAX_CATEGORIES,
    ONE_HOT_TOP_K,
    TOP_K_CATEGORIES,
    effective_encoding,
    encoding_for,
)
from ml_assets.core.data.preprocessing import build_preprocessor, split_frame
from ml_assets.core.data.schema_inference import checked_schema, expected_repeats
from ml_assets.core.data.schemas import (
    feature_columns,
    feature_encodings,
    schema_from_yaml,
    schema_yaml,
)
from ml_assets.core.modeling.pipeline import ModelParams, build_estimator, fit_final_pipeline


def _role(schema, name):
    return (schema.columns[name].metadata or {}).get("role", "feature")


def test_the_rule_one_hot_up_to_the_limit_then_top_k():
    assert encoding_for(1) == ONE_HOT
    assert encoding_for(ONE_HOT_MAX_CATEGORIES) == ONE_HOT
    assert encoding_for(ONE_HOT_MAX_CATEGORIES + 1) == ONE_HOT_TOP_K
    assert encoding_for(4_000) == ONE_HOT_TOP_K
    # A record is kept, except a one-hot that would outgrow the limit (a stale schema).
    assert effective_encoding(ONE_HOT_TOP_K, 3) == ONE_HOT_TOP_K
    assert effective_encoding(ONE_HOT, 10) == ONE_HOT
    assert effective_encoding(ONE_HOT, 4_000) == ONE_HOT_TOP_K
    assert effective_encoding(None, 4_000) == ONE_HOT_TOP_K
    with pytest.raises(ValueError, match="unknown categorical encoding 'hashing'"):
        effective_encoding("hashing", 10)


def _table(rows: int = 4_000, values: int = 400, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = np.array([f"T{i:04d}" for i in range(values)], dtype=object)
    weights = 1.0 / np.arange(1, values + 1)
    index = rng.choice(values, rows, p=weights / weights.sum())
    tail = names[index]
    tail[rng.random(rows) < 0.02] = None
    x = rng.normal(size=rows)
    score = x + (index % 5 == 0) + rng.normal(0, 0.5, rows)
    return pd.DataFrame({
        "serial": rng.permutation(int(rows * 1.3))[:rows] + 5_000,  # unnamed, shuffled
        "tail": tail, "colour": rng.choice(["red", "green", "blue"], rows), "x": x,
        "y": np.where(score > 0.5, "yes", "no")})


def test_inference_records_the_encoding_and_the_yaml_keeps_it():
    frame = _table()
    schema = checked_schema(frame, "y")
    assert feature_encodings(schema, "y") == {"tail": ONE_HOT_TOP_K, "colour": ONE_HOT}
    assert f"{TOP_K_CATEGORIES} most frequent values" in schema.columns["tail"].metadata["note"]
    again = schema_from_yaml(schema_yaml(schema))
    assert feature_encodings(again, "y") == {"tail": ONE_HOT_TOP_K, "colour": ONE_HOT}


def test_unique_integers_in_any_order_are_identifiers_but_unique_measurements_are_not():
    frame = _table()
    schema = checked_schema(frame, "y")
    assert _role(schema, "serial") == "identifier"
    assert "unique values within a range" in schema.columns["serial"].metadata["note"]
    # R's row names, shuffled with gaps, and under their own name.
    rng = np.random.default_rng(2)
    named = pd.DataFrame({"rownames": rng.choice(np.arange(1, 10_000), 60, replace=False),
                          "x": rng.normal(size=60), "y": ["a", "b"] * 30})
    assert _role(checked_schema(named, "y"), "rownames") == "identifier"
    # 200 unique incomes between 20,000 and 200,000: repeats were unlikely anyway.
    assert expected_repeats(200, 180_000) < 1
    frame = pd.DataFrame({"income": rng.choice(np.arange(20_000, 200_000), 200, replace=False),
                          "x": rng.normal(size=200), "y": ["a", "b"] * 100})
    assert _role(checked_schema(frame, "y"), "income") == "feature"
    # The birthday bound itself: 300,000 unique values in 336,000 is no accident.
    assert expected_repeats(300_000, 336_000) > 90_000
    assert expected_repeats(1, 10) == 0.0


def _fitted(frame: pd.DataFrame, k_best: int = 0):
    schema = checked_schema(frame, "y")
    kinds = feature_columns(schema, "y")
    split = split_frame(frame, "y", seed=0, features=kinds)
    preprocessor = build_preprocessor(split.X_train, kinds, k_best=k_best, task=split.task,
                                      encodings=feature_encodings(schema, "y"))
    return schema, kinds, split, preprocessor.fit(split.X_train, split.y_train)


def test_the_encoder_width_is_bounded_and_other_takes_rare_and_unseen_values():
    schema, kinds, split, preprocessor = _fitted(_table(rows=6_000, values=1_500))
    columns = preprocessor.named_steps["columns"]
    encoder = columns.named_transformers_["categorical_top_k"].named_steps["one_hot"]
    assert len(encoder.categories_[0]) > 500  # hundreds of values seen in training ...
    names = [n for n in columns.get_feature_names_out() if n.startswith("tail_")]
    assert len(names) == TOP_K_CATEGORIES + 1  # ... encoded in 51 columns
    assert names[-1] == "tail_infrequent_sklearn"
    counts = split.X_train["tail"].fillna("__missing__").value_counts()
    frequent, rare = counts.index[0], counts.index[-1]
    rows = split.X_train.head(3).assign(tail=[frequent, rare, "never seen"])
    out = pd.DataFrame(columns.transform(rows), columns=columns.get_feature_names_out())
    assert out.loc[0, f"tail_{frequent}"] == 1 and out.loc[0, "tail_infrequent_sklearn"] == 0
    assert out.loc[1, "tail_infrequent_sklearn"] == 1 and out.loc[1, names[:-1]].sum() == 0
    assert out.loc[2, "tail_infrequent_sklearn"] == 1 and out.loc[2, names[:-1]].sum() == 0
    assert out.shape[1] == 1 + 3 + TOP_K_CATEGORIES + 1  # x, 3 colours, tail


def test_a_recorded_one_hot_that_outgrew_the_limit_stays_bounded():
    frame = _table(rows=3_000, values=300)
    schema = checked_schema(frame, "y")
    kinds = feature_columns(schema, "y")
    split = split_frame(frame, "y", seed=0, features=kinds)
    preprocessor = build_preprocessor(split.X_train, kinds, k_best=0,
                                      encodings={"tail": ONE_HOT, "colour": ONE_HOT})
    preprocessor.fit(split.X_train, split.y_train)
    assert "categorical_top_k" in preprocessor.named_steps["columns"].named_transformers_
    assert preprocessor.transform(split.X_train.head(2)).shape[1] == 1 + 3 + 51


def test_top_k_compiles_to_onnx_with_parity_on_rare_unseen_and_missing_values():
    schema, kinds, split, preprocessor = _fitted(_table(rows=3_000, values=300))
    pipeline = fit_final_pipeline(preprocessor, build_estimator(ModelParams(n_estimators=15)),
                                  split.X_train, split.y_train)
    held = split.X_test[list(kinds)].copy()
    held.iloc[:20, held.columns.get_loc("tail")] = "never seen"
    held.iloc[20:30, held.columns.get_loc("tail")] = None
    data, report = compile_and_check(pipeline, split.X_train, held, split.task)
    assert data is not None and report.passed, report.reason
    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert {"OneHotEncoder", "ReduceSum", "Sub"} <= ops  # the "other" column's graph
