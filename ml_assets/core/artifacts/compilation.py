"""The compiled (ONNX) flavour of a registered model version, in MLflow.

`compile_version` (registration side) compiles the version's Pipeline, checks parity,
logs `model.onnx` into the version's model artifacts (so downloading
`models:/<name>/<version>` brings it along) and records the outcome in the version's
`onnx.*` tags, the graph's sha256 included. `read_compiled` (loader side) gives the
graph back only when those tags say it passed parity on this ONNX Runtime and the file
is the one that was checked. No Dagster here.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from ml_assets.core.artifacts.onnx.contract import ONNX_ARTIFACT, RUNTIME, ConversionError
from ml_assets.core.artifacts.onnx.gate import compile_and_check
from ml_assets.core.artifacts.onnx.graph_check import MAX_BYTES
from ml_assets.core.artifacts.onnx.parity import ParityReport
from ml_assets.core.artifacts.onnx.runtime import CompiledModel

__all__ = ["ONNX_ARTIFACT", "compile_version", "read_compiled"]

TAG_PREFIX = "onnx."
PARITY_TAG = f"{TAG_PREFIX}parity"
SHA256_TAG = f"{TAG_PREFIX}sha256"
RUNTIME_TAG = f"{TAG_PREFIX}runtime"
REASON_TAG = f"{TAG_PREFIX}parity.reason"

logger = logging.getLogger(__name__)


def _listed(client: MlflowClient, name: str, version: str) -> bool:
    """Whether the version's downloadable model directory lists model.onnx."""
    import mlflow.artifacts

    found = mlflow.artifacts.list_artifacts(
        artifact_uri=f"models:/{name}/{version}", tracking_uri=client.tracking_uri)
    return any(Path(item.path).name == ONNX_ARTIFACT and not item.is_dir for item in found)


def _log_graph(client: MlflowClient, name: str, version: str, model_id: str | None,
               run_id: str, data: bytes) -> None:
    """model.onnx into the directory `models:/<name>/<version>` downloads: the logged
    model's artifacts (`model_id`, or the one the version's source `models:/m-...`
    names); for a version whose source is a run's path (`runs:/<run>/<path>`) or any
    other location, that path. Raises when the version then does not list it."""
    source = client.get_model_version(name, version).source or ""
    if not model_id and source.startswith("models:/m-"):
        model_id = source[len("models:/"):].strip("/")
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        path = Path(tmp) / ONNX_ARTIFACT
        path.write_bytes(data)
        if model_id:
            client.log_model_artifact(model_id, str(path))
        elif source.startswith("runs:/"):
            run, _, artifact_path = source[len("runs:/"):].partition("/")
            client.log_artifact(run or run_id, str(path), artifact_path.strip("/") or None)
        else:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            get_artifact_repository(client.get_model_version_download_uri(
                name, version)).log_artifact(str(path))
    if not _listed(client, name, version):
        raise RuntimeError(f"{ONNX_ARTIFACT} was logged but models:/{name}/{version} does "
                           "not list it")


def compile_version(client: MlflowClient, name: str, version: str, model_id: str | None,
                    run_id: str, pipeline, X_sample: pd.DataFrame, X_test: pd.DataFrame,
                    task: str, missing: Collection[str] | None = None) -> ParityReport:
    """Compile registered version `name`/`version` (its fitted `pipeline`), check parity
    on `X_test`, log model.onnx into its model artifacts when it converted (the logged
    model `model_id`, else where the version's source points) and set the report's
    `onnx.*` tags on the version. The figures go to the tags only: the run's metrics are
    what the service shows as the model's. Conversion and parity problems are reported,
    never raised (the version stays served by scikit-learn); MLflow errors setting the
    tags propagate. `missing`: the features a served row may leave missing (the schema's
    nullable ones; default: every one). `run_id` is used for a version whose source is
    a run's path."""
    started = time.perf_counter()
    data, report = compile_and_check(pipeline, X_sample, X_test, task, missing=missing)
    if data is not None:
        try:
            _log_graph(client, name, version, model_id, run_id, data)
        except Exception as exc:  # noqa: BLE001 - no graph with the version: not served
            logger.warning("version %s of %s: %s not logged: %s", version, name,
                           ONNX_ARTIFACT, exc)
            report = replace(report, passed=False, reason=f"{ONNX_ARTIFACT} could not be "
                             f"logged with the version ({type(exc).__name__}: {exc})")
    for key, value in report.as_tags(TAG_PREFIX).items():
        client.set_model_version_tag(name, version, key, value)
    logger.info("version %s of %s: ONNX parity %s in %.2fs%s", version, name, report.status,
                time.perf_counter() - started, f" ({report.reason})" if report.reason else "")
    return report


def read_compiled(directory: Path, version_tags: dict, feature_names: Sequence[str],
                  task: str, classes: Sequence | None) -> tuple[CompiledModel | None, str]:
    """The version's compiled graph from its downloaded model `directory`, when its tags
    say it passed parity, on this ONNX Runtime, and model.onnx's sha256 is the tagged
    one; else (None, why). Never raises for a missing, altered or refused graph."""
    tags = version_tags or {}
    status = tags.get(PARITY_TAG)
    reason = tags.get(REASON_TAG, "")
    if status is None:
        return None, "no compiled graph: the version has no onnx.parity tag"
    if status == "not_converted":
        return None, f"no compiled graph: {reason or 'it could not be converted'}"
    if status != "passed":
        return None, f"parity failed: {reason or status}"
    checked_on = tags.get(RUNTIME_TAG)
    if checked_on != RUNTIME:
        return None, (f"parity was checked on {checked_on or 'an unknown runtime'}, and this "
                      f"service runs {RUNTIME}")
    expected = tags.get(SHA256_TAG)
    if not expected:
        return None, "the version has no onnx.sha256 tag to verify model.onnx with"
    try:
        from ml_assets.core.artifacts.loading import model_file_path

        path = model_file_path(Path(directory), ONNX_ARTIFACT, "the model directory")
        if path.stat().st_size > MAX_BYTES:
            return None, (f"{ONNX_ARTIFACT} is over the {MAX_BYTES // 2**20} MiB limit")
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"{ONNX_ARTIFACT} is missing from the version's artifacts"
    except Exception as exc:  # noqa: BLE001 - e.g. a symlink leading outside
        return None, f"{ONNX_ARTIFACT} refused: {exc}"
    if hashlib.sha256(data).hexdigest() != expected:
        return None, f"{ONNX_ARTIFACT} sha256 differs from the version's onnx.sha256 tag"
    try:
        return CompiledModel.from_bytes(data, feature_names, task, classes), ""
    except ConversionError as exc:
        return None, f"{ONNX_ARTIFACT} refused: {exc}"
