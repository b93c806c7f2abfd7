"""The Open Inference Protocol (KServe V2) endpoints through tritonclient's HTTP client
against real `python -m serving` processes (uvicorn on 127.0.0.1): a numeric classifier
behind an API key, a classifier with string categoricals and missing values, a
regressor; answers compared with /predict/batch for the same rows, errors in the
protocol's {"error"} shape, rows in the prediction log. The in-process cases are in
ml_assets_tests/api/test_open_inference.py."""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ml_assets.core.data.datasets import SyntheticSpec
from ml_assets.core.prediction_log import SQLitePredictionLog
from ml_assets_tests.support.api_process import ApiProcess, api_process
from ml_assets_tests.support.models import register_new, train_regression, train_synthetic

KEY = "v2-s3cret"
SYNTHETIC = SyntheticSpec(n_rows=600, n_numeric=3, n_categorical=2, n_classes=3,
                          missing_fraction=0.1, seed=3)


# -- models and servers -------------------------------------------------------------

@pytest.fixture(scope="module")
def cancer(cancer_champion):
    return cancer_champion.trained


@pytest.fixture(scope="module")
def synthetic():
    return train_synthetic(SYNTHETIC, n_estimators=10)


@pytest.fixture(scope="module")
def regressor():
    return train_regression()


@dataclass
class Server:
    name: str
    api: ApiProcess
    headers: dict

    @property
    def url(self) -> str:
        return self.api.url

    def client(self) -> triton.InferenceServerClient:  # tritonclient takes host:port
        return triton.InferenceServerClient(url=self.api.address, network_timeout=30)

    def logged(self) -> pd.DataFrame:
        log = SQLitePredictionLog(self.api.prediction_log, read_only=True)
        try:
            return log.read_day(datetime.now(timezone.utc).date())
        finally:
            log.close()


@pytest.fixture(scope="module")
def servers(mlflow_store, tmp_path_factory, cancer_champion, synthetic, regressor):
    """Three processes started together: the breast-cancer classifier (API key on, a
    1 MiB body limit), the synthetic classifier with categoricals, the regressor."""
    tmp = tmp_path_factory.mktemp("open_inference")
    root = mlflow_store["artifact_root"]
    wanted = {"cancer": (lambda: cancer_champion.name,
                         {"ML_API_KEY": KEY, "ML_API_MAX_BODY_BYTES": "1048576"}),
              "synthetic": (lambda: register_new(synthetic, "oip_syn", root), {}),
              "regressor": (lambda: register_new(regressor, "oip_reg", root), {})}
    started: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:  # each server starts once its model is registered
        for key, (name_of, extra) in wanted.items():
            name = name_of()
            api = stack.enter_context(api_process(
                {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
                 "ML_REGISTERED_MODEL_NAME": name, **extra}, tmp, wait=False))
            headers = {"X-API-Key": extra["ML_API_KEY"]} if "ML_API_KEY" in extra else {}
            started[key] = Server(name, api, headers)
        for server in started.values():
            server.api.wait_ready()
        yield started
        for server in started.values():  # all at once; leaving the stack waits for each
            server.api.send(signal.SIGTERM)
    for server in started.values():
        text = server.api.log()
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
