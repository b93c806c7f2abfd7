"""The Open Inference Protocol (KServe V2) endpoints, in-process (TestClient): the
fine-grained validation cases, a model with every feature kind, and a seeded property
check that the V2 decoding accepts and refuses exactly what /predict's request models
do. tritonclient against real processes: ml_assets_tests/e2e/test_open_inference_process.py.
"""

from __future__ import annotations

import json
import math
import random
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from pydantic import ValidationError

from ml_assets.core.data.schemas import ROLE_KEY
from ml_assets_tests.support.models import register_new, train_frame
from serving.app import create_app
from serving.model.feature_specs import FeatureSpec
from serving.model.input_limits import FLOAT32_MAX
from serving.model.request_models import build_request_models
from serving.protocols.v2.codec import decode_request
from serving.protocols.v2.errors import V2Error
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def cancer(cancer_champion):
    return cancer_champion.trained


@pytest.fixture(scope="module")
def cancer_name(cancer_champion) -> str:
    return cancer_champion.name


# -- in-process: validation ---------------------------------------------------------

def _settings(mlflow_store, name: str, tmp_path: Path, **overrides) -> ServingSettings:
    return ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                           prediction_log_path=tmp_path / f"log_{uuid.uuid4().hex[:6]}.db",
                           poll_seconds=0, **overrides)


@pytest.fixture(scope="module")
def client(mlflow_store, cancer_name, tmp_path_factory):
    app = create_app(_settings(mlflow_store, cancer_name, tmp_path_factory.mktemp("oip_tc"),
                               max_batch=50))
    with TestClient(app) as c:
        yield c


def _tensors(frame: pd.DataFrame, datatype: str = "FP64", nested: bool = True) -> list[dict]:
    return [{"name": c, "shape": [len(frame), 1] if nested else [len(frame)],
             "datatype": datatype,
             "data": [[v] for v in frame[c].tolist()] if nested else frame[c].tolist()}
            for c in frame.columns]


def _infer(client, name: str, body, version: str | None = None, **kwargs):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, **kwargs)


def test_answers_and_shapes_in_process(client, cancer, cancer_name):
    frame = cancer.X_test.head(7)
    expected = client.post("/predict/batch", json={"records": frame.to_dict(orient="records")}
                           ).json()["predictions"]
    labels = [p["prediction"] for p in expected]
    flat = [p["probabilities"][c] for p in expected for c in ("benign", "malignant")]
    for body in ({"inputs": _tensors(frame)}, {"inputs": _tensors(frame, nested=False)},
                 {"inputs": _tensors(frame, "FP32")},
                 {"inputs": [{"name": "x", "shape": [7, 30], "datatype": "FP64",
                              "data": frame.to_numpy().tolist()}]},
                 {"inputs": [{"name": "x", "shape": [7, 30], "datatype": "FP64",
                              "data": frame.to_numpy().ravel().tolist()}]}):
        response = _infer(client, cancer_name, body, headers={"X-Request-ID": "tc-7"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["id"] == "tc-7" and answer["parameters"] == {"request_id": "tc-7"}
        assert answer["outputs"] == [
            {"name": "label", "datatype": "BYTES", "shape": [7], "data": labels},
            {"name": "probabilities", "datatype": "FP64", "shape": [7, 2], "data": flat,
             "parameters": {"classes": ["benign", "malignant"]}}]
    ordered = {"id": "mine", "inputs": _tensors(frame)[::-1],
               "outputs": [{"name": "probabilities"}, {"name": "label"}]}
    answer = _infer(client, cancer_name, ordered, version="1").json()
    assert answer["id"] == "mine"
    assert [o["name"] for o in answer["outputs"]] == ["probabilities", "label"]


def _body(frame: pd.DataFrame, change=None) -> dict:
    body = {"inputs": _tensors(frame)}
    if change is not None:
        change(body)
    return body


def _set(index: int, **fields):
    def change(body):
        body["inputs"][index].update(fields)
    return change


BAD_REQUESTS = {
    "not-json": (b"{oops", 'the body is not valid JSON'),
    "not-an-object": (b"[1, 2]", "the body must be a JSON object with 'inputs'"),
    "unknown-field": (lambda b: b.update(input=[]), 'the request has unknown field(s) "input"'),
    "no-inputs": (lambda b: b.update(inputs=[]), "'inputs' must be a non-empty array"),
    "id-not-string": (lambda b: b.update(id=5), "'id' must be a string"),
    "duplicate": (lambda b: b["inputs"].append(dict(b["inputs"][0])),
                  'input "mean radius" appears more than once'),
    "unknown-input": (lambda b: b["inputs"].append({**b["inputs"][0], "name": "radius"}),
                      'unknown input "radius": this model\'s inputs are its features'),
    "unknown-datatype": (_set(0, datatype="FLOAT"), 'input "mean radius" has unknown datatype '
                         '"FLOAT": use one of BOOL, INT8'),
    "datatype-mismatch": (_set(0, datatype="BYTES"), 'input "mean radius" has datatype BYTES, '
                          'which does not fit the feature (a number): send FP64'),
    "rows-differ": (_set(1, shape=[4, 1]), 'input "mean texture" has 4 rows but input '
                    '"mean radius" has 3: every input must have the same number of rows'),
    "data-length": (lambda b: [t.update(shape=[4], data=[v[0] for v in t["data"]])
                               for t in b["inputs"]],
                    'input "mean radius" has shape [4] (4 values) but its data holds 3'),
    "nested-wrong": (_set(0, data=[[1.0, 2.0], [3.0], [4.0]]),
                     'input "mean radius": nested data does not match shape [3, 1]'),
    "negative-shape": (_set(0, shape=[-3, 1]), 'input "mean radius" has shape [-3, 1]: '
                       'dimensions must be non-negative integers'),
    "float-shape": (_set(0, shape=[3.0, 1]), "dimensions must be non-negative integers"),
    "wide-shape": (_set(0, shape=[1, 3]), 'input "mean radius" has shape [1, 3]: an input '
                   'per feature is [n] or [n, 1]'),
    "huge-shape": (_set(0, shape=[10 ** 12, 1]), "1000000000000 rows exceed the limit of 50 "
                   "rows per request (ML_API_MAX_BATCH)"),
    "string-value": (_set(1, data=[[1.0], ["2.5"], [3.0]]), 'input "mean texture" row 1: '
                     "FP64 data cannot hold a string ('2.5')"),
    "bool-value": (_set(1, data=[[True], [1.0], [3.0]]), 'input "mean texture" row 0: FP64 '
                   'data cannot hold a boolean'),
    "null": (_set(1, data=[[1.0], [None], [3.0]]), 'input "mean texture" row 1: may not be '
             'null (the model was trained without missing values here)'),
    "infinite": (_set(1, data=[[1.0], [2.0], [float("inf")]]), 'input "mean texture" row 2: '
                 'Input should be a finite number'),
    "float32-bound": (_set(1, data=[[1e39], [2.0], [3.0]]), 'input "mean texture" row 0: '
                      'Input should be at most'),
    "int-range": (_set(1, datatype="INT8", data=[[1], [300], [3]]), 'input "mean texture" '
                  'row 1: 300 does not fit INT8 (-128 to 127)'),
    "int-holds-float": (_set(1, datatype="INT64", data=[[1], [2.5], [3]]),
                        "INT64 data cannot hold a number (2.5)"),
    "fp16-range": (_set(1, datatype="FP16", data=[[1.0], [70000.0], [3.0]]),
                   "70000.0 is beyond FP16's range"),
    "unknown-output": (lambda b: b.update(outputs=[{"name": "prediction"}]),
                       'unknown output "prediction": this model answers "label" and '
                       '"probabilities"'),
    "output-twice": (lambda b: b.update(outputs=[{"name": "label"}, {"name": "label"}]),
                     'output "label" is requested twice'),
    "classification": (lambda b: b.update(outputs=[{"name": "label", "parameters": {
        "classification": 1}}]), "the classification extension is not supported"),
    "binary-input": (_set(0, parameters={"binary_data_size": 24}), "binary tensor data "
                     "extension"),
    "shared-memory": (_set(0, parameters={"shared_memory_region": "r"}), "shared memory"),
    "single-wrong-width": (lambda b: b.update(inputs=[{"name": "x", "shape": [1, 29],
                                                       "datatype": "FP64", "data": [0.0] * 29}]),
                           'input "x" has shape [1, 29], but a single input must be [n, 30]'),
    "single-bytes": (lambda b: b.update(inputs=[{"name": "x", "shape": [1, 30],
                                                 "datatype": "BYTES", "data": ["a"] * 30}]),
                     "a single tensor must be numeric"),
    "single-bad-cell": (lambda b: b.update(inputs=[{"name": "x", "shape": [2, 30],
                                                    "datatype": "FP64",
                                                    "data": [1.0] * 32 + [None] + [1.0] * 27}]),
                        'input "x" column 2 (feature "mean perimeter") row 1: may not be null'),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_400_naming_the_input(client, cancer, cancer_name, case):
    change, expected = BAD_REQUESTS[case]
    body = change if isinstance(change, bytes) else _body(cancer.X_test.head(3), change)
    response = _infer(client, cancer_name, body)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]
    assert expected in response.json()["error"], response.json()["error"]


def test_not_served_not_ready_and_content_types(client, cancer, cancer_name, mlflow_store,
                                                tmp_path, monkeypatch):
    body = _body(cancer.X_test.head(2))
    other = _infer(client, "nobody", body)
    assert other.status_code == 404
    assert other.json() == {"error": f'model "nobody" is not served here; this service serves '
                            f'"{cancer_name}"'}
    version = _infer(client, cancer_name, body, version="3")
    assert version.status_code == 404 and version.json()["error"].startswith(
        f'model "{cancer_name}" version "3" is not loaded; this service serves version 1 of ')
    assert client.get(f"/v2/models/{cancer_name}/versions/3/ready").status_code == 404
    assert client.get("/v2/models/nobody").status_code == 404
    assert client.get("/v2/nowhere").json() == {"error": "Not Found"}
    put = client.put(f"/v2/models/{cancer_name}/infer")
    assert put.status_code == 405 and put.json() == {"error": "Method Not Allowed"}
    assert put.headers["allow"] == "POST"
    for headers in ({"Content-Type": "text/plain"}, {"Content-Encoding": "gzip"}):
        refused = _infer(client, cancer_name, body, headers=headers)
        assert refused.status_code == 415 and set(refused.json()) == {"error"}
    assert _infer(client, cancer_name, body, headers={
        "Content-Type": "application/json; charset=utf-8"}).status_code == 200
    # The prediction log cannot commit: 503 with Retry-After, in the protocol's shape.
    log = client.app.state.service.log
    monkeypatch.setattr(log, "unavailable_reason", lambda: "disk on fire")
    unavailable = _infer(client, cancer_name, body, headers={"X-Request-ID": "r-503"})
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"]
    assert list(unavailable.json()) == ["error"]
    assert "disk on fire" in unavailable.json()["error"]
    assert unavailable.json()["error"].endswith("(request r-503)")
    monkeypatch.undo()
    # No model yet: health answers, readiness and inference are 503 with Retry-After.
    nothing = f"nothing_{uuid.uuid4().hex[:6]}"
    with TestClient(create_app(_settings(mlflow_store, nothing, tmp_path))) as empty:
        assert empty.get("/v2/health/live").json() == {"live": True}
        for response in (empty.get("/v2/health/ready"), empty.get(f"/v2/models/{nothing}/ready"),
                         _infer(empty, nothing, body)):
            assert response.status_code == 503 and response.headers["retry-after"]
            assert "no model version has alias 'champion'" in response.json()["error"]
        assert _infer(empty, "nobody", body).status_code == 404


def test_api_key_guards_inference_and_metadata_only(mlflow_store, cancer_name, cancer,
                                                     tmp_path):
    settings = _settings(mlflow_store, cancer_name, tmp_path, api_key="k", max_body_bytes=4096)
    body = _body(cancer.X_test.head(2))
    with TestClient(create_app(settings)) as keyed:
        for path in ("/v2", "/v2/health/live", "/v2/health/ready",
                     f"/v2/models/{cancer_name}/ready",
                     f"/v2/models/{cancer_name}/versions/1/ready"):
            assert keyed.get(path).status_code == 200, path
        for response in (keyed.get(f"/v2/models/{cancer_name}"), _infer(keyed, cancer_name, body)):
            assert response.status_code == 401
            assert response.json() == {"error": "missing or invalid API key: send X-API-Key or "
                                       "Authorization: Bearer"}
            assert response.headers["www-authenticate"] == "Bearer"
        assert _infer(keyed, cancer_name, body, headers={"Authorization": "Bearer k"}
                      ).status_code == 200
        too_big = _infer(keyed, cancer_name, _body(cancer.X_test.head(40)),
                         headers={"X-API-Key": "k"})
        assert too_big.status_code == 413 and "exceeds the limit of 4096" in too_big.json()["error"]
        body_bytes = json.dumps(_body(cancer.X_test.head(40))).encode()
        streamed = keyed.post(f"/v2/models/{cancer_name}/infer", headers={"X-API-Key": "k"},
                              content=iter([body_bytes[:3000], body_bytes[3000:]]))
        assert streamed.status_code == 413  # no Content-Length: counted while read
        assert streamed.json() == {"error": "request body exceeds the limit of 4096 bytes "
                                   "(ML_API_MAX_BODY_BYTES)"}
        # Other paths keep their own error shape.
        assert keyed.post("/predict", json={}).json()["detail"].startswith("missing or invalid")
        spec = keyed.get("/openapi.json").json()
        infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
        assert infer["security"] and {"400", "401", "404", "413", "415", "503"} <= set(
            infer["responses"])
        assert infer["responses"]["401"]["content"]["application/json"]["schema"][
            "$ref"].endswith("/V2ErrorBody")
        assert "security" not in spec["paths"]["/v2/health/ready"]["get"]


def test_values_near_the_models_limits_match_predict_batch(client, cancer, cancer_name):
    """The served model's own bounds (float32, and where its scaler would overflow) decide
    V2 requests as they decide /predict/batch."""
    frame = cancer.X_test.head(2).copy()
    for column, value in [("mean compactness", 3e38), ("mean compactness", 1e30),
                          ("mean radius", -FLOAT32_MAX), ("mean radius", 3.4e38),
                          ("mean radius", -0.0), ("mean radius", -5.0)]:
        frame.loc[frame.index[1], column] = value
        batch = client.post("/predict/batch", content=json.dumps(
            {"records": frame.to_dict(orient="records")}),
            headers={"Content-Type": "application/json"})
        v2 = _infer(client, cancer_name, {"inputs": _tensors(frame)})
        assert batch.status_code in (200, 422) and v2.status_code in (200, 400)
        assert (batch.status_code == 200) == (v2.status_code == 200), (column, value, v2.text)
        if batch.status_code == 200:  # the same answers
            outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
            assert outputs["label"] == [p["prediction"] for p in batch.json()["predictions"]]
            probabilities = [p["probabilities"][c] for p in batch.json()["predictions"]
                             for c in ("benign", "malignant")]
            assert outputs["probabilities"] == pytest.approx(probabilities, abs=1e-12)
        else:  # both name the feature
            assert column in v2.json()["error"] and column in batch.text
        frame = cancer.X_test.head(2).copy()


def test_hostile_bodies_never_get_a_server_error(client, cancer, cancer_name):
    rng = random.Random(7)
    valid = _body(cancer.X_test.head(2))
    junk = [None, True, -1, 0, 10 ** 30, 1.5, "", "x" * 300, [], [[]], [[[[1]]]], {},
            {"name": []}, [None] * 5, float("nan"), "\u0000", "ü"]

    def mutate(node, depth=0):
        if isinstance(node, dict) and node and rng.random() < 0.7:
            key = rng.choice(list(node))
            node = dict(node)
            node[key] = mutate(node[key], depth + 1) if rng.random() < 0.6 else rng.choice(junk)
            return node
        if isinstance(node, list) and node and rng.random() < 0.7:
            node = list(node)
            i = rng.randrange(len(node))
            node[i] = mutate(node[i], depth + 1) if rng.random() < 0.6 else rng.choice(junk)
            return node
        return rng.choice(junk)

    for _ in range(250):
        body = mutate(valid)
        response = _infer(client, cancer_name, json.dumps(body).encode())
        assert response.status_code in (200, 400), (body, response.text)
        assert response.status_code == 200 or list(response.json()) == ["error"]
    for raw in [b"\xff\xfe{}", b'{"inputs": "\\ud800"}', b"[" * 5000 + b"]" * 5000,
                b'{"inputs": [{"name": "a", "shape": [NaN], "datatype": "FP64", "data": []}]}',
                b'{"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": '
                b'[NaN, "\\udc00"]}]}']:
        response = _infer(client, cancer_name, raw)
        assert response.status_code == 400 and set(response.json()) == {"error"}, raw[:40]


# -- in-process: a model with every feature kind ------------------------------------

@pytest.fixture(scope="module")
def kinds(mlflow_store, tmp_path_factory):
    """Integer, boolean, string (isin, nullable), nullable number features, and an
    identifier column that is no model input."""
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({
        "customer_id": [f"c{i}" for i in range(n)],
        "age": rng.integers(18, 90, n),
        "smoker": rng.random(n) < 0.3,
        "colour": pd.Series(rng.choice(["red", "green", "blue"], n)).where(
            rng.random(n) > 0.1, None),
        "score": pd.Series(rng.normal(size=n)).where(rng.random(n) > 0.1, np.nan)})
    frame["label"] = np.where(frame["age"] + 20 * frame["smoker"] > 60, "high", "low")
    schema = pa.DataFrameSchema({
        "customer_id": pa.Column(str, metadata={ROLE_KEY: "identifier"}),
        "age": pa.Column(int, pa.Check.ge(0)),
        "smoker": pa.Column(bool),
        "colour": pa.Column(str, pa.Check.isin(["red", "green", "blue"]), nullable=True),
        "score": pa.Column(float, nullable=True),
        "label": pa.Column(str, pa.Check.isin(["high", "low"]))}, name="kinds")
    trained = train_frame(frame, schema, "label", n_estimators=10)
    name = register_new(trained, "oip_kinds", mlflow_store["artifact_root"])
    tmp = tmp_path_factory.mktemp("oip_kinds")
    with TestClient(create_app(_settings(mlflow_store, name, tmp, input_policy="reject"))) as c:
        yield SimpleNamespace(client=c, name=name, frame=frame)


def test_every_feature_kind_matches_predict_batch(kinds):
    client, name = kinds.client, kinds.name
    metadata = client.get(f"/v2/models/{name}").json()
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("age", "INT64"), ("smoker", "BOOL"), ("colour", "BYTES"), ("score", "FP64")]
    assert "single_tensor" not in metadata["parameters"]
    records = [{"age": 30, "smoker": True, "colour": "red", "score": 0.5},
               {"age": 71, "smoker": False, "colour": None, "score": None},
               {"age": 45, "smoker": False, "colour": "blue", "score": -1.25}]
    body = {"inputs": [
        {"name": "age", "shape": [3], "datatype": "INT32", "data": [30, 71, 45]},
        {"name": "smoker", "shape": [3, 1], "datatype": "BOOL", "data": [[True], [False], [False]]},
        {"name": "colour", "shape": [3], "datatype": "BYTES", "data": ["red", None, "blue"]},
        {"name": "score", "shape": [3], "datatype": "FP32", "data": [0.5, None, -1.25]},
        {"name": "customer_id", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]}]}
    expected = client.post("/predict/batch", json={"records": records}).json()["predictions"]
    answer = _infer(client, name, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [p["prediction"] for p in expected]
    # Whole FP numbers for an integer feature, NaN for a missing number, a nullable
    # feature left out altogether: all as /predict takes them.
    body["inputs"][0].update(datatype="FP64", data=[30.0, 71.0, 45.0])
    body["inputs"][3].update(datatype="FP64", data=[0.5, math.nan, -1.25])  # NaN token
    same = _infer(client, name, body)
    assert same.json()["outputs"] == answer.json()["outputs"]
    without = _infer(client, name, {"inputs": [t for t in body["inputs"] if t["name"] != "colour"]})
    assert without.status_code == 200
    for change, message in [
            ((0, "data", [30.5, 71.0, 45.0]), 'input "age" row 0: Input should be a valid integer'),
            ((0, "data", [30, -1, 45]), 'input "age" row 1: Input should be greater than or equal '
                                        'to 0'),
            ((1, "datatype", "INT8"), 'input "smoker" has datatype INT8, which does not fit the '
                                      'feature (a boolean): send BOOL'),
            ((1, "data", [[1], [0], [0]]), "BOOL data cannot hold an integer"),
            ((2, "data", ["red", "pink", "teal"]), 'input "colour" row 1: Input should be '
                                                   "'red', 'green' or 'blue' (and 1 more rows)"),
            ((2, "data", ["red", 1.5, None]), "BYTES data cannot hold a number")]:
        index, field, value = change
        bad = json.loads(json.dumps(body))
        bad["inputs"][index][field] = value
        response = _infer(client, name, bad)
        assert response.status_code == 400 and message in response.json()["error"], \
            response.json()
    single = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1] * 4}]}
    assert "single [n, 4] tensor is only for models whose features are all numbers" in \
        _infer(client, name, single).json()["error"]


# -- the property check: V2 decoding accepts and refuses what /predict does ---------

SPECS = [FeatureSpec("x", "number", False, ge=0.0, le=100.0),
         FeatureSpec("y", "number", True),
         FeatureSpec("k", "integer", False, ge=1, lt=50),
         FeatureSpec("m", "integer", True, allowed=(1, 2, 3)),
         FeatureSpec("b", "boolean", False),
         FeatureSpec("c", "string", True, allowed=("red", "blue")),
         FeatureSpec("s", "string", False, pattern="[a-z]+", max_length=5),
         FeatureSpec("t", "string", True)]
GOOD = {"number": [0.0, -0.0, 1, 7, 99.5, 100.0, 100, 3.25, 1e-320, 55],
        "integer": [1, 2, 3, 10, 49, 7, 3.0, 2.0],
        "boolean": [True, False],
        "string": ["red", "blue", "abc", "z", "hello"]}
BAD = {"number": [None, math.nan, math.inf, -math.inf, -1.0, -1, 100.0000001, 101,
                  FLOAT32_MAX, float(np.nextafter(FLOAT32_MAX, math.inf)), 2 ** 128, -1e39,
                  10 ** 39, True, "1.5"],
       "integer": [None, math.nan, 0, 50, 2.5, 1e20, 2 ** 63, -2 ** 63 - 1, 2 ** 63 - 1,
                   float(2 ** 63), True, "3", 4],
       "boolean": [None, 0, 1, "true"],
       "string": [None, "green", "ABC", "toolong", "", 1, True, "ünï"]}


def _draw(rng: random.Random, spec: FeatureSpec, bad: float):
    if rng.random() < bad:
        return rng.choice(BAD[spec.kind])
    if spec.allowed is not None:
        return rng.choice([*spec.allowed, *(float(v) for v in spec.allowed
                                             if spec.kind == "integer")])
    return rng.choice(GOOD[spec.kind])


# All numbers: requests that take the one-matrix path (and the single-tensor form).
NUMBER_SPECS = [FeatureSpec("x", "number", False, ge=0.0, le=100.0),
                FeatureSpec("y", "number", True),
                FeatureSpec("z", "number", True, gt=-5.0),
                FeatureSpec("w", "number", False)]


def _datatype(rng: random.Random, kind: str, values: list) -> str:
    if kind == "integer":
        return "INT64" if all(type(v) in (int, type(None)) for v in values) else "FP64"
    if kind == "number":  # FP32's range is the float32 bound numbers have anyway
        return rng.choice(["FP64", "FP32"])
    return {"boolean": "BOOL", "string": "BYTES"}[kind]


@pytest.mark.parametrize("specs, policy", [(SPECS, "accept"), (SPECS, "reject"),
                                           (NUMBER_SPECS, "accept"), (NUMBER_SPECS, "reject")],
                         ids=["mixed-accept", "mixed-reject", "numbers-accept",
                              "numbers-reject"])
def test_v2_decoding_is_exactly_as_strict_as_the_request_models(specs, policy):
    """Seeded random batches: a V2 request is answered exactly when /predict's batch
    model accepts the same records, with the same row values (and types); when refused,
    the input and row it names are refused by the record model too."""
    requests = build_request_models(specs, 50, policy=policy)
    model = SimpleNamespace(features=requests.specs, requests=requests, excluded_columns={},
                            feature_names=requests.feature_names, is_regression=False,
                            interval=False, labels=["no", "yes"])
    rng = random.Random(f"v2-{policy}-{len(specs)}")
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(1500):
        n = rng.randint(1, 6)
        bad = rng.choice([0.0, 0.03, 0.1, 0.3])  # some batches clean, some very dirty
        columns = {spec.name: [_draw(rng, spec, bad) for _ in range(n)] for spec in specs
                   if not (spec.nullable and rng.random() < 0.1)}  # nullable may be left out
        records = [{name: values[i] for name, values in columns.items()} for i in range(n)]
        try:
            batch = requests.batch.model_validate({"records": records})
            expected = [requests.row_of(r) for r in requests.records_of(batch)]
        except ValidationError:
            expected = None
        inputs = [{"name": name, "shape": [n] if rng.random() < 0.5 else [n, 1],
                   "datatype": _datatype(rng, spec.kind, values), "data": values}
                  for spec in specs if (name := spec.name) in columns
                  for values in [columns[name]]]
        rng.shuffle(inputs)
        single = specs is NUMBER_SPECS and len(columns) == len(specs) and rng.random() < 0.4
        if single:  # one [n, k] tensor, rows nested or flat
            matrix = [[columns[spec.name][i] for spec in specs] for i in range(n)]
            inputs = [{"name": "input-0", "shape": [n, len(specs)], "datatype": "FP64",
                       "data": matrix if rng.random() < 0.5 else sum(matrix, [])}]
        body = json.dumps({"inputs": inputs}).encode()  # NaN/Infinity as tritonclient writes
        try:
            got = decode_request(body, model, 50).rows
        except V2Error as exc:
            got = None
            assert expected is None, (records, exc.message)
            named = exc.message.split('"')[3 if single else 1]  # single: the column's
            row = int(exc.message.split(" row ")[1].split(":")[0])  # feature
            with pytest.raises(ValidationError) as caught:
                requests.record.model_validate(records[row])
            assert named in {str(e["loc"][0]) for e in caught.value.errors()}, (
                records[row], exc.message)
        if got is not None:
            assert expected is not None, ("V2 accepted what /predict refuses", records)
            assert got == expected, records
            assert [[type(v) for v in row] for row in got] == \
                [[type(v) for v in row] for row in expected]
        outcomes["accepted" if got is not None else "refused"] += 1
    assert min(outcomes.values()) > 200, outcomes  # both sides well exercised
