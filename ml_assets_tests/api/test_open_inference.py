"""The Open Inference Protocol (KServe V2) endpoints.

tritonclient's HTTP client against real `python -m serving` processes (uvicorn on
127.0.0.1): a numeric classifier behind an API key, a classifier with string
categoricals and missing values, a regressor; answers compared with /predict/batch for
the same rows, errors in the protocol's {"error"} shape, rows in the prediction log.
In-process (TestClient): the fine-grained validation cases, and a seeded property check
that the V2 decoding accepts and refuses exactly what /predict's request models do.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import tritonclient.http as triton
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from ml_assets.core.data.datasets import SyntheticSpec
from ml_assets.core.data.schemas import ROLE_KEY
from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets_tests.support.models import (
    experiment_id,
    register,
    train_breast_cancer,
    train_frame,
    train_regression,
    train_synthetic,
)
from ml_assets_tests.support.services import free_port, wait_http
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

REPO = Path(__file__).resolve().parents[2]
KEY = "v2-s3cret"
AUTH = {"X-API-Key": KEY}
SYNTHETIC = SyntheticSpec(n_rows=600, n_numeric=3, n_categorical=2, n_classes=3,
                          missing_fraction=0.1, seed=3)


# -- models and servers -------------------------------------------------------------

@pytest.fixture(scope="module")
def cancer():
    return train_breast_cancer(n_estimators=10)


@pytest.fixture(scope="module")
def synthetic():
    return train_synthetic(SYNTHETIC, n_estimators=10)


@pytest.fixture(scope="module")
def regressor():
    return train_regression()


def _registered(trained, mlflow_store, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    register(trained, name, experiment_id(name, mlflow_store["artifact_root"]))
    return name


@pytest.fixture(scope="module")
def cancer_name(cancer, mlflow_store) -> str:
    return _registered(cancer, mlflow_store, "oip_bc")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    prediction_log: Path
    headers: dict

    @property
    def address(self) -> str:  # tritonclient takes host:port
        return self.url.removeprefix("http://")

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=self.address, network_timeout=30)

    def logged(self) -> pd.DataFrame:
        log = SQLitePredictionLog(self.prediction_log, read_only=True)
        try:
            return log.read_day(datetime.now(timezone.utc).date())
        finally:
            log.close()


def _start(tmp: Path, name: str, tracking_uri: str, extra: dict[str, str]) -> Server:
    port = free_port()
    prediction_log = tmp / f"log_{port}.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "ML_REGISTERED_MODEL_NAME": name,
           "ML_API_HOST": "127.0.0.1", "ML_API_PORT": str(port), "ML_API_POLL_SECONDS": "0",
           "ML_PREDICTION_LOG_PATH": str(prediction_log),
           "ML_PLATFORM_HOME": str(tmp / f"home_{port}"), **extra}
    log_path = tmp / f"server_{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "serving", "--log-level", "warning"],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    headers = {"X-API-Key": extra["ML_API_KEY"]} if "ML_API_KEY" in extra else {}
    return Server(name, f"http://127.0.0.1:{port}", process, log_path, prediction_log, headers)


@pytest.fixture(scope="module")
def servers(mlflow_store, tmp_path_factory, cancer_name, synthetic, regressor):
    """Three processes started together: the breast-cancer classifier (API key on, a
    1 MiB body limit), the synthetic classifier with categoricals, the regressor."""
    tmp = tmp_path_factory.mktemp("open_inference")
    wanted = {"cancer": (lambda: cancer_name,
                         {"ML_API_KEY": KEY, "ML_API_MAX_BODY_BYTES": "1048576"}),
              "synthetic": (lambda: _registered(synthetic, mlflow_store, "oip_syn"), {}),
              "regressor": (lambda: _registered(regressor, mlflow_store, "oip_reg"), {})}
    started: dict[str, Server] = {}
    try:  # each server starts as soon as its model is registered
        for key, (name_of, extra) in wanted.items():
            started[key] = _start(tmp, name_of(), mlflow_store["tracking_uri"], extra)
        for server in started.values():
            wait_http(f"{server.url}/ready", server.process,
                      detail=lambda s=server: s.log_path.read_text(errors="replace")[-3000:])
        yield started
    finally:
        for server in started.values():
            server.process.terminate()
        for server in started.values():
            try:
                server.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=30)
        for server in started.values():
            text = server.log_path.read_text(errors="replace")
            assert "Traceback" not in text, text[-3000:]


def _inputs(frame: pd.DataFrame, strings: tuple[str, ...] = ()) -> list[triton.InferInput]:
    """One InferInput per column, JSON data (binary_data=False), shape [n, 1]."""
    inputs = []
    for column in frame.columns:
        if column in strings:
            values = np.array(frame[column].tolist(), dtype=object).reshape(-1, 1)
            tensor = triton.InferInput(column, list(values.shape), "BYTES")
        else:
            values = frame[column].to_numpy(np.float64).reshape(-1, 1)
            tensor = triton.InferInput(column, list(values.shape), "FP64")
        tensor.set_data_from_numpy(values, binary_data=False)
        inputs.append(tensor)
    return inputs


def _batch(server: Server, records: list[dict]) -> list[dict]:
    response = httpx.post(f"{server.url}/predict/batch", json={"records": records},
                          headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as /predict takes them: missing values as null."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


# -- tritonclient against real processes --------------------------------------------

def test_health_and_metadata_through_tritonclient(servers, cancer):
    server = servers["cancer"]
    client = server.client()
    # Health is open; metadata needs the key, as /model does.
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(server.name)
    assert client.is_model_ready(server.name, "1")
    assert not client.is_model_ready(server.name, "2")
    assert not client.is_model_ready("someone_else")
    assert client.get_server_metadata()["extensions"] == []
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata(server.name)
    assert refused.value.status() == "401" and "API key" in refused.value.message()
    metadata = client.get_model_metadata(server.name, headers=server.headers)
    assert metadata == client.get_model_metadata(server.name, "1", headers=server.headers)
    runtime = httpx.get(f"{server.url}/model", headers=server.headers).json().get(
        "runtime", "sklearn")  # the compiled graph answers when it passed its parity gate
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        server.name, ["1"], {"onnx": "onnxruntime", "sklearn": "sklearn"}[runtime])
    assert [i["name"] for i in metadata["inputs"]] == list(cancer.X_test.columns)
    assert {(i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]} == {
        ("FP64", (-1, 1))}
    assert metadata["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2],
         "parameters": {"classes": ["benign", "malignant"]}}]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata(server.name, "7", headers=server.headers)
    assert missing.value.status() == "404"
    assert "version \"7\" is not loaded; this service serves version 1" in \
        missing.value.message()


def test_tritonclient_infer_matches_predict_batch(servers, cancer):
    server = servers["cancer"]
    frame = cancer.X_test.head(60)
    result = server.client().infer(server.name, _inputs(frame), request_id="bc-1",
                                   headers={**server.headers, "X-Request-ID": "triton-bc-1"})
    expected = _batch(server, frame.to_dict(orient="records"))
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == [p["prediction"] for p in expected]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (60, 2)
    np.testing.assert_allclose(probabilities, [[p["probabilities"]["benign"],
                                                p["probabilities"]["malignant"]]
                                               for p in expected], rtol=0, atol=0)
    answer = result.get_response()
    assert (answer["id"], answer["model_name"], answer["model_version"]) == (
        "bc-1", server.name, "1")
    assert answer["parameters"] == {"request_id": "triton-bc-1"}
    # The same rows are in the prediction log, under the request id.
    logged = server.logged()
    rows = logged[logged["request_id"] == "triton-bc-1"]
    assert rows["row_index"].tolist() == list(range(60))
    assert rows["prediction"].tolist() == labels
    np.testing.assert_allclose(rows[list(frame.columns)].to_numpy(dtype=float),
                               frame.to_numpy())


def test_single_fp32_tensor_and_requested_outputs(servers, cancer):
    server = servers["cancer"]
    frame = cancer.X_test.head(25)
    values = frame.to_numpy(np.float32)
    tensor = triton.InferInput("input-0", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values, binary_data=False)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = server.client().infer(server.name, [tensor], model_version="1", outputs=wanted,
                                   headers=server.headers)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None
    # /predict/batch with the same float32-rounded values gives the same answers.
    rounded = pd.DataFrame(values.astype(np.float64), columns=frame.columns)
    expected = _batch(server, rounded.to_dict(orient="records"))
    np.testing.assert_allclose(result.as_numpy("probabilities")[:, 1],
                               [p["probabilities"]["malignant"] for p in expected])


def test_strings_and_missing_values_through_tritonclient(servers, synthetic):
    server = servers["synthetic"]
    frame = synthetic.X_test.head(80).copy()
    strings = tuple(SYNTHETIC.categorical_columns)
    assert frame[list(SYNTHETIC.numeric_columns)].isna().any().any()  # NaN → missing
    # tritonclient cannot send a JSON null in a BYTES tensor (it writes "None"), so
    # missing categories are sent as a category the model never saw: answered (accept
    # policy) and flagged, exactly as /predict answers it.
    for column in strings:
        frame[column] = frame[column].fillna("never-seen")
    client = server.client()
    metadata = client.get_model_metadata(server.name)
    kinds = {i["name"]: (i["datatype"], i["parameters"]["nullable"]) for i in metadata["inputs"]}
    assert kinds == {**{c: ("FP64", True) for c in SYNTHETIC.numeric_columns},
                     **{c: ("BYTES", True) for c in strings}}
    classes = metadata["outputs"][1]["parameters"]["classes"]
    result = client.infer(server.name, _inputs(frame, strings))
    expected = _batch(server, _records(frame))
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == [p["prediction"] for p in expected]
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               [[p["probabilities"][c] for c in classes] for p in expected])
    request_id = result.get_response()["id"]
    logged = server.logged()
    mine = logged[logged["request_id"] == request_id]
    assert len(mine) == 80 and mine["input_flags"].str.contains("unseen_category").any()


def test_regressor_through_tritonclient(servers, regressor):
    server = servers["regressor"]
    frame = regressor.X_test.head(30)
    client = server.client()
    assert [o["name"] for o in client.get_model_metadata(server.name)["outputs"]] == [
        "prediction"]
    result = client.infer(server.name, _inputs(frame))
    expected = _batch(server, frame.to_dict(orient="records"))
    np.testing.assert_allclose(result.as_numpy("prediction"),
                               [p["prediction"] for p in expected])
    assert result.as_numpy("prediction").shape == (30,)


def test_errors_through_tritonclient_and_http(servers, cancer):
    server = servers["cancer"]
    client = server.client()
    frame = cancer.X_test.head(3)

    def refused(**kwargs) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(server.name, **{"inputs": _inputs(frame), "headers": server.headers,
                                         **kwargs})
        return caught.value

    assert refused(headers={}).status() == "401"
    assert refused(model_version="2").status() == "404"
    wrong = refused(inputs=_inputs(frame.drop(columns=["mean area"])))
    assert wrong.status() == "400" and wrong.message() == (
        'input "mean area" is missing: every feature that is not nullable needs an input')
    url = f"{server.url}/v2/models/{server.name}/infer"
    # The binary tensor extension (tritonclient's default binary_data=True, whose header
    # this geventhttpclient refuses to send) is refused, saying what to do instead.
    header = b'{"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64", ' \
             b'"parameters": {"binary_data_size": 240}}]}'
    binary = httpx.post(url, content=header + bytes(240), headers={
        **server.headers, "Inference-Header-Content-Length": str(len(header))})
    assert binary.status_code == 400 and "binary_data=False" in binary.json()["error"]
    with pytest.raises(InferenceServerException) as other:
        client.infer("someone_else", _inputs(frame), headers=server.headers)
    assert other.value.status() == "404"

    # Over the body limit (1 MiB here): 413 in the protocol's shape.
    big = b'{"inputs": [' + b" " * (1024 * 1024) + b"]}"
    response = httpx.post(url, content=big, headers=server.headers)
    assert response.status_code == 413
    assert response.json() == {"error": "request body of 1048590 bytes exceeds the limit of "
                               "1048576 bytes (ML_API_MAX_BODY_BYTES)"}
    # A hostile shape with little data, non-UTF-8 bytes: 400s, never a 500.
    for body in [b'{"inputs": [{"name": "input-0", "shape": [1000000000000, 30], '
                 b'"datatype": "FP32", "data": [1.0]}]}',
                 b'{"inputs": [{"name": "input-0", "shape": [-1, 30], "datatype": "FP32", '
                 b'"data": [1.0]}]}',
                 b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", '
                 b'"data": ["\xff\xfe"]}]}']:
        response = httpx.post(url, content=body, headers=server.headers)
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"}
    metrics = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    # Request metrics are labelled by route template, whatever the path's name/version.
    assert 'endpoint="/v2/models/{name}/infer",method="POST",status="400"' in metrics
    assert 'endpoint="/v2/models/{name}/versions/{version}/infer"' in metrics
    assert "someone_else" not in metrics


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
    name = _registered(trained, mlflow_store, "oip_kinds")
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
