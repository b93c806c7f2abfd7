"""Crafted model versions for the consumer tests: a good registered version's artifacts,
copied, with its `model.skops` edited as an attacker with write access to the artifact
store would (an array of a trusted `sklearn.tree._tree.Tree` rewritten, or a zip-bomb
entry added), registered as a new version of the same model. Built by the test, never
stored. A crafted file must never reach scikit-learn's compiled predict code in the test
process (it could SIGSEGV or hang it): only the refusals are exercised here; the
controls that show the attacks are live run in a subprocess
(ml_assets_tests/unit/test_model_validation.py)."""

from __future__ import annotations

import io
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from ml_assets_tests.support.models import TrainedPipeline

MiB = 1024 * 1024

# crafted kind -> the check its refusal must name (InvalidModelError.check)
CRAFTED_CHECKS = {
    "out_of_range_child": "tree.children",
    "cycle": "tree.cycle",
    "mismatched_lengths": "construct",  # scikit-learn's own Tree refuses to be rebuilt
    "zip_bomb": "archive.uncompressed_size",
}
CRAFTED = tuple(CRAFTED_CHECKS)


# -- editing a skops file --------------------------------------------------------------

def archive_entries(skops_file: Path) -> dict[str, bytes]:
    """Every entry of a skops archive, by name."""
    with zipfile.ZipFile(skops_file) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _same(stored: np.ndarray, original: np.ndarray) -> bool:
    if stored.dtype != original.dtype or stored.shape != original.shape:
        return False
    fields = original.dtype.names or (None,)
    return all(np.array_equal(stored if f is None else stored[f],
                              original if f is None else original[f]) for f in fields)


def write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip written by hand: (name, data as stored, method, declared size, crc) per
    entry, the declared size written in both headers whatever the data holds."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, method, declared, crc in entries:
        offset, raw = out.tell(), name.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                              len(data), declared, len(raw), 0) + raw + data)
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0,
                                  crc, len(data), declared, len(raw), 0, 0, 0, 0, 0,
                                  offset) + raw)
    start = out.tell()
    out.write(central.getvalue())
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                          len(central.getvalue()), start, 0))
    path.write_bytes(out.getvalue())


def edit_array(skops_file: Path, original: np.ndarray,
               edit: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace the one `.npy` entry holding `original` with `edit(copy)`."""
    entries = archive_entries(skops_file)
    found = [name for name, data in entries.items() if name.endswith(".npy")
             and _same(np.load(io.BytesIO(data), allow_pickle=False), original)]
    assert len(found) == 1, f"{len(found)} entries hold that array"
    buffer = io.BytesIO()
    np.save(buffer, edit(np.load(io.BytesIO(entries[found[0]])).copy()), allow_pickle=False)
    entries[found[0]] = buffer.getvalue()
    with zipfile.ZipFile(skops_file, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def zeros_deflated(size: int) -> bytes:
    """A raw deflate stream of `size` zero bytes (whole MiB) from one repeated segment:
    2 GiB cost 2 MB on disk and no time to build."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return segment * (size // MiB) + compressor.flush(zlib.Z_FINISH)


# -- the crafts, on the good model's own arrays ------------------------------------------

def _trees(trained: TrainedPipeline):
    return trained.pipeline.named_steps["model"].estimators_


def _nodes(tree) -> np.ndarray:
    return tree.__getstate__()["nodes"]


def craft(kind: str, skops_file: Path, trained: TrainedPipeline) -> None:
    """Edit `skops_file` (the skops file of `trained.pipeline`) into crafted `kind`."""
    if kind == "zip_bomb":
        entries = [(name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data))
                   for name, data in archive_entries(skops_file).items()]
        size = 2 * 1024 * MiB  # past the 1 GiB default cap; 2 MB on disk
        write_zip(skops_file, [*entries, ("bomb.npy", zeros_deflated(size),
                                          zipfile.ZIP_DEFLATED, size, 0)])
        return
    trees = _trees(trained)
    if kind == "out_of_range_child":
        tree = trees[0].tree_
        node = int(np.flatnonzero(tree.children_left != -1)[0])

        def edit(nodes):
            nodes["right_child"][node] = 2 ** 40  # far off the heap: SIGSEGV unchecked
            return nodes
        edit_array(skops_file, _nodes(tree), edit)
    elif kind == "cycle":
        tree = trees[0].tree_
        x = trained.pipeline[:-1].transform(trained.X_test.head(1)).astype(np.float32)
        path = tree.decision_path(x).indices  # the legitimate tree: safe to walk
        assert len(path) >= 3, "the first tree is too shallow for a cycle"
        parent, node = int(path[-3]), int(path[-2])  # the row goes parent -> node -> leaf

        def edit(nodes):
            nodes["left_child"][node] = nodes["right_child"][node] = parent  # never returns
            return nodes
        edit_array(skops_file, _nodes(tree), edit)
    elif kind == "mismatched_lengths":
        tree = trees[-1].tree_
        edit_array(skops_file, tree.__getstate__()["values"], lambda values: values[:-1])
    else:
        raise ValueError(f"unknown crafted kind {kind!r}")


def register_crafted(name: str, good_version: str, kind: str, trained: TrainedPipeline,
                     experiment: str) -> str:
    """Copy version `good_version` of `name` (whose pipeline is `trained.pipeline`),
    craft its model.skops into `kind`, log the copy in a new run of `experiment` and
    register it as a new version of `name` (no alias); the version."""
    with tempfile.TemporaryDirectory(prefix="crafted-") as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{good_version}", dst_path=tmp))
        craft(kind, model_dir / "model.skops", trained)
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.set_tag("crafted", kind)
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client = MlflowClient()
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    return str(version.version)
