"""Integer features with gaps: pandas holds them as floats, so its clients send 3.0."""

import orjson
import pytest
from pydantic import ValidationError

from serving.model.feature_specs import FeatureSpec
from serving.model.request_models import build_request_models
from serving.protocols import mlflow as invocations
from serving.protocols.mlflow import InvocationError

SPECS = [FeatureSpec("rooms", "integer", True), FeatureSpec("area", "number", False)]


@pytest.fixture(scope="module")
def models():
    return build_request_models(SPECS, max_batch=10)


def test_a_whole_float_is_an_integer_and_a_fraction_is_refused(models):
    record = models.record.model_validate_json(b'{"rooms": 3.0, "area": 1}')
    assert models.row_of(record) == [3, 1.0] and type(models.row_of(record)[0]) is int
    with pytest.raises(ValidationError, match="valid integer"):
        models.record.model_validate_json(b'{"rooms": 3.5, "area": 1}')


def test_pandas_csv_and_split_bodies_with_whole_floats_are_read(models):
    csv = b"rooms,area\n3.0,10.5\n,11.0\n"
    assert invocations.parse_rows(csv, "text/csv", models, 10) == [[3, 10.5], [None, 11.0]]
    split = orjson.dumps({"dataframe_split": {"columns": ["rooms", "area"],
                                              "data": [[4.0, 1.5]]}})
    assert invocations.parse_rows(split, "application/json", models, 10) == [[4, 1.5]]
    with pytest.raises(InvocationError, match="whole number|valid integer"):
        invocations.parse_rows(b"rooms,area\n3.5,1\n", "text/csv", models, 10)
