"""The HTTP API through FastAPI's TestClient, on real models in the session MLflow store."""

from __future__ import annotations

import dataclasses
import json
import uuid
import warnings
from datetime import datetime, timezone

import numpy as np
import pytest

from ml_assets.core.artifacts.onnx.parity import PROBABILITY_TOLERANCE
from ml_assets.core.prediction_log import SQLitePredictionLog
from serving.app import create_app
from serving.settings import ServingSettings

with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def trained(cancer_champion):
    return cancer_champion.trained


@pytest.fixture(scope="module")
def champion(cancer_champion) -> str:
    """The session's breast-cancer champion (compiled; metric cv_f1_weighted_mean 0.95)."""
    return cancer_champion.name


def make_settings(mlflow_store, name, tmp_path, **overrides) -> ServingSettings:
    return ServingSettings(tracking_uri=mlflow_store["tracking_uri"], model_name=name,
                           prediction_log_path=tmp_path / "prediction_log.db",
                           poll_seconds=0, **overrides)


@pytest.fixture
def client(mlflow_store, champion, tmp_path):
    with TestClient(create_app(make_settings(mlflow_store, champion, tmp_path))) as c:
        yield c


@pytest.fixture
def row(trained) -> dict:
    return trained.X_test.iloc[0].to_dict()


def test_health_ready_ping_and_model(client, champion):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "model_name": champion,
                                           "model_version": "1"}
    assert client.get("/ping").status_code == 200
    assert client.get("/version").text.startswith("3.")
    info = client.get("/model").json()
    assert (info["name"], info["version"], info["alias"]) == (champion, "1", "champion")
    assert info["model_uri"] == f"models:/{champion}/1"
    assert info["metrics"] == {"cv_f1_weighted_mean": 0.95}
    assert info["run_id"] and info["target"] == "diagnosis"
    assert info["classes"] == ["benign", "malignant"]
    radius = next(f for f in info["features"] if f["name"] == "mean radius")
    assert radius == {"name": "mean radius", "kind": "number", "nullable": False, "ge": 0}
    assert len(info["features"]) == 30


def test_predict_one_record(client, champion, trained, row):
    response = client.post("/predict", json=row, headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    body = response.json()
    expected = trained.pipeline.predict_proba(trained.X_test.head(1))[0]
    assert body["prediction"] == trained.pipeline.predict(trained.X_test.head(1))[0]
    assert body["probabilities"] == pytest.approx(dict(zip(["benign", "malignant"], expected,
                                                           strict=True)))
    assert body["confidence"] == pytest.approx(max(expected))
    assert (body["model_name"], body["model_version"]) == (champion, "1")
    assert body["request_id"] == response.headers["x-request-id"] == "abc-123"
    assert client.post("/predict", json=row).json()["request_id"] != "abc-123"


def test_predict_batch_matches_the_pipeline(client, trained):
    records = trained.X_test.head(40).to_dict(orient="records")
    body = client.post("/predict/batch", json={"records": records}).json()
    proba = np.array([[p["probabilities"]["benign"], p["probabilities"]["malignant"]]
                      for p in body["predictions"]])
    # The compiled graph serves (its parity gate: identical labels, probabilities within
    # PROBABILITY_TOLERANCE of the Pipeline's; float32 sums in the tree ensemble).
    assert client.get("/model").json()["runtime"] == "onnx"
    np.testing.assert_allclose(proba, trained.pipeline.predict_proba(trained.X_test.head(40)),
                               rtol=0, atol=PROBABILITY_TOLERANCE)
    assert [p["prediction"] for p in body["predictions"]] == \
        trained.pipeline.predict(trained.X_test.head(40)).tolist()
    assert body["model_version"] == "1" and body["request_id"]


BAD_RECORDS = {
    "missing": (lambda r: r.pop("mean radius"), ["mean radius"], "missing"),
    "extra": (lambda r: r.update(surprise=1), ["surprise"], "extra_forbidden"),
    "mistyped": (lambda r: r.update({"mean radius": "large"}), ["mean radius"], "float_type"),
    "null": (lambda r: r.update({"mean radius": None}), ["mean radius"], "null_not_allowed"),
}


@pytest.mark.parametrize("case", BAD_RECORDS, ids=list(BAD_RECORDS))
def test_bad_record_gets_422_naming_the_field(client, row, case):
    change, loc, kind = BAD_RECORDS[case]
    change(row)
    response = client.post("/predict", json=row)
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == [{"loc": loc, "msg": body["detail"][0]["msg"], "type": kind}]
    assert loc[0] in body["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_feature_gets_422(client, row, literal):
    row["mean texture"] = 0.0
    text = json.dumps(row).replace('"mean texture": 0.0', f'"mean texture": {literal}')
    response = client.post("/predict", content=text,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    expected = ({"type": "null_not_allowed", "msg": "may not be null (the model was trained "
                 "without missing values here)"} if literal == "NaN"  # NaN means missing
                else {"type": "finite_number", "msg": "Input should be a finite number"})
    assert response.json()["detail"] == [{"loc": ["mean texture"], **expected}]


def test_below_check_is_refused_only_under_the_reject_policy(mlflow_store, champion, tmp_path,
                                                            client, row):
    row["mean radius"] = -3.0
    assert client.post("/predict", json=row).status_code == 200  # default: accept
    settings = make_settings(mlflow_store, champion, tmp_path, input_policy="reject")
    with TestClient(create_app(settings)) as strict:
        response = strict.post("/predict", json=row)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["mean radius"]
    assert response.json()["detail"][0]["type"] == "greater_than_equal"


@pytest.mark.parametrize("content", [b"[1, 2]", b"{oops", b""], ids=["list", "bad-json",
                                                                     "empty"])
def test_body_that_is_not_a_record_gets_422(client, content):
    response = client.post("/predict", content=content,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "Traceback" not in response.text


def test_batch_errors_name_the_record(client, trained, mlflow_store, champion, tmp_path):
    records = trained.X_test.head(3).to_dict(orient="records")
    records[2]["mean area"] = "huge"
    body = client.post("/predict/batch", json={"records": records}).json()
    assert body["detail"] == [{"loc": ["records", 2, "mean area"], "type": "float_type",
                               "msg": "Input should be a valid number"}]
    assert client.post("/predict/batch", json={"records": []}).status_code == 422
    assert client.post("/predict/batch", json=records[0]).status_code == 422


def test_batch_over_the_cap_is_refused(mlflow_store, champion, tmp_path, trained):
    settings = make_settings(mlflow_store, champion, tmp_path, max_batch=5)
    with TestClient(create_app(settings)) as client:
        records = trained.X_test.head(6).to_dict(orient="records")
        response = client.post("/predict/batch", json={"records": records})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["records"]
        assert "at most 5" in response.json()["detail"][0]["msg"]
        assert client.post("/predict/batch", json={"records": records[:5]}).status_code == 200
        split = trained.X_test.head(6).to_dict(orient="split")
        response = client.post("/invocations", json={"dataframe_split": split})
        assert response.status_code == 400 and "limit of 5 rows" in response.json()["message"]


def test_oversized_bodies_get_413(mlflow_store, champion, tmp_path, row):
    settings = make_settings(mlflow_store, champion, tmp_path, max_body_bytes=2048)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json=row).status_code == 200  # ~1 KB fits
        big = json.dumps({"records": [row] * 3}).encode()
        response = client.post("/predict/batch", content=big,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert "limit of 2048 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(4):
                yield big[:1000]

        response = client.post("/predict/batch", content=chunks(),
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert "Traceback" not in response.text


def test_without_a_champion_the_service_starts_but_is_not_ready(mlflow_store, tmp_path, row):
    name = f"nothing_{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(make_settings(mlflow_store, name, tmp_path))) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        for method, path, kwargs in [("post", "/predict", {"json": row}),
                                     ("post", "/predict/batch", {"json": {"records": [row]}}),
                                     ("get", "/model", {})]:
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == 503
            assert "no model version has alias 'champion'" in response.json()["detail"]
            assert response.headers["retry-after"]
        response = client.post("/invocations", json={"dataframe_records": [row]})
        assert response.status_code == 503
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert client.get("/ping").status_code == 503
        reload = client.post("/admin/reload", json={})
        assert reload.status_code == 503 and reload.json()["status"] == "no_model"
        assert "ml_api_model_version{model_name=\"" + name + "\"} 0.0" in \
            client.get("/metrics").text


def test_api_key_when_set(mlflow_store, champion, tmp_path, row):
    settings = make_settings(mlflow_store, champion, tmp_path, api_key="s3cret")
    with TestClient(create_app(settings)) as client:
        for path in ("/health", "/ready", "/ping", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        missing = client.post("/predict", json=row)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.post("/predict", json=row,
                           headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/predict", json=row,
                           headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/predict", json=row,
                           headers={"Authorization": "Bearer s3cret"}).status_code == 200
        for method, path in [("get", "/model"), ("get", "/metrics"),
                             ("post", "/admin/reload"), ("post", "/invocations"),
                             ("post", "/predict/batch")]:
            assert getattr(client, method)(path).status_code == 401, path
        spec = client.get("/openapi.json").json()
        assert set(spec["components"]["securitySchemes"]) == {"APIKeyHeader", "HTTPBearer"}
        predict = spec["paths"]["/predict"]["post"]
        assert "401" in predict["responses"] and predict["security"]
        assert "security" not in spec["paths"]["/health"]["get"]


def test_api_key_off_by_default(client, row):
    assert client.post("/predict", json=row).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]


class ExplodingPipeline:
    classes_ = np.array(["benign", "malignant"])

    def predict_proba(self, frame):
        raise RuntimeError("secret internals /srv/model.py line 42")


def test_unexpected_errors_are_500_without_a_stack_trace(client, row, caplog):
    store = client.app.state.service.store
    store.current = dataclasses.replace(store.current, pipeline=ExplodingPipeline(),
                                        compiled=None)  # the Pipeline answers
    response = client.post("/predict", json=row)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error",
                               "request_id": response.headers["x-request-id"]}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret internals" in caplog.text  # logged server-side
    assert 'status="500"' in client.get("/metrics").text


def test_openapi_lists_endpoints_and_generated_schema(client, trained):
    spec = client.get("/openapi.json").json()
    assert {"/health", "/ready", "/ping", "/predict", "/predict/batch", "/invocations",
            "/model", "/metrics", "/admin/reload", "/version"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert list(schemas["PredictRequest"]["properties"]) == list(trained.X_test.columns)
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    batch = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["$ref"].endswith("/PredictBatchRequest")
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PredictResponse")
    assert {"413", "422", "503"} <= set(responses)
    invocations = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert set(invocations) == {"application/json", "text/csv",
                                "application/vnd.apache.parquet"}
    titles = [f["title"] for f in invocations["application/json"]["schema"]["oneOf"]]
    assert titles == ["dataframe_split", "dataframe_records", "instances", "inputs"]


def test_response_bodies_match_the_documented_models(client, row):
    from serving.http.responses import ModelInfo, PredictBatchResponse, PredictResponse

    PredictResponse.model_validate(client.post("/predict", json=row).json())
    PredictBatchResponse.model_validate(client.post("/predict/batch",
                                                    json={"records": [row]}).json())
    ModelInfo.model_validate(client.get("/model").json())


def test_metrics(client, row):
    for _ in range(3):
        client.post("/predict", json=row)
    client.post("/predict", json={})
    text = client.get("/metrics").text
    assert 'ml_api_requests_total{endpoint="/predict",method="POST",status="200"} 3.0' in text
    assert 'ml_api_requests_total{endpoint="/predict",method="POST",status="422"} 1.0' in text
    assert 'ml_api_request_duration_seconds_bucket{endpoint="/predict",le="0.01"}' in text
    predicted = client.post("/predict", json=row).json()["prediction"]
    text = client.get("/metrics").text
    assert f'ml_api_predictions_total{{model_version="1",predicted_class="{predicted}"}} 4.0' \
        in text
    assert "ml_api_model_version{model_name=" in text and "} 1.0" in text
    assert "ml_api_prediction_log_backlog " in text
    for reason in ("load_error", "smoke_test_failed", "registry"):
        assert f'ml_api_model_load_failures_total{{reason="{reason}"}} 0.0' in text
    assert "ml_api_micro_batch_rows_count" in text
    assert "_created" not in text


def test_every_prediction_is_logged_and_kept_after_shutdown(mlflow_store, champion, tmp_path,
                                                            trained):
    settings = make_settings(mlflow_store, champion, tmp_path)
    records = trained.X_test.head(5).to_dict(orient="records")
    with TestClient(create_app(settings)) as client:
        one = client.post("/predict", json=records[0]).json()
        many = client.post("/predict/batch", json={"records": records[1:]}).json()
        split = trained.X_test.head(2).to_dict(orient="split")
        client.post("/invocations", json={"dataframe_split": split}, headers={
            "X-Request-ID": "mlflow-client-1"})
        client.post("/predict", json={})  # refused: not logged
    log = SQLitePredictionLog(settings.prediction_log_path)
    frame = log.read_day(datetime.now(timezone.utc).date())
    log.close()
    assert frame["request_id"].tolist() == [one["request_id"]] + [many["request_id"]] * 4 + [
        "mlflow-client-1"] * 2
    assert frame["row_index"].tolist() == [0, 0, 1, 2, 3, 0, 1]
    assert frame["model_version"].unique().tolist() == ["1"]
    assert frame["model_name"].unique().tolist() == [champion]
    assert frame["prediction"][0] == one["prediction"]
    assert frame["probabilities"][0] == pytest.approx(one["probabilities"])
    np.testing.assert_allclose(frame[list(trained.X_test.columns)].to_numpy(dtype=float)[:5],
                               trained.X_test.head(5).to_numpy())
