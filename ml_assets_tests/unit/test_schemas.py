"""Schemas: declared, inferred and versioned; validation reports that name the problem."""

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.data.datasets import (
    BREAST_CANCER_TARGET,
    SyntheticSpec,
    load_breast_cancer_frame,
    make_synthetic,
)
from ml_assets.core.data.schema_inference import infer_schema
from ml_assets.core.data.schemas import (
    SchemaStore,
    breast_cancer_schema,
    model_signature,
    synthetic_schema,
    validate_frame,
)


@pytest.fixture(scope="module")
def cancer():
    frame = load_breast_cancer_frame()
    features = [c for c in frame.columns if c != BREAST_CANCER_TARGET]
    return frame, breast_cancer_schema(features)


def test_declared_schema_accepts_the_dataset(cancer):
    frame, schema = cancer
    validated, report = validate_frame(frame, schema)
    assert report.passed, report.message
    assert validated.shape == frame.shape


def test_missing_column_wrong_dtype_and_out_of_range_are_named(cancer):
    frame, schema = cancer
    bad = frame.drop(columns=["mean area"]).copy()
    bad["mean radius"] = bad["mean radius"].astype(object)
    bad.loc[3, "mean radius"] = "twelve"
    bad.loc[5, "mean texture"] = -4.0
    bad.loc[7, "mean symmetry"] = 1.5
    _, report = validate_frame(bad, schema)
    assert not report.passed
    assert {"mean area", "mean radius", "mean texture", "mean symmetry"} <= set(
        report.failing_columns)
    assert any("column_in_dataframe" in c for c in report.failing_checks)
    assert any("greater_than_or_equal_to" in c for c in report.failing_checks)
    assert any("coerce" in c or "dtype" in c for c in report.failing_checks)
    assert "-4.0" in set(report.failure_sample["failure_case"])
    assert "mean area" in report.message


def test_synthetic_schema_matches_generator():
    spec = SyntheticSpec(n_rows=200, n_numeric=3, n_categorical=2, n_classes=3,
                         missing_fraction=0.05)
    _, report = validate_frame(make_synthetic(spec), synthetic_schema(spec))
    assert report.passed, report.message


def test_inferred_schema_roundtrips_through_versioned_files(tmp_path):
    frame = make_synthetic(SyntheticSpec(n_rows=300, n_numeric=2, n_categorical=1,
                                         missing_fraction=0.1, seed=2))
    frame["count"] = np.arange(len(frame))
    schema = infer_schema(frame, "label", name="shop")
    assert schema.columns["num_00"].nullable
    assert schema.columns["label"].nullable is False
    store = SchemaStore(tmp_path, "shop")
    assert store.latest() is None
    version, path = store.write(schema)
    assert version == 1 and path.name == "v1.yaml"
    assert "Edit a copy" in path.read_text()
    # A person edits the next version by hand; the highest version wins.
    edited = path.read_text().replace("    - c0\n", "")
    (tmp_path / "shop" / "v2.yaml").write_text(edited)
    latest_version, latest = store.latest()
    assert latest_version == 2
    _, report = validate_frame(frame, latest)
    assert not report.passed and report.failing_columns == ["cat_00"]
    _, report = validate_frame(frame, store.write(schema) and SchemaStore(tmp_path,
                                                                          "shop").latest()[1])
    assert report.passed


def test_broken_schema_file_is_reported(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "v1.yaml").write_text("columns: [unclosed")
    with pytest.raises(ValueError, match="v1.yaml cannot be read"):
        SchemaStore(tmp_path, "d").latest()


def test_inferred_schema_catches_negative_and_unseen_target(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"]})
    schema = infer_schema(frame, "y")
    bad = pd.DataFrame({"x": [-1.0, 2.0], "y": ["a", "z"]})
    _, report = validate_frame(bad, schema)
    assert report.failing_columns == ["x", "y"]


def test_signature_comes_from_schema(cancer):
    _, schema = cancer
    signature = model_signature(schema, BREAST_CANCER_TARGET, np.array(["benign"]))
    names = signature.inputs.input_names()
    assert BREAST_CANCER_TARGET not in names and len(names) == 30
    assert {str(t) for t in signature.inputs.input_types()} == {"DataType.double"}
