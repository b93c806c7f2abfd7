"""Which versions of a registered model belong to one dataset's lineage: the `dataset`
tag each version gets at registration, or, for versions registered before the tag, the
name of the feature schema it was trained with (read once, then written as the tag)."""

from __future__ import annotations

import threading

from mlflow.tracking import MlflowClient

from ml_assets.core.artifacts.loading import model_directory, read_mlmodel
from ml_assets.core.data.production_rows import Lineage
from ml_assets.core.data.schema_diff import model_schema

# The registered version's tag naming the dataset (the data source's name, which is also
# its schema's name) it was trained on.
DATASET_TAG = "dataset"

# (registered model, version, run id) -> the dataset it was trained on ("" if unknown).
# A version never changes what it was trained on, so this is never invalidated.
_DATASETS: dict[tuple[str, str, str], str] = {}
_LOCK = threading.Lock()


def _schema_dataset(name: str, version: str) -> str:
    """The feature schema's name (its dataset) in version `version`'s MLmodel, or ""."""
    source = f"version {version} of {name}"
    try:
        with model_directory(f"models:/{name}/{version}") as directory:
            schema = model_schema(read_mlmodel(directory, source), source).schema
    except Exception:  # noqa: BLE001 - unreadable: no lineage can be proven
        return ""
    return str(schema.name or "") if schema is not None else ""


def version_dataset(client: MlflowClient, name: str, version) -> str:
    """The dataset `version` (an MLflow ModelVersion) of `name` was trained on; "" when
    it records none. Found from the schema of a version registered before the tag, it is
    written as the tag (best effort), so the model is read once, not once per run."""
    tagged = (version.tags or {}).get(DATASET_TAG)
    if tagged:
        return str(tagged)
    key = (name, str(version.version), str(version.run_id or ""))
    with _LOCK:
        if key in _DATASETS:
            return _DATASETS[key]
    found = _schema_dataset(name, str(version.version))
    with _LOCK:
        _DATASETS[key] = found
    if found:
        try:
            client.set_model_version_tag(name, str(version.version), DATASET_TAG, found)
        except Exception:  # noqa: BLE001 - a read-only registry: the cache still holds it
            pass
    return found


def model_lineage(client: MlflowClient, name: str, dataset: str) -> Lineage:
    """The versions of registered model `name` trained on `dataset`; every other version
    with the reason it is left out. A model not registered yet has no versions."""
    quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name = '{quoted}'")
    ours, others = set(), {}
    for version in versions:
        found = version_dataset(client, name, version)
        if found == dataset:
            ours.add(str(version.version))
        else:
            others[str(version.version)] = (f"trained on dataset {found!r}" if found else
                                             "its dataset is not recorded")
    return Lineage(name, dataset, frozenset(ours), others)
