"""Hostile model versions for the safe-loading tests: a pickle whose `__reduce__` writes a
marker file, and a pipeline behind a FunctionTransformer calling `write_marker` (a type
nobody reviewed), logged the way an attacker would, with the metadata log_pipeline
writes. The marker file proves whether a byte of their code ran."""

from __future__ import annotations

from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from sklearn.preprocessing import FunctionTransformer

from ml_assets.core.artifacts.loading import FEATURE_SCHEMA_KEY
from ml_assets.core.data.schemas import model_signature, schema_yaml
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
from ml_assets_tests.support.models import TrainedPipeline, experiment_id, register

HOOK_TYPE = f"{__name__}.write_marker"
PIP = ["scikit-learn"]  # explicit requirements: MLflow does not load the model to infer them


# -- the payloads (module level: importable by name, as an attacker's would be) ----------

def _pwned(marker: str, payload):
    """What unpickling a PickleBomb calls: writes the marker, returns a working model."""
    Path(marker).write_text("pickle payload ran")
    return payload


class PickleBomb:
    """Pickles fine; unpickling it runs `_pwned` (the classic `__reduce__` exploit)."""

    def __init__(self, pipeline, marker: Path):
        self.pipeline, self.marker = pipeline, str(marker)

    def __reduce__(self):
        return (_pwned, (self.marker, self.pipeline))


def write_marker(X, marker: str):
    """A non-scikit-learn function a FunctionTransformer calls on every prediction."""
    Path(marker).write_text("skops-trusted function ran")
    return X


def hooked(trained: TrainedPipeline, marker: Path):
    """The good pipeline behind a FunctionTransformer(write_marker): same predictions, but
    its skops file needs `HOOK_TYPE`, which nobody reviewed."""
    from sklearn.pipeline import Pipeline

    hook = FunctionTransformer(write_marker, kw_args={"marker": str(marker)})
    return Pipeline([("hook", hook.fit(trained.X_train)), ("model", trained.pipeline)])


# -- helpers -----------------------------------------------------------------------------

def _metadata(trained: TrainedPipeline) -> dict:
    return {FEATURE_SCHEMA_KEY: schema_yaml(trained.schema), "target": trained.target,
            "classes": [str(c) for c in trained.pipeline.classes_]}


def _signature(trained: TrainedPipeline):
    return model_signature(trained.schema, trained.target,
                           trained.pipeline.predict(trained.X_train.head(5)))


def log_raw(model, trained: TrainedPipeline, name: str, experiment: str, fmt: str,
            trusted: list[str] | None = None, alias: str | None = "champion") -> str:
    """Log `model` with MLflow directly (the format and trusted list an attacker picks),
    with the same metadata log_pipeline writes; register it and point `alias` at it."""
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            model, name="model", signature=_signature(trained), serialization_format=fmt,
            skops_trusted_types=trusted, metadata=_metadata(trained), pip_requirements=PIP)
    version = str(mlflow.register_model(info.model_uri, name).version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def save_dir(path: Path, model, trained: TrainedPipeline, fmt: str = "skops",
             trusted: list[str] | None = None) -> Path:
    mlflow.sklearn.save_model(model, str(path), serialization_format=fmt,
                              skops_trusted_types=trusted or SKOPS_TRUSTED_TYPES,
                              metadata=_metadata(trained), signature=_signature(trained),
                              pip_requirements=PIP)
    return path


def edit_flavor(model_dir: Path, **changes) -> None:
    mlmodel = model_dir / "MLmodel"
    document = yaml.safe_load(mlmodel.read_text())
    for key, value in changes.items():
        if value is None:
            document["flavors"]["sklearn"].pop(key, None)
        else:
            document["flavors"]["sklearn"][key] = value
    mlmodel.write_text(yaml.safe_dump(document))


def hostile_registry(trained: TrainedPipeline, marker: Path, name: str,
                     artifact_root: str | None = None) -> str:
    """v1 good (the champion); v2 a pickle bomb; v3 a skops file trusting its own hook
    (no alias): registered under `name`, which is returned."""
    experiment = experiment_id(name, artifact_root)
    register(trained, name, experiment, alias="champion")
    log_raw(PickleBomb(trained.pipeline, marker), trained, name, experiment, "pickle",
            alias=None)
    log_raw(hooked(trained, marker), trained, name, experiment, "skops",
            trusted=[*SKOPS_TRUSTED_TYPES, HOOK_TYPE], alias=None)
    marker.unlink(missing_ok=True)  # MLflow's own save-time check predicted with v3
    return name
