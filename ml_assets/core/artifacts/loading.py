"""The one way a model is opened: the platform, never the artifact, decides how.

Every place that opens a logged model (the prediction API, monitoring, promotion,
scripts, benchmarks) calls `load_pipeline`. It never goes through MLflow's loaders
(`mlflow.sklearn.load_model` / `mlflow.pyfunc.load_model`), which take the
serialization format *and* skops' trusted types from the model's own MLmodel file,
so a crafted artifact could pick pickle or trust `builtins.exec`. Instead:

1. the artifacts are downloaded to a temporary directory (or a local directory is
   used as is) and MLmodel is parsed with `yaml.safe_load`;
2. the sklearn flavor must say `serialization_format: skops`: pickle, cloudpickle or
   no format (which MLflow treats as pickle) are refused;
3. the `pickled_model` path must name a regular file inside the model directory
   (no absolute path, no `..`, no symlink leading out);
4. the skops file (a zip) is checked before any byte of it is decompressed: file
   size, entry count, declared uncompressed size and compression ratio are capped,
   and every entry is inflated as a bounded stream that must match its declared size
   and CRC (`archive.check_archive`; ML_MODEL_MAX_* settings);
5. `skops.io.get_untrusted_types` lists what the file needs beyond skops' defaults;
   any type outside the platform's reviewed list (`SKOPS_TRUSTED_TYPES`) plus the
   operator's `ML_SKOPS_TRUSTED_TYPES` is refused. The artifact's own
   `skops_trusted_types` is ignored;
6. `skops.io.load(path, trusted=<platform list + operator extras>)`, and the object
   must be a scikit-learn estimator with `predict`;
6a. before step 6, a LightGBM or XGBoost booster in the file is checked as the file
   records it (`booster_checks.check_booster_records`: tree sizes, child and feature
   indices, acyclic trees), because skops hands it to the library's C++ parser;
6b. a CatBoost model is stored as its JSON export, checked while skops builds its
   holder, before CatBoost parses it (`catboost_checks`, `CatBoostModel.__setstate__`);
7. before anything predicts with it, every array-carrying object in it is validated
   (`validation.validate_model`: tree links and indices, per-feature array shapes),
   because compiled prediction code trusts those indices.

Refusals raise `UntrustedModelError` (`InvalidModelError` for a failed check, naming
it), naming the model, what was refused and how an operator allows it. No Dagster
import, no serving import.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import pandera.pandas as pa
import yaml
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from ml_assets.core.artifacts.archive import ArchiveLimits, check_archive
from ml_assets.core.artifacts.booster_checks import check_booster_records
from ml_assets.core.artifacts.validation import ModelCheckError, validate_model
from ml_assets.core.data.schemas import schema_from_yaml
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES
from ml_assets.settings import PlatformSettings

FEATURE_SCHEMA_KEY = "feature_schema"
TRUSTED_TYPES_ENV = "ML_SKOPS_TRUSTED_TYPES"
MLMODEL_FILE = "MLmodel"
SKOPS_FORMAT = "skops"
# Written by log_pipeline when the operator's extras were needed, for a person to review.
OPERATOR_TYPES_KEY = "skops_operator_trusted_types"
OPERATOR_TYPES_TAG = "skops.operator_trusted_types"


class UntrustedModelError(Exception):
    """A model the platform refuses to open (or a pipeline it refuses to log): unsafe
    serialization format, a type nobody reviewed, or a file path leading out of the
    model. The message names the model, what was refused and how to allow it."""

    def __init__(self, source: str, message: str, types: Sequence[str] = (),
                 serialization_format: str | None = None):
        super().__init__(message)
        self.source = source
        self.types = list(types)
        self.serialization_format = serialization_format


class InvalidModelError(UntrustedModelError):
    """A model whose file or arrays failed a check (`check` names it: `archive.entries`,
    `tree.children`, ...): a zip bomb, or an index compiled code would follow out of
    bounds. Refused like any untrusted model."""

    def __init__(self, source: str, error: ModelCheckError):
        super().__init__(source, f"refused to open {source}: {error} (check {error.check})")
        self.check = error.check


def archive_limits(settings: PlatformSettings | None = None) -> ArchiveLimits:
    """The skops file caps from the ML_MODEL_MAX_* settings."""
    settings = settings or PlatformSettings.from_env()
    return ArchiveLimits(max_file_bytes=settings.model_max_file_bytes,
                         max_uncompressed_bytes=settings.model_max_uncompressed_bytes,
                         max_entries=settings.model_max_entries,
                         max_ratio=settings.model_max_compression_ratio)


def operator_trusted_types() -> tuple[str, ...]:
    """The operator's extra trusted types (ML_SKOPS_TRUSTED_TYPES), read now."""
    return PlatformSettings.from_env().skops_trusted_types


def trusted_types(extra: Sequence[str] | None = None) -> list[str]:
    """The platform's reviewed list plus the operator's extras (`extra` replaces the
    environment's when given)."""
    extras = operator_trusted_types() if extra is None else tuple(extra)
    return list(dict.fromkeys([*SKOPS_TRUSTED_TYPES, *extras]))


def _allow_hint(types: Sequence[str]) -> str:
    return (f"if a person has reviewed them and they are safe to load, add them to "
            f"{TRUSTED_TYPES_ENV} (comma-separated), e.g. "
            f"{TRUSTED_TYPES_ENV}={','.join(types)}")


def refuse_untrusted(needed: Sequence[str], source: str, trusted: Sequence[str],
                     action: str = "open") -> None:
    """Raise UntrustedModelError when `needed` holds a type outside `trusted`."""
    unlisted = sorted(set(needed) - set(trusted))
    if unlisted:
        raise UntrustedModelError(
            source, f"refused to {action} {source}: it needs types nobody has reviewed: "
            f"{', '.join(unlisted)} (not in the platform's SKOPS_TRUSTED_TYPES in "
            f"ml_assets/core/modeling/pipeline.py nor in {TRUSTED_TYPES_ENV}); "
            + _allow_hint(unlisted), types=unlisted)


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded for serving: the sklearn Pipeline and what describes it."""

    pipeline: Pipeline  # the served artifact is the whole Pipeline (any estimator checks)
    schema: pa.DataFrameSchema
    target: str
    classes: list[str]
    metadata: dict


@dataclass(frozen=True)
class ModelFile:
    """What `inspect_model` found: the skops file and the types it needs."""

    source: str
    directory: Path
    path: Path
    needed_types: list[str]
    mlmodel: dict

    @property
    def metadata(self) -> dict:
        return dict(self.mlmodel.get("metadata") or {})


def _is_local_dir(uri: str) -> bool:
    return not urlparse(uri).scheme and os.path.isdir(uri)


@contextmanager
def model_directory(model_uri: str) -> Iterator[Path]:
    """A local directory holding the model's artifacts: `model_uri` itself when it is a
    local directory, otherwise a download into a temporary directory (removed after)."""
    if _is_local_dir(model_uri):
        yield Path(model_uri)
        return
    import mlflow

    with tempfile.TemporaryDirectory(prefix="model-load-") as tmp:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))


def read_mlmodel(directory: Path, source: str) -> dict:
    """The MLmodel file as plain data (yaml.safe_load: no tags, no objects)."""
    path = directory / MLMODEL_FILE
    if not path.is_file():
        raise ValueError(f"{source} has no {MLMODEL_FILE} file; is it a logged MLflow model?")
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{source}: {MLMODEL_FILE} is not a mapping")
    return document


def model_file_path(directory: Path, relative: object, source: str) -> Path:
    """`relative` resolved strictly inside `directory`: a relative path to a regular
    file that, symlinks followed, stays in the model directory."""
    if not isinstance(relative, str) or not relative.strip():
        raise UntrustedModelError(source, f"refused to open {source}: its sklearn flavor "
                                  f"names no model file (pickled_model={relative!r})")
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or "\\" in relative:
        raise UntrustedModelError(source, f"refused to open {source}: its model file path "
                                  f"{relative!r} leads outside the model directory")
    root = directory.resolve()
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise UntrustedModelError(source, f"refused to open {source}: its model file "
                                  f"{relative!r} resolves to {resolved}, outside the model "
                                  "directory")
    if not resolved.is_file():
        raise FileNotFoundError(f"{source}: model file {relative!r} not found in the "
                                "model's artifacts")
    return resolved


def inspect_model(directory: Path, source: str, extra: Sequence[str] | None = None
                  ) -> ModelFile:
    """Check a model directory without loading it: skops format, file inside the
    model, every needed type trusted. Raises UntrustedModelError."""
    import skops.io

    mlmodel = read_mlmodel(directory, source)
    flavors = mlmodel.get("flavors")
    flavor = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        raise UntrustedModelError(source, f"refused to open {source}: it has no sklearn "
                                  "flavor; the platform loads only scikit-learn models "
                                  "saved with skops")
    fmt = flavor.get("serialization_format")
    if fmt != SKOPS_FORMAT:
        shown = "missing (MLflow treats that as pickle)" if fmt is None else repr(fmt)
        raise UntrustedModelError(
            source, f"refused to open {source}: serialization_format {shown}; only "
            "'skops' is loaded, because pickle and cloudpickle run arbitrary code when "
            "opened. There is no setting that allows them: re-log the model with "
            "log_pipeline (skops)", serialization_format=None if fmt is None else str(fmt))
    path = model_file_path(directory, flavor.get("pickled_model"), source)
    try:  # before skops reads (and so decompresses) anything
        check_archive(path, archive_limits())
    except ModelCheckError as exc:
        raise InvalidModelError(source, exc) from exc
    needed = sorted(skops.io.get_untrusted_types(file=path))
    refuse_untrusted(needed, source, trusted_types(extra))
    return ModelFile(source, directory, path, needed, mlmodel)


def check_model(model_uri: str, source: str | None = None,
                extra_trusted: Sequence[str] | None = None) -> list[str]:
    """Everything `load_pipeline` checks, without predicting anything: raises
    UntrustedModelError; returns the types the model needs beyond skops' defaults.
    The object is built (trusted types only) so that its arrays are validated too."""
    with model_directory(model_uri) as directory:
        model = inspect_model(directory, source or model_uri, extra_trusted)
        load_estimator(model, extra_trusted)
        return model.needed_types


def load_estimator(model: ModelFile, extra: Sequence[str] | None = None) -> BaseEstimator:
    """skops.io.load with the platform's list (never the artifact's); the object must
    be a scikit-learn estimator with predict, and pass `validate_model` (raises
    InvalidModelError) before anything predicts with it."""
    import skops.io

    if any(t.endswith(".Booster") for t in model.needed_types):
        try:  # before LightGBM / XGBoost parse it
            check_booster_records(model.path)
        except ModelCheckError as exc:
            raise InvalidModelError(model.source, exc) from exc
        except (ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise InvalidModelError(model.source, ModelCheckError(
                "booster.record", f"its schema cannot be read: {type(exc).__name__}: {exc}")
            ) from exc
    try:
        estimator = skops.io.load(model.path, trusted=trusted_types(extra))
    except Exception as exc:  # noqa: BLE001 - e.g. sklearn's Tree refusing mismatched
        # arrays, LightGBM / XGBoost refusing a model they cannot parse
        if isinstance(exc, skops.io.exceptions.UntrustedTypesFoundException):
            raise
        if isinstance(exc, ModelCheckError):  # a check run while building (CatBoost)
            raise InvalidModelError(model.source, exc) from exc
        raise InvalidModelError(model.source, ModelCheckError(
            "construct", f"skops could not rebuild it: {type(exc).__name__}: {exc}")) from exc
    if not isinstance(estimator, BaseEstimator) or not callable(
            getattr(estimator, "predict", None)):
        raise UntrustedModelError(model.source, f"refused {model.source}: it holds a "
                                  f"{type(estimator).__module__}.{type(estimator).__name__}, "
                                  "not a scikit-learn estimator with predict")
    operator = operator_trusted_types() if extra is None else tuple(extra)
    try:
        validate_model(estimator, model.needed_types, operator)
    except ModelCheckError as exc:
        raise InvalidModelError(model.source, exc) from exc
    return estimator


def load_pipeline(model_uri: str, source: str | None = None,
                  extra_trusted: Sequence[str] | None = None) -> LoadedModel:
    """Load a Pipeline logged by `log_pipeline`: `model_uri` is any MLflow artifact URI
    (`models:/<name>/<version>`, `runs:/...`) or a local model directory; `source` names
    it in errors (default: the URI). Only skops files whose every type is on the
    platform's list (+ ML_SKOPS_TRUSTED_TYPES, or `extra_trusted`) load; otherwise
    UntrustedModelError."""
    source = source or model_uri
    with model_directory(model_uri) as directory:
        model = inspect_model(directory, source, extra_trusted)
        metadata = model.metadata
        if FEATURE_SCHEMA_KEY not in metadata:
            raise ValueError(f"{source} carries no feature schema; log it with log_pipeline")
        schema = schema_from_yaml(metadata[FEATURE_SCHEMA_KEY])
        pipeline = load_estimator(model, extra_trusted)
    return LoadedModel(pipeline=cast(Pipeline, pipeline), schema=schema,
                       target=metadata.get("target", ""),
                       classes=[str(c) for c in metadata.get("classes", [])],
                       metadata=metadata)
