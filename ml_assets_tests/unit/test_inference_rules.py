"""Inference rules on ordinary columns that look like identifiers or constants but are
features, and on columns no table cell should hold."""

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.data.schema_inference import SchemaInferenceError, checked_schema


def _role(schema, name):
    return (schema.columns[name].metadata or {}).get("role", "feature")


def test_unique_integers_are_features_unless_they_count_up_or_are_named_like_ids():
    rng = np.random.default_rng(3)
    n = 200
    frame = pd.DataFrame({
        "income": rng.choice(np.arange(20_000, 200_000), n, replace=False),
        "row_number": np.arange(1, n + 1),
        "order_id": rng.permutation(n) + 10_000,
        "store_id": rng.integers(1, 6, n),
        "key": rng.integers(0, 12, n),  # a musical key, 0-11
        "x": rng.normal(size=n),
        "y": rng.choice(["a", "b"], n)})
    schema = checked_schema(frame, "y")
    assert _role(schema, "income") == "feature"
    assert _role(schema, "row_number") == "identifier"
    assert _role(schema, "order_id") == "identifier"
    assert _role(schema, "store_id") == "feature"
    assert _role(schema, "key") == "feature"


def test_a_column_filled_in_some_rows_only_is_a_nullable_feature_not_a_constant():
    n = 60
    frame = pd.DataFrame({"flag": ["Y", None] * (n // 2), "x": np.arange(n) * 0.5,
                          "y": ["a", "b", "c"] * (n // 3)})
    schema = checked_schema(frame, "y")
    assert _role(schema, "flag") == "feature" and schema.columns["flag"].nullable
    full = frame.assign(flag="Y")
    assert _role(checked_schema(full, "y"), "flag") == "constant"


def test_a_column_of_lists_is_named_not_a_crash():
    frame = pd.DataFrame({"tags": [[1, 2], [3]] * 10, "x": np.arange(20.0),
                          "y": ["a", "b"] * 10})
    with pytest.raises(SchemaInferenceError, match="'tags' holds lists or nested records"):
        checked_schema(frame, "y")


def test_a_schema_that_contradicts_the_task_is_named_with_the_fix():
    from ml_assets.features import task_schema_mismatch

    rng = np.random.default_rng(0)
    numbers = pd.DataFrame({"x": rng.normal(size=80), "y": rng.normal(size=80) * 50})
    regression = checked_schema(numbers, "y", task="regression")
    assert task_schema_mismatch(regression, "y", "regression", "v1") is None
    message = task_schema_mismatch(regression, "y", "multiclass", "file: v1.yaml")
    assert "reads target 'y' as numbers" in message and "str with an isin list" in message
    labels = pd.DataFrame({"x": rng.normal(size=80), "y": ["a", "b"] * 40})
    classes = checked_schema(labels, "y")
    assert task_schema_mismatch(classes, "y", "binary", "v1") is None
    assert "as class labels" in task_schema_mismatch(classes, "y", "regression", "v1")
