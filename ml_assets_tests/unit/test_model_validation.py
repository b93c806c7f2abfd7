"""Crafted model files: the trusted types carry arrays that compiled code follows unchecked.

Every crafted file is built here, from a real fitted pipeline saved with skops (nothing
hostile is stored in the repository), by editing the arrays skops stores as `.npy`
entries of its zip, as an attacker would, or by adding zip-bomb entries. Each must be
refused by the loader naming the failed check, in bounded time and memory. A crafted
tree never reaches scikit-learn's compiled predict code in this process (it could
SIGSEGV the worker): the controls that show the attacks are live run in a subprocess.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from ml_assets.core.artifacts.archive import ArchiveLimits, MiB, check_archive
from ml_assets.core.artifacts.loading import (
    FEATURE_SCHEMA_KEY,
    InvalidModelError,
    UntrustedModelError,
    check_model,
    load_pipeline,
)
from ml_assets.core.artifacts.validation import (
    VALIDATORS,
    ModelCheckError,
    validate_model,
)
from ml_assets.core.data.schemas import model_signature, schema_yaml
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
from ml_assets_tests.support import crafted_models as crafted
from ml_assets_tests.support.crafted_models import zeros_deflated
from ml_assets_tests.support.models import TrainedPipeline, train_breast_cancer

REPO = Path(__file__).resolve().parents[2]
SECONDS = 5.0
PEAK_BYTES = 500 * MiB
GiB = 1024 * MiB


# -- legitimate models, saved once per module ---------------------------------------------

def _save(path: Path, pipeline, trained: TrainedPipeline) -> Path:
    metadata = {FEATURE_SCHEMA_KEY: schema_yaml(trained.schema), "target": trained.target,
                "classes": [str(c) for c in pipeline.classes_]}
    signature = model_signature(trained.schema, trained.target,
                                pipeline.predict(trained.X_train.head(5)))
    mlflow.sklearn.save_model(pipeline, str(path), serialization_format="skops",
                              skops_trusted_types=SKOPS_TRUSTED_TYPES, metadata=metadata,
                              signature=signature, pip_requirements=["scikit-learn"])
    return path


@pytest.fixture(scope="module")
def trained() -> TrainedPipeline:
    """The platform's pipeline (preprocessing + SelectKBest + a 5-tree RandomForest)."""
    return train_breast_cancer(n_estimators=5, seed=3)


@pytest.fixture(scope="module")
def hgb(trained) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), (
        "model", HistGradientBoostingClassifier(max_iter=5, max_leaf_nodes=8,
                                                random_state=0))]).fit(
        trained.X_train, trained.pipeline.predict(trained.X_train))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained, hgb) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("legit")
    return {"rf": _save(root / "rf", trained.pipeline, trained),
            "hgb": _save(root / "hgb", hgb, trained)}


@pytest.fixture
def copy_of(saved, tmp_path) -> Callable[[str], Path]:
    def copy(kind: str) -> Path:
        return Path(shutil.copytree(saved[kind], tmp_path / kind))
    return copy


# -- editing a skops file as an attacker would ------------------------------------------

def edit_array(model_dir: Path, original: np.ndarray,
               edit: Callable[[np.ndarray], np.ndarray]) -> None:
    """Find the `.npy` entry of the model's archive holding `original`, replace it with
    `edit(copy)` (support/crafted_models.py, shared with the per-consumer tests)."""
    crafted.edit_array(model_dir / "model.skops", original, edit)


def _forest(trained):
    return trained.pipeline.named_steps["model"]


def _x_model(trained) -> np.ndarray:
    """What the forest sees for the first test row (the legitimate preprocessing)."""
    return trained.pipeline[:-1].transform(trained.X_test.head(1))


def _nodes(tree) -> np.ndarray:
    return tree.__getstate__()["nodes"]


def _split_nodes(tree) -> np.ndarray:
    return np.flatnonzero(tree.children_left != -1)


def refused(model_dir: Path) -> tuple[InvalidModelError, float, int]:
    """load_pipeline must refuse: (the error, seconds, traced peak bytes)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InvalidModelError) as caught:
            load_pipeline(str(model_dir), source="version 9")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(caught.value, UntrustedModelError)  # what every consumer refuses
    assert str(caught.value).startswith("refused to open version 9: ")
    assert elapsed < SECONDS, f"refusal took {elapsed:.1f}s"
    assert peak < PEAK_BYTES, f"refusal peaked at {peak / MiB:.0f} MiB"
    return caught.value, elapsed, peak


# -- the controls: without validation these files crash or hang (subprocess only) --------

CONTROL = textwrap.dedent("""
    import sys, numpy as np, skops.io
    from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
    model = skops.io.load(sys.argv[1], trusted=SKOPS_TRUSTED_TYPES)
    print("loaded", flush=True)
    model.named_steps["model"].predict(np.load(sys.argv[2]))
    print("predicted", flush=True)
""")


def _control(model_dir: Path, x: np.ndarray, tmp_path: Path, timeout: float):
    np.save(tmp_path / "x.npy", x)
    return subprocess.run([sys.executable, "-c", CONTROL, str(model_dir / "model.skops"),
                           str(tmp_path / "x.npy")], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={"PYTHONPATH": str(REPO),
                                                           "PATH": "/usr/bin:/bin"})


def test_control_unvalidated_out_of_range_child_crashes_the_process(copy_of, trained,
                                                                      tmp_path):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[0].tree_

    def far(nodes):
        nodes["left_child"][0] = nodes["right_child"][0] = 2 ** 40  # far off the heap
        return nodes
    edit_array(model_dir, _nodes(tree), far)
    result = _control(model_dir, _x_model(trained), tmp_path, timeout=60)
    assert "loaded" in result.stdout and "predicted" not in result.stdout
    assert result.returncode < 0, result  # killed by a signal (SIGSEGV)


def test_control_unvalidated_cycle_never_returns(copy_of, trained, tmp_path):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[0].tree_
    x = _x_model(trained)
    path = tree.decision_path(x.astype(np.float32)).indices  # the legitimate tree: safe
    assert len(path) >= 3
    parent, node = int(path[-3]), int(path[-2])  # the row goes parent -> node -> leaf

    def loop(nodes):
        nodes["left_child"][node] = nodes["right_child"][node] = parent
        return nodes
    edit_array(model_dir, _nodes(tree), loop)
    np.save(tmp_path / "x.npy", x)
    # Loading takes seconds (imports), more on a loaded machine: wait for "loaded" (at
    # most 120 s), then the prediction must still be running 5 s later.
    process = subprocess.Popen([sys.executable, "-c", CONTROL, str(model_dir / "model.skops"),
                                str(tmp_path / "x.npy")], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True,
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    try:
        reader = ThreadPoolExecutor(max_workers=1).submit(process.stdout.readline)
        assert reader.result(timeout=120).strip() == "loaded"
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=5)  # never returns: the cycle loops forever
    finally:
        process.kill()
        process.wait(timeout=30)


# -- crafted trees, refused ------------------------------------------------------------

def test_a_legitimate_model_loads(saved, trained, hgb):
    for kind, pipeline in (("rf", trained.pipeline), ("hgb", hgb)):
        loaded = load_pipeline(str(saved[kind]))
        assert (loaded.pipeline.predict(trained.X_test) == pipeline.predict(
            trained.X_test)).all()
    assert check_model(str(saved["rf"])) == sorted(
        ["numpy.dtype", "sklearn.feature_selection._univariate_selection.f_classif",
         "sklearn.tree._tree.Tree"])


def test_a_child_index_out_of_range_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[3].tree_
    n = tree.node_count
    node = int(_split_nodes(tree)[len(_split_nodes(tree)) // 2])

    def out_of_range(nodes):
        nodes["right_child"][node] = n + 371
        return nodes
    edit_array(model_dir, _nodes(tree), out_of_range)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.children"
    assert (f"tree 3 of RandomForestClassifier step 'model': node {node}'s right child "
            f"{n + 371} is outside 0..{n - 1} (node_count {n})") in str(error)


def test_a_negative_child_that_is_not_a_leaf_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[1].tree_
    node = int(_split_nodes(tree)[0])

    def half_leaf(nodes):
        nodes["left_child"][node] = -1  # a leaf on one side only
        return nodes
    edit_array(model_dir, _nodes(tree), half_leaf)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.leaves" and f"node {node} has children -1 and" in str(error)


def test_a_tree_with_a_cycle_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[0].tree_
    path = tree.decision_path(_x_model(trained).astype(np.float32)).indices
    assert len(path) >= 4
    parent, node = int(path[-3]), int(path[-2])

    def loop(nodes):
        nodes["left_child"][node] = parent
        return nodes
    edit_array(model_dir, _nodes(tree), loop)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.cycle"
    assert f"tree 0 of RandomForestClassifier step 'model': node {parent} is the child of " \
           "2 links" in str(error)


def test_a_tree_pointing_back_at_its_root_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[2].tree_
    node = int(_split_nodes(tree)[-1])

    def to_root(nodes):
        nodes["right_child"][node] = 0
        return nodes
    edit_array(model_dir, _nodes(tree), to_root)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.cycle"
    assert f"node {node}'s right child is the root (node 0)" in str(error)


def test_a_detached_cycle_is_refused():
    """Links that give every node but the root exactly one parent, yet leave a loop no
    path from the root reaches (in memory: a Tree rebuilt from an edited state)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.tree._tree import Tree

    X, y = load_breast_cancer(return_X_y=True)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y).tree_
    state = tree.__getstate__()
    nodes, values = state["nodes"][:5].copy(), state["values"][:5].copy()
    # 0 -> (1, 2) leaves; 3 -> (4, 3): node 3 is its own parent, 4 its child.
    nodes["left_child"] = [1, -1, -1, 4, -1]
    nodes["right_child"] = [2, -1, -1, 3, -1]
    nodes["feature"] = [0, -2, -2, 0, -2]
    nodes["threshold"] = [1.0, -2.0, -2.0, 1.0, -2.0]
    crafted = Tree(tree.n_features, np.asarray(tree.n_classes), tree.n_outputs)
    crafted.__setstate__({**state, "nodes": nodes, "values": values, "node_count": 5})
    with pytest.raises(ModelCheckError, match="node 3 is not reachable from the root") \
            as caught:
        VALIDATORS[Tree](crafted, "a tree")
    assert caught.value.check == "tree.unreachable"


def test_mismatched_tree_array_lengths_are_refused(copy_of, trained):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[4].tree_
    edit_array(model_dir, tree.__getstate__()["values"], lambda values: values[:-1])
    error, _, _ = refused(model_dir)
    # scikit-learn's own Tree refuses to be rebuilt: the loader names it.
    assert error.check == "construct" and "value array" in str(error)


def test_a_per_feature_array_of_the_wrong_length_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    scaler = trained.pipeline.named_steps["preprocess"].named_steps["columns"] \
        .named_transformers_["numeric"].named_steps["scale"]
    edit_array(model_dir, scaler.mean_, lambda mean: mean[:-1])
    error, _, _ = refused(model_dir)
    assert error.check == "scaler.arrays"
    assert ("StandardScaler step 'scale' of Pipeline transformer 'numeric' of "
            "ColumnTransformer step 'columns' of Pipeline step 'preprocess': mean_ is not "
            "30 finite numbers (n_features_in_ 30)") in str(error)


def test_selector_scores_of_the_wrong_length_are_refused(copy_of, trained):
    model_dir = copy_of("rf")
    selector = trained.pipeline.named_steps["preprocess"].named_steps["select"]
    edit_array(model_dir, selector.scores_, lambda scores: np.concatenate([scores, scores]))
    error, _, _ = refused(model_dir)
    assert error.check == "selector.scores" and "scores_ has shape (60,)" in str(error)


def test_a_feature_index_out_of_range_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    forest = _forest(trained)
    tree = forest.estimators_[2].tree_
    width = forest.n_features_in_

    def wide(nodes):
        nodes["feature"][0] = width + 7
        return nodes
    edit_array(model_dir, _nodes(tree), wide)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.features"
    assert (f"tree 2 of RandomForestClassifier step 'model': node 0's feature {width + 7} "
            f"is outside 0..{width - 1} (n_features {width})") in str(error)


def test_a_nan_threshold_is_refused(copy_of, trained):
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[1].tree_

    def nan(nodes):
        nodes["threshold"][0] = np.nan
        return nodes
    edit_array(model_dir, _nodes(tree), nan)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.thresholds" and "node 0's threshold is NaN" in str(error)


def _predictor(hgb, i: int = 2):
    return hgb.named_steps["model"]._predictors[i][0]


def test_a_hist_gradient_boosting_node_index_out_of_range_is_refused(copy_of, hgb):
    model_dir = copy_of("hgb")
    predictor = _predictor(hgb)
    n = predictor.nodes.shape[0]
    node = int(np.flatnonzero(predictor.nodes["is_leaf"] == 0)[1])

    def out_of_range(nodes):
        nodes["right"][node] = 1000
        return nodes
    edit_array(model_dir, predictor.nodes, out_of_range)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.children"
    assert (f"predictor 2 of HistGradientBoostingClassifier step 'model': node {node}'s "
            f"right child 1000 is outside 0..{n - 1} (node_count {n})") in str(error)


def test_a_hist_gradient_boosting_cycle_is_refused(copy_of, hgb):
    model_dir = copy_of("hgb")
    predictor = _predictor(hgb, 1)
    node = int(np.flatnonzero(predictor.nodes["is_leaf"] == 0)[-1])

    def loop(nodes):
        nodes["left"][node] = 0
        return nodes
    edit_array(model_dir, predictor.nodes, loop)
    error, _, _ = refused(model_dir)
    assert error.check == "tree.cycle" and "is the root (node 0)" in str(error)


def test_a_hist_gradient_boosting_feature_or_bitset_out_of_range_is_refused(copy_of, hgb):
    model_dir = copy_of("hgb")
    predictor = _predictor(hgb, 3)
    width = hgb.named_steps["model"].n_features_in_

    def wide(nodes):
        nodes["feature_idx"][0] = width
        return nodes
    edit_array(model_dir, predictor.nodes, wide)
    error, _, _ = refused(model_dir)
    assert error.check == "predictor.features"
    assert f"node 0's feature {width} is outside 0..{width - 1}" in str(error)


def test_a_categorical_split_without_a_bitset_row_is_refused(copy_of, hgb):
    model_dir = copy_of("hgb")
    predictor = _predictor(hgb, 4)

    def categorical(nodes):
        nodes["is_categorical"][0] = 1
        nodes["bitset_idx"][0] = 5  # the predictor has no bitset rows at all
        return nodes
    edit_array(model_dir, predictor.nodes, categorical)
    error, _, _ = refused(model_dir)
    # The estimator's check comes first: no feature of this model is categorical.
    assert error.check == "predictor.categorical"
    assert "node 0 makes a categorical split on feature" in str(error)
    # The predictor's own check, on its own: the bitset row does not exist.
    crafted = copy.deepcopy(predictor)
    crafted.nodes = categorical(crafted.nodes.copy())
    with pytest.raises(ModelCheckError, match="node 0's bitset index 5 is outside") as caught:
        VALIDATORS[TreePredictor](crafted, "a predictor")
    assert caught.value.check == "predictor.bitsets"


def test_an_array_carrying_type_without_a_validator_needs_the_operators_word(
        saved, tmp_path, monkeypatch):
    """A type added to the platform's reviewed list without a validator is refused;
    the operator's explicit ML_SKOPS_TRUSTED_TYPES lets it through (its arrays are
    then theirs to vouch for)."""
    from ml_assets.core.artifacts import loading
    from ml_assets_tests.support import user_factory

    model = user_factory.make_model().fit(np.random.default_rng(0).normal(size=(40, 3)),
                                          np.arange(40.0))
    with pytest.raises(ModelCheckError, match="ClipScaler carries arrays that no "
                       "validator checks") as caught:
        validate_model(model, [user_factory.TRUSTED])
    assert caught.value.check == "unvalidated_type"
    assert validate_model(model, [user_factory.TRUSTED], [user_factory.TRUSTED]) > 0

    # Through the loader: the platform's list gains the type, the operator's does not.
    model_dir = Path(shutil.copytree(saved["rf"], tmp_path / "m"))
    skops.io.dump(Pipeline([("model", model)]), model_dir / "model.skops")
    monkeypatch.setattr(loading, "SKOPS_TRUSTED_TYPES",
                        [*SKOPS_TRUSTED_TYPES, user_factory.TRUSTED])
    monkeypatch.delenv("ML_SKOPS_TRUSTED_TYPES", raising=False)
    error, _, _ = refused(model_dir)
    assert error.check == "unvalidated_type" and "ML_SKOPS_TRUSTED_TYPES" in str(error)
    monkeypatch.setenv("ML_SKOPS_TRUSTED_TYPES", user_factory.TRUSTED)
    assert load_pipeline(str(model_dir)).pipeline.named_steps["model"] is not None


def test_hist_gradient_boosting_known_categories_must_be_codes():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :3].copy()
    X[:, 2] = (X[:, 2] > 90) * 2
    model = HistGradientBoostingClassifier(max_iter=2, categorical_features=[2]).fit(X, y)
    assert validate_model(model) > 0
    categorical = int(np.flatnonzero(model._bin_mapper.is_categorical_)[0])
    model._bin_mapper.bin_thresholds_[categorical] = np.array([0.0, 1000.0])
    with pytest.raises(ModelCheckError, match="are not codes in 0..255"):
        validate_model(model)


# -- zip bombs and the archive caps -----------------------------------------------------

def add_entries(model_dir: Path, extra: list[tuple[str, bytes, int, int, int]]) -> None:
    skops_file = model_dir / "model.skops"
    entries = [(name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data))
               for name, data in crafted.archive_entries(skops_file).items()]
    crafted.write_zip(skops_file, entries + extra)


def test_the_hand_written_zip_is_what_skops_reads(copy_of, trained):
    """Control for the bombs: the legit archive rewritten by `write_zip` still loads."""
    model_dir = copy_of("rf")
    add_entries(model_dir, [])
    loaded = load_pipeline(str(model_dir))
    assert (loaded.pipeline.predict(trained.X_test) == trained.pipeline.predict(
        trained.X_test)).all()


def test_an_entry_inflating_past_the_cap_is_refused_before_decompression(copy_of):
    model_dir = copy_of("rf")
    bomb = zeros_deflated(3 * GiB)  # 3 MB on disk
    add_entries(model_dir, [("bomb.npy", bomb, zipfile.ZIP_DEFLATED, 3 * GiB, 0)])
    assert (model_dir / "model.skops").stat().st_size < 10 * MiB
    error, _, _ = refused(model_dir)
    assert error.check == "archive.uncompressed_size"
    assert "declares more than 1,073,741,824 bytes uncompressed" in str(error)
    assert "'bomb.npy' alone declares 3,221,225,472" in str(error)


def test_an_absurd_compression_ratio_is_refused(copy_of):
    model_dir = copy_of("rf")
    bomb = zeros_deflated(100 * MiB)  # 100 KB
    add_entries(model_dir, [("ratio.npy", bomb, zipfile.ZIP_DEFLATED, 100 * MiB, 0)])
    error, _, _ = refused(model_dir)
    assert error.check == "archive.compression_ratio"
    assert "'ratio.npy' declares 104,857,600 bytes" in str(error) and "200:1" in str(error)


def test_a_central_directory_lying_about_the_size_is_caught_while_streaming(copy_of):
    """Declares 1 MiB (ratio and total fine); the deflate stream holds 3 GiB."""
    model_dir = copy_of("rf")
    bomb = zeros_deflated(3 * GiB)
    add_entries(model_dir, [("liar.npy", bomb, zipfile.ZIP_DEFLATED, MiB,
                             zlib.crc32(bytes(MiB)))])
    error, elapsed, peak = refused(model_dir)
    assert error.check == "archive.size_mismatch"
    assert "'liar.npy' inflates past the 1,048,576 bytes its central directory declares" \
        in str(error)
    print(f"lying bomb refused in {elapsed:.3f}s, traced peak {peak / MiB:.1f} MiB")


def test_a_lying_bomb_costs_little_rss_in_a_child_process(copy_of, tmp_path):
    """Peak RSS of a fresh process refusing the lying 3 GiB bomb, over its RSS before."""
    model_dir = copy_of("rf")
    add_entries(model_dir, [("liar.npy", zeros_deflated(3 * GiB), zipfile.ZIP_DEFLATED,
                             MiB, 0)])
    script = textwrap.dedent("""
        import json, os, resource, sys, time
        import skops.io
        from ml_assets.core.artifacts.loading import InvalidModelError, load_pipeline
        with open("/proc/self/statm") as statm:  # resident now, in pages
            resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, ever
        started = time.perf_counter()
        try:
            load_pipeline(sys.argv[1])
            check = None
        except InvalidModelError as exc:
            check = exc.check
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # peak_growth: how far the refusal raised the high-water mark (0: not at all);
        # bound: peak over the resident size before, an upper bound on what it used.
        print(json.dumps({"check": check, "seconds": seconds,
                          "peak_growth_kib": peak - peak_before,
                          "bound_kib": peak - resident}))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(model_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["check"] == "archive.size_mismatch"
    assert report["seconds"] < SECONDS
    assert report["bound_kib"] * 1024 < PEAK_BYTES, report
    print(f"child process: {report}")


def test_an_entry_holding_less_than_declared_is_refused(copy_of):
    model_dir = copy_of("rf")
    data = bytes(1000)
    add_entries(model_dir, [("short.npy", zlib.compress(data)[2:-4], zipfile.ZIP_DEFLATED,
                             2000, zlib.crc32(data))])
    error, _, _ = refused(model_dir)
    assert error.check == "archive.size_mismatch"
    assert "'short.npy' holds 1,000 bytes but its central directory declares 2,000" \
        in str(error)


def test_a_wrong_crc_is_refused(copy_of):
    model_dir = copy_of("rf")
    add_entries(model_dir, [("crc.npy", b"abc", zipfile.ZIP_STORED, 3, 12345)])
    error, _, _ = refused(model_dir)
    assert error.check == "archive.crc"


def test_other_compression_methods_are_refused(copy_of):
    model_dir = copy_of("rf")
    add_entries(model_dir, [("b.npy", b"x" * 40, zipfile.ZIP_BZIP2, 40, zlib.crc32(b"x"))])
    error, _, _ = refused(model_dir)
    assert error.check == "archive.compression"


def test_too_many_entries_are_refused(copy_of):
    model_dir = copy_of("rf")
    add_entries(model_dir, [(f"pad/{i}", b"", zipfile.ZIP_STORED, 0, 0)
                            for i in range(10_001)])
    error, _, _ = refused(model_dir)
    assert error.check == "archive.entries"
    assert "has more than 10,000 entries (ML_MODEL_MAX_ENTRIES)" in str(error)


def test_a_central_directory_lying_about_its_entry_count_is_counted(tmp_path):
    """The end record claims 1 entry; the central directory holds 50: counted raw."""
    path = tmp_path / "m.skops"
    crafted.write_zip(path, [(f"e{i}", b"", zipfile.ZIP_STORED, 0, 0) for i in range(50)])
    raw = bytearray(path.read_bytes())
    struct.pack_into("<2H", raw, len(raw) - 22 + 8, 1, 1)
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelCheckError) as caught:
        check_archive(path, ArchiveLimits(max_entries=10))
    assert caught.value.check == "archive.entries"


@pytest.mark.parametrize("setting, check", [
    ("ML_MODEL_MAX_FILE_BYTES", "archive.file_size"),
    ("ML_MODEL_MAX_ENTRIES", "archive.entries"),
    ("ML_MODEL_MAX_UNCOMPRESSED_BYTES", "archive.uncompressed_size"),
])
def test_the_caps_are_settings(saved, monkeypatch, setting, check):
    summary = check_archive(saved["rf"] / "model.skops")
    actual = {"ML_MODEL_MAX_FILE_BYTES": summary.file_bytes,
              "ML_MODEL_MAX_ENTRIES": summary.entries,
              "ML_MODEL_MAX_UNCOMPRESSED_BYTES": summary.uncompressed_bytes}[setting]
    monkeypatch.setenv(setting, str(actual))
    load_pipeline(str(saved["rf"]))  # exactly at the cap: loads
    monkeypatch.setenv(setting, str(actual - 1))
    error, _, _ = refused(saved["rf"])
    assert error.check == check and setting in str(error)


def test_a_non_zip_file_is_refused(copy_of):
    model_dir = copy_of("rf")
    (model_dir / "model.skops").write_bytes(b"not a zip at all" * 100)
    error, _, _ = refused(model_dir)
    assert error.check == "archive.format"


# -- every consumer's entry point refuses the same way ----------------------------------

def test_check_model_validates_the_arrays_too(copy_of, trained):
    """Rollback and rollout use check_model: a crafted tree is not restored either."""
    model_dir = copy_of("rf")
    tree = _forest(trained).estimators_[3].tree_

    def out_of_range(nodes):
        nodes["left_child"][0] = 10 ** 6
        return nodes
    edit_array(model_dir, _nodes(tree), out_of_range)
    with pytest.raises(InvalidModelError, match="tree 3 of RandomForestClassifier"):
        check_model(str(model_dir), source="version 4")


# -- legitimate models keep loading; validation is fast ----------------------------------

def _legit_models():
    import warnings

    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
    from sklearn.ensemble import (
        BaggingClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingRegressor,
        IsolationForest,
        RandomForestClassifier,
        RandomForestRegressor,
        StackingClassifier,
        VotingClassifier,
    )
    from sklearn.feature_selection import SelectKBest
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import FeatureUnion
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    warnings.filterwarnings("ignore")
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xi, yi = load_iris(return_X_y=True)
    Xr, yr = load_diabetes(return_X_y=True)
    nan = Xc.copy()
    nan[::7, 3] = np.nan
    frame = pd.DataFrame({"a": Xc[:, 0], "b": np.where(Xc[:, 1] > 19, "hi", "lo"),
                          "c": np.where(yc == 1, "x", np.where(Xc[:, 2] > 90, "y", "z"))})
    encode = ColumnTransformer([("num", StandardScaler(), ["a"]),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), ["b", "c"]),
                                ("ord", OrdinalEncoder(), [2])])
    return {
        "decision tree": Pipeline([("scale", StandardScaler()), (
            "model", DecisionTreeClassifier(random_state=0))]).fit(Xc, yc),
        "forest, multiclass": RandomForestClassifier(10, random_state=0).fit(Xi, yi),
        "forest with NaN (inf thresholds)": RandomForestClassifier(
            10, random_state=0).fit(nan, yc),
        "forest, multi-output": RandomForestRegressor(5, random_state=0).fit(
            Xr, np.c_[yr, yr * 2]),
        "extra trees": ExtraTreesRegressor(5, random_state=0).fit(Xr, yr),
        "gradient boosting, binary": GradientBoostingClassifier(
            n_estimators=5).fit(Xc, yc),
        "gradient boosting, multiclass": GradientBoostingClassifier(
            n_estimators=5).fit(Xi, yi),
        "gradient boosting, regression": GradientBoostingRegressor(
            n_estimators=5).fit(Xr, yr),
        "hist gradient boosting with NaN": HistGradientBoostingRegressor(
            max_iter=5).fit(nan, yc),
        "hist gradient boosting, multiclass": HistGradientBoostingClassifier(
            max_iter=5).fit(Xi, yi),
        "hist gradient boosting, categorical": HistGradientBoostingClassifier(
            max_iter=5, categorical_features=[1, 2]).fit(
            OrdinalEncoder().fit_transform(frame[["a", "b", "c"]]), yc),
        "isolation forest": IsolationForest(n_estimators=5, max_features=0.5,
                                            random_state=0).fit(Xc),
        "bagging": BaggingClassifier(DecisionTreeClassifier(), n_estimators=4,
                                     max_features=0.5, random_state=0).fit(Xc, yc),
        "encoders": Pipeline([("encode", encode), ("model", LogisticRegression())]).fit(
            frame, yc),
        "union, imputer, selector": Pipeline([
            ("impute", SimpleImputer()),
            ("union", FeatureUnion([("scale", StandardScaler()),
                                    ("select", SelectKBest(k=3))])),
            ("model", Ridge())]).fit(nan, yc),
        "voting": VotingClassifier([("tree", DecisionTreeClassifier(max_depth=2)),
                                    ("lr", LogisticRegression(max_iter=50))]).fit(Xi, yi),
        "stacking": StackingClassifier([("tree", DecisionTreeClassifier(max_depth=2))],
                                       cv=2).fit(Xi, yi),
        "grid search": GridSearchCV(DecisionTreeClassifier(), {"max_depth": [1, 2]},
                                    cv=2).fit(Xi, yi),
    }


def test_legitimate_models_pass_validation_through_skops(tmp_path):
    for name, model in _legit_models().items():
        path = tmp_path / "m.skops"
        skops.io.dump(model, path)
        check_archive(path)
        needed = skops.io.get_untrusted_types(file=path)
        loaded = skops.io.load(path, trusted=needed)
        try:
            assert validate_model(loaded, needed) > 0
        except ModelCheckError as exc:  # pragma: no cover - the message says which
            pytest.fail(f"{name}: {exc}")


def test_validating_a_200_tree_forest_is_fast(tmp_path):
    trained = train_breast_cancer(n_estimators=200, seed=3)
    path = tmp_path / "rf200.skops"
    skops.io.dump(trained.pipeline, path)
    started = time.perf_counter()
    check_archive(path)
    archive_seconds = time.perf_counter() - started
    loads, validations = [], []
    for _ in range(3):
        started = time.perf_counter()
        model = skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)
        loads.append(time.perf_counter() - started)
        started = time.perf_counter()
        validate_model(model, SKOPS_TRUSTED_TYPES)
        validations.append(time.perf_counter() - started)
    load, validation = min(loads), min(validations)
    print(f"200 trees, {path.stat().st_size / MiB:.1f} MiB: archive check "
          f"{archive_seconds * 1000:.0f} ms, skops load {load * 1000:.0f} ms, validation "
          f"{validation * 1000:.0f} ms ({validation / load:.0%} of load)")
    assert validation < 0.5 * load
