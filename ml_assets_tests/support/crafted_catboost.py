"""Crafted CatBoost versions for the tests: the JSON export a `CatBoostModel` stores in its
skops file, edited as an attacker with write access to the artifact store would (a tree
made deeper than CatBoost allows, a leaf value dropped, a split on a feature the model
does not have), in a local model directory or as a new registered version. Built by the
test, never stored; a crafted export must never reach CatBoost in the test process (a
tree 40 deep SIGSEGVs it: the control runs in a subprocess, ml_assets_tests/unit/
test_catboost.py)."""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def _trees(document: dict) -> list[dict]:
    return document["oblivious_trees"]


def _deep(document: dict) -> None:
    tree = _trees(document)[0]
    tree["splits"] = tree["splits"] * 14  # 42 deep: its leaf values unchanged


def _short_leaves(document: dict) -> None:
    _trees(document)[0]["leaf_values"].pop()


def _far_feature(document: dict) -> None:
    _trees(document)[1]["splits"][0]["float_feature_index"] = 4000


# crafted kind -> (edit of the JSON document, the check its refusal names)
CRAFTED_CATBOOST: dict[str, tuple[Callable[[dict], None], str]] = {
    "too_deep": (_deep, "catboost.splits"),
    "short_leaves": (_short_leaves, "catboost.leaves"),
    "far_feature": (_far_feature, "catboost.splits"),
}


def holder_state(schema: dict) -> dict:
    """The skops schema's record of the CatBoostModel's state ({attribute: node})."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("__class__") == "CatBoostModel":
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    (node,) = found
    return node["content"]["content"]


def edit_skops(path: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite the skops file at `path`: its schema through `edit(schema)`."""
    with zipfile.ZipFile(path) as archive:
        entries = {i.filename: archive.read(i) for i in archive.infolist()}
    schema = json.loads(entries["schema.json"])
    edit(schema)
    entries["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def edit_model_json(model_dir: Path, edit: Callable[[dict], None]) -> None:
    """Replace the JSON export stored in `model_dir`'s model.skops with `edit(document)`
    (a NaN is written as the literal NaN, as an attacker may)."""
    def change(schema: dict) -> None:
        node = holder_state(schema)["model_json_"]
        document = json.loads(json.loads(node["content"]))
        edit(document)
        node["content"] = json.dumps(json.dumps(document))
    edit_skops(model_dir / "model.skops", change)


def register_crafted_catboost(name: str, good_version: str, kind: str,
                              experiment: str) -> str:
    """Copy version `good_version` of `name` (a Pipeline ending in a CatBoostModel),
    craft its JSON export into `kind` (CRAFTED_CATBOOST), log the copy in a new run of
    `experiment` and register it as a new version of `name` (no alias); the version."""
    edit, _ = CRAFTED_CATBOOST[kind]
    with tempfile.TemporaryDirectory(prefix="crafted-") as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{good_version}", dst_path=tmp))
        edit_model_json(model_dir, edit)
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.set_tag("crafted", kind)
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
    version = MlflowClient().create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(version.version)
