"""The wire formats of benchmarks/bench_serving.py: every request body each server is
timed on, written once from the same rows, and the check of every server's answers
against the Pipeline's before anything is timed.

Bodies (floats written exactly by json.dumps; pandas' to_json rounds them):
- `record`: one row as this service's /predict object (the floors get it too);
- `records_1000`: /predict/batch's {"records": [...]};
- `split_1`, `split_1000`: MLflow's {"dataframe_split": ...} for /invocations;
- `v2_1`, `v2_1000`: an Open Inference Protocol request, one FP64 tensor per feature,
  as this service's /v2 takes it;
- `mlserver_1`, `mlserver_1000`: the same tensors with MLServer's `content_type: pd`
  (its scikit-learn runtime builds a DataFrame, so the Pipeline sees named columns) and
  the `predict_proba` output, the work this service does for every row;
- `bentoml_1`, `bentoml_1000`: {"rows": [[...], ...]} for BentoML's batchable API.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

from ml_assets.core.artifacts.onnx.parity import PROBABILITY_TOLERANCE, rows_of


def _columns(frame) -> dict[str, list]:
    rows = rows_of(frame)
    return {str(c): [row[j] for row in rows] for j, c in enumerate(frame.columns)}


def _tensors(frame) -> list[dict]:
    return [{"name": name, "shape": [len(frame)], "datatype": "FP64", "data": values}
            for name, values in _columns(frame).items()]


def write_bodies(row, batch, workdir: Path) -> dict[str, Path]:
    """Every body, written under `workdir`; key -> path."""
    def split(frame) -> dict:
        return {"dataframe_split": {"columns": [str(c) for c in frame.columns],
                                    "data": rows_of(frame)}}

    def records(frame) -> list[dict]:
        names = [str(c) for c in frame.columns]
        return [dict(zip(names, r, strict=True)) for r in rows_of(frame)]

    def mlserver(frame) -> dict:
        return {"parameters": {"content_type": "pd"}, "inputs": _tensors(frame),
                "outputs": [{"name": "predict_proba"}]}

    bodies = {"record": records(row)[0], "records_1000": {"records": records(batch)},
              "split_1": split(row), "split_1000": split(batch),
              "v2_1": {"inputs": _tensors(row)}, "v2_1000": {"inputs": _tensors(batch)},
              "mlserver_1": mlserver(row), "mlserver_1000": mlserver(batch),
              "bentoml_1": {"rows": rows_of(row)}, "bentoml_1000": {"rows": rows_of(batch)}}
    paths = {}
    for key, body in bodies.items():
        paths[key] = workdir / f"{key}.json"
        paths[key].write_text(json.dumps(body))
    return paths


def _post(url: str, body: Path) -> dict:
    response = httpx.post(url, content=body.read_bytes(), timeout=120,
                          headers={"Content-Type": "application/json"})
    if response.status_code != 200:
        raise AssertionError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def _answer(kind: str, payload: dict, classes: list[str]) -> tuple[list[str], np.ndarray | None]:
    """Labels and (when the wire carries them) class probabilities of one answer."""
    if kind == "predict":
        answers = payload["predictions"] if "predictions" in payload else [payload]
        return ([str(a["prediction"]) for a in answers],
                np.array([[a["probabilities"][c] for c in classes] for a in answers]))
    if kind == "invocations":
        return [str(p) for p in payload["predictions"]], None
    if kind == "bentoml":
        proba = np.array(payload)
        return [classes[i] for i in proba.argmax(axis=1)], proba  # classes_ order
    outputs = {o["name"]: o for o in payload["outputs"]}
    if kind == "v2":
        probabilities = outputs["probabilities"]
        order = [probabilities["parameters"]["classes"].index(c) for c in classes]
        proba = np.array(probabilities["data"]).reshape(probabilities["shape"])[:, order]
        return [str(x) for x in outputs["label"]["data"]], proba
    proba = np.array(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"])
    return [classes[i] for i in proba.argmax(axis=1)], proba  # mlserver: classes_ order


def check_answers(server, pipeline, frames: dict, compiled: bool = False) -> str:
    """Every case the server is timed on, answered as the Pipeline answers: labels equal,
    probabilities within the parity gate's tolerance (compiled) or 1e-12. Raises
    otherwise; returns the largest probability difference seen, formatted ("constant"
    for a floor, which answers 200 with no model behind it)."""
    classes = [str(c) for c in pipeline.classes_]
    worst = 0.0
    if all(kind == "constant" for _path, _body, kind in server.cases.values()):
        for path, body, _kind in server.cases.values():
            _post(server.url + path, body)  # a floor: it answers; no model to compare
        return "constant"
    for case, (path, body, kind) in server.cases.items():
        frame = frames["batch" if case.startswith("1,000") else "row"]
        labels, proba = _answer(kind, _post(server.url + path, body), classes)
        expected = [str(c) for c in pipeline.predict(frame)]
        if labels != expected:
            wrong = sum(a != b for a, b in zip(labels, expected, strict=False))
            raise AssertionError(f"{server.name} {case} ({path}): {wrong} of {len(expected)} "
                                 "labels differ from the Pipeline's")
        if proba is not None:
            diff = float(np.abs(proba - pipeline.predict_proba(frame)).max())
            limit = PROBABILITY_TOLERANCE if compiled else 1e-12
            if diff > limit:
                raise AssertionError(f"{server.name} {case} ({path}): probabilities differ "
                                     f"by {diff:.2e} (> {limit:g})")
            worst = max(worst, diff)
    return f"{worst:.1e}"
