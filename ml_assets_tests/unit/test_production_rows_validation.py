"""Labelled production rows carry only the features and the target (the API never sees
identifiers or datetimes): retraining with them must validate, not fail on the empty
non-feature columns."""

import numpy as np
import pandas as pd

from ml_assets.core.data.schema_inference import checked_schema
from ml_assets.core.data.validation import PRODUCTION_ROWS_ATTR, validate_training_frame


def _frames():
    rng = np.random.default_rng(1)
    n = 100
    source = pd.DataFrame({"customer_id": np.arange(n),
                           "signup": pd.date_range("2020-01-01", periods=n),
                           "x": rng.normal(size=n), "y": rng.choice(["a", "b"], n)})
    schema = checked_schema(source, "y")
    assert schema.columns["customer_id"].metadata["role"] == "identifier"
    assert schema.columns["signup"].metadata["role"] == "datetime"
    production = pd.DataFrame({"x": [0.1, 0.2], "y": ["a", "b"]}).reindex(
        columns=list(source.columns))
    raw = pd.concat([source, production], ignore_index=True)
    raw.attrs[PRODUCTION_ROWS_ATTR] = len(production)
    return source, schema, raw


def test_production_rows_validate_without_the_non_feature_columns():
    source, schema, raw = _frames()
    frame, report = validate_training_frame(raw, schema, "y", None)
    assert report.passed, report.message
    assert len(frame) == len(raw) == report.n_rows
    assert "2 labelled production rows passed" in report.message
    assert frame["x"].tail(2).tolist() == [0.1, 0.2]
    assert frame["customer_id"].tail(2).isna().all()  # not a feature: left empty


def test_a_bad_production_row_is_named_as_production():
    source, schema, raw = _frames()
    raw.loc[len(raw) - 1, "y"] = "zzz"  # a label outside the schema's classes
    _, report = validate_training_frame(raw, schema, "y", None)
    assert not report.passed
    assert report.message.startswith("labelled production rows: ")
    assert "'zzz'" in report.message


def test_without_production_rows_the_whole_schema_applies():
    source, schema, _ = _frames()
    broken = source.copy()
    broken.loc[3, "customer_id"] = np.nan  # an identifier may not be empty in the source
    _, report = validate_training_frame(broken, schema, "y", None)
    assert not report.passed and "customer_id" in report.message
