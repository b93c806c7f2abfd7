"""ML_API_INPUT_POLICY over real HTTP: two `python -m serving` processes on 127.0.0.1 (one
per policy) serve one model with a nullable categorical, a bounded non-nullable
numeric and an identifier column the schema excludes. Plus the cheap units around it
(NaN/null handling, per-row error messages, flag computation, log migration)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import time
import uuid

import httpx
import pandas as pd
import pandera.pandas as pa
import pytest

from ml_assets.core.data.datasets import SyntheticSpec, make_synthetic
from ml_assets.core.data.schemas import synthetic_schema
from ml_assets.core.prediction_log import META_COLUMNS, PredictionRecord, SQLitePredictionLog
from ml_assets_tests.support.api_process import api_process
from ml_assets_tests.support.models import register_new, train_frame
from serving.model.feature_specs import feature_specs
from serving.model.request_models import build_request_models
from serving.protocols.validation_errors import validation_message

SPEC = SyntheticSpec(n_rows=400, n_numeric=2, n_categorical=2, n_categories=3, n_classes=2,
                     missing_fraction=0.1, seed=5)
NULL_MSG = "may not be null (the model was trained without missing values here)"


def _data() -> tuple[pd.DataFrame, pa.DataFrameSchema, float, float]:
    """num_00 non-nullable and bounded by its training range; cat_00/cat_01 nullable
    categoricals (isin c0..c2); row_id an identifier (validated, never a model input)."""
    frame = make_synthetic(SPEC)
    frame["num_00"] = frame["num_00"].fillna(frame["num_00"].median())
    low, high = float(frame["num_00"].min()), float(frame["num_00"].max())
    frame.insert(0, "row_id", range(len(frame)))
    base = synthetic_schema(SPEC)
    columns = {"row_id": pa.Column(int, metadata={"role": "identifier"}),
               **base.columns}
    columns["num_00"] = pa.Column(float, checks=[pa.Check.ge(low), pa.Check.le(high)],
                                  nullable=False, coerce=True)
    schema = pa.DataFrameSchema(columns, strict=True, name="policy", ordered=False)
    return frame, schema, low, high


@pytest.fixture(scope="module")
def model(mlflow_store):
    frame, schema, low, high = _data()
    trained = train_frame(frame, schema, SPEC.target)
    name = register_new(trained, "policy", mlflow_store["artifact_root"])
    return {"name": name, "trained": trained, "low": low, "high": high}


@pytest.fixture(scope="module")
def servers(model, mlflow_store, tmp_path_factory):
    """One process per policy, started together: {policy: {"url", "log_path"}}."""
    root = tmp_path_factory.mktemp("policy")
    with contextlib.ExitStack() as stack:
        started = {policy: stack.enter_context(api_process(
            {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
             "ML_REGISTERED_MODEL_NAME": model["name"], "ML_API_INPUT_POLICY": policy},
            root, wait=False)) for policy in ("accept", "reject")}
        for api in started.values():
            api.wait_ready()
        yield {policy: {"url": api.url, "log_path": api.prediction_log}
               for policy, api in started.items()}


def _rows(model, n: int = 5) -> list[dict]:
    frame = model["trained"].X_test.head(n)
    rows = json.loads(frame.to_json(orient="records"))
    for row in rows:  # clean rows: known categories, num_00 inside its range
        row["cat_00"], row["cat_01"] = "c0", "c1"
    return rows


def _counter(url: str, feature: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'^ml_api_input_flags_total\{{feature="{feature}",reason="{reason}"\}}'
                      r" (\S+)$", text, re.M)
    assert found, f"no ml_api_input_flags_total for {feature}/{reason}"
    return float(found.group(1))


def _logged(server, request_id: str) -> pd.DataFrame:
    log = SQLitePredictionLog(server["log_path"], read_only=True)
    frame = pd.concat([log.read_day(day) for day in log.days()], ignore_index=True)
    return frame[frame["request_id"] == request_id].sort_values("row_index")


def test_model_shows_the_served_feature_set_and_the_policy(servers, model):
    for policy, server in servers.items():
        info = httpx.get(f"{server['url']}/model", timeout=10).json()
        assert info["input_policy"] == policy
        assert [f["name"] for f in info["features"]] == ["num_00", "num_01", "cat_00",
                                                         "cat_01"]
        assert info["excluded_columns"] == {"row_id": "identifier"}
        # A client sending the whole training row, identifier included, is answered.
        row = {**_rows(model, 1)[0], "row_id": 12345}
        answer = httpx.post(f"{server['url']}/predict", json=row, timeout=30)
        assert answer.status_code == 200, answer.text


def test_reject_policy_names_each_bad_row_and_field(servers, model):
    url = servers["reject"]["url"]
    rows = _rows(model)
    rows[1]["num_00"] = model["high"] + 100.0
    rows[3]["cat_00"] = "Atlantis"
    response = httpx.post(f"{url}/predict/batch", json={"records": rows}, timeout=30)
    assert response.status_code == 422
    body = response.json()
    assert {tuple(d["loc"]) for d in body["detail"]} == {("records", 1, "num_00"),
                                                         ("records", 3, "cat_00")}
    assert "record 1: num_00: Input should be less than or equal to" in body["message"]
    assert "record 3: cat_00: Input should be 'c0', 'c1' or 'c2'" in body["message"]
    response = httpx.post(f"{url}/invocations", json={"dataframe_records": rows}, timeout=30)
    assert response.status_code == 400 and response.json()["error_code"] == "BAD_REQUEST"
    assert "row 1: num_00" in response.json()["message"]
    assert "row 3: cat_00" in response.json()["message"]
    response = httpx.post(f"{url}/predict", json=rows[3], timeout=30)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["cat_00"]
    assert "enum" in json.dumps(httpx.get(f"{url}/openapi.json", timeout=10).json()[
        "components"]["schemas"]["PredictRequest"]["properties"]["cat_00"])


def test_accept_policy_answers_counts_and_flags_the_row(servers, model):
    server = servers["accept"]
    url = server["url"]
    before = (_counter(url, "cat_00", "unseen_category"),
              _counter(url, "num_00", "out_of_range"))
    rows = _rows(model)
    rows[1]["num_00"] = model["high"] + 100.0
    rows[3]["cat_00"] = "Atlantis"
    rows[3]["num_00"] = model["low"] - 1.0
    request_id = uuid.uuid4().hex
    response = httpx.post(f"{url}/predict/batch", json={"records": rows}, timeout=30,
                          headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 5
    assert _counter(url, "cat_00", "unseen_category") == before[0] + 1
    assert _counter(url, "num_00", "out_of_range") == before[1] + 2
    logged = _logged(server, request_id)  # a 200 means the rows are committed
    assert logged["input_flags"].tolist() == [
        "", "num_00:out_of_range", "", "num_00:out_of_range;cat_00:unseen_category", ""]
    assert logged["cat_00"].tolist()[3] == "Atlantis"
    # /invocations answers like MLflow's server (the encoder ignores the category)
    response = httpx.post(f"{url}/invocations", json={"dataframe_records": rows}, timeout=30)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 5
    # OpenAPI claims no enum/minimum it does not enforce; the known values stay visible
    props = httpx.get(f"{url}/openapi.json", timeout=10).json()["components"]["schemas"][
        "PredictRequest"]["properties"]
    assert "enum" not in json.dumps(props["cat_00"])
    assert props["cat_00"]["x-known-values"] == ["c0", "c1", "c2"]
    assert props["num_00"]["x-training-range"] == {"minimum": model["low"],
                                                   "maximum": model["high"]}
    assert props["num_00"]["maximum"] > 1e38  # the hard float32 limit stays


def test_hard_limits_hold_under_accept(servers, model):
    url = servers["accept"]["url"]
    row = _rows(model, 1)[0]
    for bad, kind in (({"num_00": "12"}, "float_type"), ({"cat_00": 3}, "string_type"),
                      ({"surprise": 1}, "extra_forbidden"), ({"num_01": 1e39},
                                                             "value_too_large")):
        response = httpx.post(f"{url}/predict", json={**row, **bad}, timeout=30)
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["type"] == kind
    missing = {k: v for k, v in row.items() if k != "num_00"}
    assert httpx.post(f"{url}/predict", json=missing, timeout=30).json()["detail"][0][
        "type"] == "missing"
    text = json.dumps(row).replace(f'"num_01": {json.dumps(row["num_01"])}',
                                   '"num_01": Infinity')
    response = httpx.post(f"{url}/predict", content=text, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "finite_number"


@pytest.mark.parametrize("policy", ["accept", "reject"])
def test_nan_and_null_are_missing_for_nullable_fields_everywhere(servers, model, policy):
    url = servers[policy]["url"]
    rows = _rows(model, 3)
    rows[0]["cat_00"] = None
    rows[1]["num_01"] = None
    nan_row = json.dumps(rows[2]).replace('"cat_00": "c0"', '"cat_00": NaN')
    json_headers = {"Content-Type": "application/json"}
    for body in (json.dumps(rows[0]), nan_row):
        response = httpx.post(f"{url}/predict", content=body, headers=json_headers, timeout=30)
        assert response.status_code == 200, response.text
    listed = ", ".join([json.dumps(rows[0]), json.dumps(rows[1]), nan_row])
    batch = f'{{"records": [{listed}]}}'
    response = httpx.post(f"{url}/predict/batch", content=batch, headers=json_headers,
                          timeout=30)
    assert response.status_code == 200, response.text
    frame = pd.DataFrame(rows).astype({"cat_00": object})
    frame.loc[2, "cat_00"] = float("nan")  # pandas' missing string
    frame.loc[1, "cat_01"] = math.nan
    bodies = {
        "records": (f'{{"dataframe_records": [{listed}]}}', "application/json"),
        "split": (json.dumps({"dataframe_split": frame.to_dict(orient="split")}),
                  "application/json"),  # Python's json writes NaN for the missing strings
        "split-pandas": (f'{{"dataframe_split": {frame.to_json(orient="split", index=False)}}}',
                         "application/json"),
        "csv": (frame.to_csv(index=False), "text/csv"),
    }
    assert "NaN" in bodies["split"][0]
    for fmt, (body, content_type) in bodies.items():
        response = httpx.post(f"{url}/invocations", content=body, timeout=30,
                              headers={"Content-Type": content_type})
        assert response.status_code == 200, (fmt, response.text)
        assert len(response.json()["predictions"]) == 3


@pytest.mark.parametrize("policy", ["accept", "reject"])
def test_null_for_a_non_nullable_field_says_it_may_not_be_null(servers, model, policy):
    url = servers[policy]["url"]
    rows = _rows(model, 3)
    rows[2]["num_00"] = None
    response = httpx.post(f"{url}/predict", json=rows[2], timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"] == [{"loc": ["num_00"], "msg": NULL_MSG,
                                          "type": "null_not_allowed"}]
    assert response.json()["message"] == f"invalid input: num_00: {NULL_MSG}"
    response = httpx.post(f"{url}/predict/batch", json={"records": rows}, timeout=30)
    assert response.json()["message"] == f"invalid input: record 2: num_00: {NULL_MSG}"
    frame = pd.DataFrame(rows)
    for body, content_type in ((frame.to_csv(index=False), "text/csv"),
                               (json.dumps({"dataframe_split": frame.to_dict(
                                   orient="split")}), "application/json")):
        response = httpx.post(f"{url}/invocations", content=body, timeout=30,
                              headers={"Content-Type": content_type})
        assert response.status_code == 400
        assert response.json()["message"] == f"invalid input: row 2: num_00: {NULL_MSG}"


# -- units ---------------------------------------------------------------------------

def _models(policy: str):
    _, schema, _, _ = _data()
    return build_request_models(feature_specs(schema, SPEC.target), 1000, policy=policy)


def test_feature_specs_skip_excluded_roles():
    _, schema, _, _ = _data()
    assert [s.name for s in feature_specs(schema, SPEC.target)] == ["num_00", "num_01",
                                                                   "cat_00", "cat_01"]


def test_batch_message_names_every_bad_row_up_to_20_with_a_count():
    models = _models("reject")
    good = {"num_00": 0.0, "num_01": 0.0, "cat_00": "c0", "cat_01": "c1"}
    records = [dict(good) for _ in range(50)]
    bad = [3, 7, *range(20, 45)]  # 27 bad rows
    for i in bad:
        records[i]["cat_00"] = "Atlantis"
    records[7]["num_00"] = None
    with pytest.raises(Exception) as caught:
        models.batch.model_validate({"records": records})
    message = validation_message(caught.value, "record", frozenset(models.feature_names))
    named = [int(n) for n in re.findall(r"record (\d+):", message)]
    assert named == bad[:20]
    assert f"record 7: num_00: {NULL_MSG}; cat_00:" in message
    assert message.endswith("(27 bad records in all; the first 20 are named)")


def test_flags_are_cheap_and_exact():
    models = _models("accept")
    rows = [[0.0, 1.0, "c0", None]] * 1000 + [[1e6, None, "Atlantis", "c9"]]
    flags, counts = models.input_flags(rows)
    assert flags[:1000] == [""] * 1000
    assert flags[1000] == "num_00:out_of_range;cat_00:unseen_category;cat_01:unseen_category"
    assert counts == {("num_00", "out_of_range"): 1, ("cat_00", "unseen_category"): 1,
                      ("cat_01", "unseen_category"): 1}
    assert models.input_flags(rows[:1000]) == ([], {})
    assert _models("reject").input_flags(rows) == ([], {})  # reject never flags
    started = time.perf_counter()
    for _ in range(20):
        models.input_flags(rows[:1000])
    assert (time.perf_counter() - started) / 20 < 0.01  # ~0.2 ms measured


def test_an_old_sqlite_log_is_migrated_in_place_and_stays_readable(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the table as it was before input_flags
        conn.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY, day TEXT NOT NULL,"
                     " logged_at TEXT NOT NULL, request_id TEXT NOT NULL, row_index INTEGER"
                     " NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL,"
                     " prediction TEXT NOT NULL, confidence REAL, probabilities TEXT NOT"
                     " NULL, features TEXT NOT NULL)")
        conn.execute("INSERT INTO predictions (day, logged_at, request_id, row_index,"
                     " model_name, model_version, prediction, confidence, probabilities,"
                     " features) VALUES ('2026-03-01', '2026-03-01T10:00:00+00:00', 'old',"
                     " 0, 'm', '1', 'a', 0.9, '{\"a\": 0.9, \"b\": 0.1}', '{\"x\": 1}')")
    conn.close()
    old = SQLitePredictionLog(path, read_only=True).read_day("2026-03-01")  # not migrated
    assert list(old.columns) == META_COLUMNS + ["x"] and old["input_flags"].tolist() == [""]
    log = SQLitePredictionLog(path)  # opened for writing: ALTER TABLE ADD COLUMN
    stamp = pd.Timestamp("2026-03-01T11:00:00", tz="UTC").to_pydatetime()
    log.append_many([PredictionRecord(stamp, "new", 0, "m", "1", ["x"], [2], "a",
                                      {"a": 0.8, "b": 0.2}, "x:out_of_range")]).result(10)
    log.close()
    frame = SQLitePredictionLog(path, read_only=True).read_day("2026-03-01")
    assert frame["request_id"].tolist() == ["old", "new"]
    assert frame["input_flags"].tolist() == ["", "x:out_of_range"]
    SQLitePredictionLog(path).close()  # a second open finds the column: no error
