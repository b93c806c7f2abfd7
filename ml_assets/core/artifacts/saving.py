"""How a served Pipeline is written to MLflow, and what travels with it.

The model's MLmodel metadata carries the Pandera feature schema (YAML), the
target name, the task (binary / multiclass / regression) and, for classifiers only,
the classes, so whoever loads `models:/<name>@champion` (the
prediction service, the drift monitor) gets the one source of truth with it.
Loading lives in `ml_assets.core.artifacts.loading` (re-exported here).
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
import pandera.pandas as pa
from sklearn.pipeline import Pipeline

from ml_assets.core.artifacts.loading import (
    FEATURE_SCHEMA_KEY,
    OPERATOR_TYPES_KEY,
    OPERATOR_TYPES_TAG,
    TRUSTED_TYPES_ENV,
    LoadedModel,
    UntrustedModelError,
    load_pipeline,
    operator_trusted_types,
    refuse_untrusted,
)
from ml_assets.core.data.schemas import feature_columns, model_signature, schema_yaml
from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES

__all__ = ["FEATURE_SCHEMA_KEY", "TASK_KEY", "LoadedModel", "UntrustedModelError",
           "check_trusted", "load_pipeline", "log_pipeline", "required_types"]

# MLmodel metadata key of the task ("binary" | "multiclass" | "regression"); serving
# reads it (absent: classification, as for models logged before it existed).
TASK_KEY = "task"

logger = logging.getLogger(__name__)


def required_types(pipeline: Pipeline) -> list[str]:
    """The types skops would have to be told to trust to load `pipeline` back."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))


def check_trusted(pipeline: Pipeline, source: str = "this pipeline",
                  action: str = "log") -> list[str]:
    """The types `pipeline` needs beyond skops' defaults; raises UntrustedModelError
    naming every one outside the platform's reviewed list and ML_SKOPS_TRUSTED_TYPES."""
    needed = required_types(pipeline)
    refuse_untrusted(needed, source, [*SKOPS_TRUSTED_TYPES, *operator_trusted_types()],
                     action=action)
    return needed


# What a served platform model imports: pinned to this process's versions, instead of
# MLflow inferring them by loading the model in a subprocess (~6 s per model).
MODEL_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas", "scipy", "mlflow")


def pip_requirements(extra: list[str] | None = None) -> list[str]:
    """`name==version` of MODEL_REQUIREMENTS as installed here, plus `extra`."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in MODEL_REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            pinned.append(name)
    return [*pinned, *(extra or [])]


def log_pipeline(pipeline: Pipeline, X_sample: pd.DataFrame, schema: pa.DataFrameSchema,
                 target: str, extra_metadata: dict | None = None, task: str | None = None,
                 needed_types: list[str] | None = None,
                 extra_requirements: list[str] | None = None):
    """Log the whole Pipeline in the active MLflow run (skops, schema-derived signature,
    input example of the schema's feature columns only, metadata). Returns MLflow's
    ModelInfo.

    A pipeline needing a type outside the platform's reviewed list and the operator's
    ML_SKOPS_TRUSTED_TYPES fails here, at training, naming each type: the loader would
    refuse it anyway. Operator extras it does need are logged and recorded (metadata
    and run tag) for review; the types are written to the MLmodel file for the record
    only, the loader never trusts them from there.

    `task` (default: classification, binary or multiclass by the count of classes) is
    written to the metadata; `classes` only for a classifier. A regressor's signature
    has a numeric output. `needed_types`: the pipeline's `required_types`, when the caller
    has them already (they cost a skops serialization); `extra_requirements`: pip
    requirements beyond the platform's (e.g. the package of a user's estimator)."""
    extras = operator_trusted_types()
    needed = needed_types if needed_types is not None else required_types(pipeline)
    refuse_untrusted(needed, "this pipeline", [*SKOPS_TRUSTED_TYPES, *extras], action="log")
    extras_used = sorted(set(needed) & set(extras) - set(SKOPS_TRUSTED_TYPES))
    # Only the schema's features: identifiers, datetimes etc. are no model input.
    sample = X_sample[[c for c in feature_columns(schema, target) if c in X_sample]].head(5)
    predicted = pipeline.predict(X_sample.head(5))
    if task == "regression":
        predicted = np.asarray(predicted, dtype=np.float64)
    signature = model_signature(schema, target, predicted)
    if task is None:
        task = "binary" if len(getattr(pipeline, "classes_", [])) == 2 else "multiclass"
    metadata: dict = {
        FEATURE_SCHEMA_KEY: schema_yaml(schema),
        "target": target,
        TASK_KEY: task,
    }
    if task != "regression":
        metadata["classes"] = [str(c) for c in pipeline.classes_]
    metadata.update(extra_metadata or {})
    if extras_used:
        logger.warning("the pipeline needs types trusted only by the operator's %s, not by "
                       "the platform's reviewed list: %s; recorded in the model's metadata "
                       "(%s) and run tag %s for review", TRUSTED_TYPES_ENV,
                       ", ".join(extras_used), OPERATOR_TYPES_KEY, OPERATOR_TYPES_TAG)
        metadata[OPERATOR_TYPES_KEY] = extras_used
        mlflow.set_tag(OPERATOR_TYPES_TAG, ",".join(extras_used))
    return mlflow.sklearn.log_model(
        pipeline, name="model", signature=signature, input_example=sample,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=needed, metadata=metadata,
        pip_requirements=pip_requirements(extra_requirements))
