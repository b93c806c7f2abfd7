"""LightGBM and XGBoost models: their types are on the platform's reviewed list, and
their boosters are checked as the skops file records them before the library parses
them. Crafted files (built here from real fitted models, never stored) are refused by
the loader naming the check, in bounded time; legitimate ones load and predict as
before."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import lightgbm
import mlflow
import numpy as np
import pytest
import xgboost
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml_assets.core.artifacts.booster_checks import _UBJ
from ml_assets.core.artifacts.loading import (
    FEATURE_SCHEMA_KEY,
    InvalidModelError,
    load_pipeline,
)
from ml_assets.core.artifacts.saving import check_trusted
from ml_assets.core.data.schemas import model_signature, schema_yaml
from ml_assets.core.modeling.labels import EncodedLabelsClassifier
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
from ml_assets.core.modeling.run_params import run_params
from ml_assets_tests.support.models import TrainedPipeline, train_breast_cancer

SECONDS = 5.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cancer() -> TrainedPipeline:
    return train_breast_cancer(n_estimators=3, seed=3)


def _fit(cancer: TrainedPipeline, estimator) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", estimator)]).fit(
        cancer.X_train, cancer.pipeline.predict(cancer.X_train))


def _save(path: Path, pipeline: Pipeline, cancer: TrainedPipeline) -> Path:
    metadata = {FEATURE_SCHEMA_KEY: schema_yaml(cancer.schema), "target": cancer.target,
                "classes": [str(c) for c in pipeline.classes_]}
    signature = model_signature(cancer.schema, cancer.target,
                                pipeline.predict(cancer.X_train.head(5)))
    mlflow.sklearn.save_model(pipeline, str(path), serialization_format="skops",
                              skops_trusted_types=SKOPS_TRUSTED_TYPES, metadata=metadata,
                              signature=signature, pip_requirements=["scikit-learn"])
    return path


@pytest.fixture(scope="module")
def models(cancer) -> dict[str, Pipeline]:
    return {
        "lightgbm": _fit(cancer, lightgbm.LGBMClassifier(n_estimators=4, num_leaves=6,
                                                         verbose=-1, n_jobs=1)),
        "xgboost": _fit(cancer, EncodedLabelsClassifier(xgboost.XGBClassifier(
            n_estimators=4, max_depth=3, n_jobs=1))),
    }


@pytest.fixture
def saved(models, cancer, tmp_path):
    return lambda kind: _save(tmp_path / kind, models[kind], cancer)


# -- editing the booster as the file records it -----------------------------------------

def _entries(model_dir: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(model_dir / "model.skops") as archive:
        return {i.filename: archive.read(i) for i in archive.infolist()}


def _rewrite(model_dir: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(model_dir / "model.skops", "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def _booster_nodes(schema) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("__class__") == "Booster":
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return found


def _with_tree_sizes(text: str) -> str:
    """`tree_sizes` rewritten for the text's trees, as an attacker editing a tree would."""
    raw = text.encode()
    starts = [m.start() + 1 for m in re.finditer(rb"\nTree=", raw)]
    ends = [*starts[1:], raw.index(b"end of trees")]
    sizes = " ".join(str(end - start) for start, end in zip(starts, ends, strict=True))
    return re.sub(r"tree_sizes=[\d ]*", f"tree_sizes={sizes}", text, count=1)


def edit_lightgbm_text(model_dir: Path, edit, sizes: bool = True) -> None:
    """Replace the LightGBM model text skops stores with `edit(text)` (its tree_sizes
    made to match, unless `sizes=False`)."""
    entries = _entries(model_dir)
    schema = json.loads(entries["schema.json"])
    (node,) = _booster_nodes(schema)
    handle = node["content"]["content"]["_handle"]
    text = json.loads(handle["content"])
    assert _with_tree_sizes(text) == text
    changed = _with_tree_sizes(edit(text)) if sizes else edit(text)
    assert changed != text
    handle["content"] = json.dumps(changed)
    entries["schema.json"] = json.dumps(schema).encode()
    _rewrite(model_dir, entries)


def _tree_line(text: str, tree: int, key: str, edit) -> str:
    """`key=` of tree `tree` replaced by `edit(list of its values)`."""
    head, marker, rest = text.partition(f"Tree={tree}\n")
    block, sep, tail = rest.partition("\n\n")
    lines = block.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(f"{key}="):
            lines[i] = f"{key}=" + " ".join(edit(line[len(key) + 1:].split()))
    return head + marker + "\n".join(lines) + sep + tail


def edit_xgboost_model(model_dir: Path, edit) -> None:
    """Replace the XGBoost model skops stores by `edit(document)` written as JSON."""
    entries = _entries(model_dir)
    schema = json.loads(entries["schema.json"])
    (node,) = _booster_nodes(schema)
    name = node["content"]["content"]["handle"]["file"]
    document = _UBJ(entries[name], "test").value()
    edit(document["Model"]["learner"]["gradient_booster"]["model"]["trees"])
    entries[name] = json.dumps(document).encode()
    _rewrite(model_dir, entries)


def refused(model_dir: Path) -> InvalidModelError:
    started = time.perf_counter()
    with pytest.raises(InvalidModelError) as caught:
        load_pipeline(str(model_dir), source="version 9")
    assert time.perf_counter() - started < SECONDS
    assert str(caught.value).startswith("refused to open version 9: ")
    return caught.value


# -- legitimate boosters ------------------------------------------------------------------

def test_boosters_need_only_reviewed_types_and_load_back(models, cancer, saved):
    for kind, pipeline in models.items():
        needed = check_trusted(pipeline)  # raises on a type nobody reviewed
        assert any(t.endswith(".Booster") for t in needed)
        loaded = load_pipeline(str(saved(kind)), source=kind)
        assert (loaded.pipeline.predict_proba(cancer.X_test)
                == pipeline.predict_proba(cancer.X_test)).all()


# -- crafted LightGBM model texts ---------------------------------------------------------

CONTROL = textwrap.dedent("""
    import sys, numpy as np, skops.io
    from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
    model = skops.io.load(sys.argv[1], trusted=SKOPS_TRUSTED_TYPES)
    print("loaded", flush=True)
    model.predict(np.load(sys.argv[2]))
    print("predicted", flush=True)
""")


def test_control_an_unchecked_out_of_range_child_crashes_lightgbm(saved, cancer, tmp_path):
    """Without the check (skops alone, in a subprocess), the crafted text loads and the
    first prediction kills the process: what the loader's check prevents."""
    model_dir = saved("lightgbm")
    edit_lightgbm_text(model_dir, lambda t: _tree_line(
        t, 0, "left_child", lambda v: ["100000000"] + v[1:]))
    np.save(tmp_path / "x.npy", cancer.X_test.head(50).to_numpy())
    done = subprocess.run([sys.executable, "-c", CONTROL, str(model_dir / "model.skops"),
                           str(tmp_path / "x.npy")], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert "loaded" in done.stdout and "predicted" not in done.stdout
    assert done.returncode == -11, (done.returncode, done.stderr[-500:])  # SIGSEGV
    assert refused(model_dir).check == "booster.children"


@pytest.mark.parametrize(("edit", "check", "words"), [
    (lambda t: _tree_line(t, 0, "left_child", lambda v: ["999"] + v[1:]),
     "booster.children", r"tree 0 of LightGBM booster 0: node 0's left child 999 is "
                         r"neither an internal node"),
    (lambda t: _tree_line(t, 1, "right_child", lambda v: ["0"] + v[1:]),
     "tree.cycle", r"tree 1 of LightGBM booster 0: .*cycle"),
    (lambda t: _tree_line(t, 0, "leaf_value", lambda v: v[:-1]),
     "booster.arrays", r"leaf_value has \d+ values, not \d+"),
    (lambda t: _tree_line(t, 2, "split_feature", lambda v: ["4000"] + v[1:]),
     "booster.features", r"node 0 splits on feature 4000, outside 0\.\.29"),
    (lambda t: re.sub(r"tree_sizes=(\d+)", lambda m: f"tree_sizes={int(m[1]) + 10**9}", t),
     "booster.tree_sizes", r"tree_sizes\[0\] \d+ does not land on a tree"),
    (lambda t: t.replace("num_tree_per_iteration=1", "num_tree_per_iteration=2", 1),
     "booster.header", r"num_tree_per_iteration 2 is not num_class 1"),
])
def test_crafted_lightgbm_boosters_are_refused_before_lightgbm_parses_them(
        saved, edit, check, words):
    model_dir = saved("lightgbm")
    edit_lightgbm_text(model_dir, edit, sizes=check != "booster.tree_sizes")
    error = refused(model_dir)
    assert error.check == check
    assert re.search(words, str(error)), str(error)


# -- crafted XGBoost models ---------------------------------------------------------------

def _first_split(tree: dict) -> int:
    return int(np.flatnonzero(np.asarray(tree["left_children"]) != -1)[0])


def _far_child(trees):
    trees[0]["left_children"][_first_split(trees[0])] = 10 ** 6


def _cycle(trees):
    tree = trees[1]
    splits = np.flatnonzero(np.asarray(tree["left_children"]) != -1)
    tree["right_children"][int(splits[-1])] = 0


def _short_arrays(trees):
    trees[0]["split_conditions"] = trees[0]["split_conditions"][:-1]


def _far_feature(trees):
    trees[2]["split_indices"][_first_split(trees[2])] = 4000


def _one_iteration_too_many(trees):
    trees.append(trees[0])  # tree_info and iteration_indptr no longer cover it


@pytest.mark.parametrize(("edit", "check", "words"), [
    (_far_child, "tree.children", r"tree 0 of XGBoost booster 0: node \d+'s left child "
                                  r"1000000 is outside"),
    (_cycle, "tree.cycle", r"tree 1 of XGBoost booster 0: .*root"),
    (_short_arrays, "booster.arrays", r"split_conditions does not hold \d+ values"),
    (_far_feature, "booster.features", r"splits on feature 4000, outside 0\.\.29"),
    (_one_iteration_too_many, "booster.trees", r"tree_info does not list one class per tree"),
])
def test_crafted_xgboost_boosters_are_refused_before_xgboost_parses_them(
        saved, edit, check, words):
    model_dir = saved("xgboost")
    edit_xgboost_model(model_dir, edit)
    error = refused(model_dir)
    assert error.check == check
    assert re.search(words, str(error)), str(error)


def test_a_booster_model_that_is_not_text_is_refused(saved):
    model_dir = saved("lightgbm")
    entries = _entries(model_dir)
    schema = json.loads(entries["schema.json"])
    (node,) = _booster_nodes(schema)
    node["content"]["content"]["_handle"] = {"__class__": "list", "__module__": "builtins",
                                             "__loader__": "ListNode", "content": []}
    entries["schema.json"] = json.dumps(schema).encode()
    _rewrite(model_dir, entries)
    error = refused(model_dir)
    assert error.check == "booster.record" and "not stored as text" in str(error)


# -- the run's params for a user's estimator ---------------------------------------------

def test_a_users_estimator_logs_its_effective_params_not_the_built_in_ones(models):
    settings = {"model_type": "random_forest", "n_estimators": 200, "max_iter": 200,
                "cv_folds": 5, "seed": 42, "estimator": "lightgbm:LGBMClassifier"}
    params = run_params(settings, models["lightgbm"], True, {"train_rows": 455})
    assert "model_type" not in params and "max_iter" not in params
    assert params["n_estimators"] == "4"  # the estimator's, not the built-in 200
    assert params["num_leaves"] == "6" and params["learning_rate"] == "0.1"  # a default
    assert params["cv_folds"] == 5 and params["train_rows"] == 455
    xgb = run_params(settings, models["xgboost"], True, {})
    assert xgb["max_depth"] == "3" and xgb["objective"] == "binary:logistic"
    assert float(xgb["learning_rate"]) == pytest.approx(0.3)  # XGBoost's own default
    assert run_params(settings, models["lightgbm"], False, {})["model_type"] == "random_forest"


def test_the_ubjson_reader_reads_what_xgboost_writes(models):
    booster = models["xgboost"].named_steps["model"].estimator_.get_booster()
    read = _UBJ(bytes(booster.save_raw("ubj")), "x").value()
    expected = json.loads(bytes(booster.save_raw("json")))
    assert read.keys() == expected.keys()
    trees = read["learner"]["gradient_booster"]["model"]["trees"]
    want = expected["learner"]["gradient_booster"]["model"]["trees"]
    assert len(trees) == len(want) == 4
    for got, tree in zip(trees, want, strict=True):
        for key in ("left_children", "right_children", "split_indices", "default_left"):
            assert got[key] == tree[key]
        assert np.allclose(got["split_conditions"], tree["split_conditions"], rtol=1e-6)
    with pytest.raises(ValueError, match="end early"):
        _UBJ(bytes(booster.save_raw("ubj"))[:100], "x").value()
