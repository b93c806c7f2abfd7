"""How a served Pipeline is written to MLflow, and what travels with it.

The model's MLmodel metadata carries the Pandera feature schema (YAML), the
target name and the classes, so whoever loads `models:/<name>@champion` (the
prediction service, the drift monitor) gets the one source of truth with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd
import pandera.pandas as pa
from sklearn.pipeline import Pipeline

from ml_assets.core.modeling import SKOPS_TRUSTED_TYPES
from ml_assets.core.schemas import model_signature, schema_yaml

FEATURE_SCHEMA_KEY = "feature_schema"


def log_pipeline(pipeline: Pipeline, X_sample: pd.DataFrame, schema: pa.DataFrameSchema,
                 target: str, extra_metadata: dict | None = None):
    """Log the whole Pipeline in the active MLflow run (skops, schema-derived signature,
    input example, metadata). Returns MLflow's ModelInfo."""
    sample = X_sample.head(5)
    signature = model_signature(schema, target, pipeline.predict(sample))
    metadata = {
        FEATURE_SCHEMA_KEY: schema_yaml(schema),
        "target": target,
        "classes": [str(c) for c in pipeline.classes_],
        **(extra_metadata or {}),
    }
    return mlflow.sklearn.log_model(
        pipeline, name="model", signature=signature, input_example=sample,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=SKOPS_TRUSTED_TYPES, metadata=metadata)


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded for serving: the sklearn Pipeline and what describes it."""

    pipeline: Pipeline
    schema: pa.DataFrameSchema
    target: str
    classes: list[str]
    metadata: dict


def load_pipeline(model_uri: str) -> LoadedModel:
    """Load a Pipeline logged by `log_pipeline` (skops: only the reviewed types load)."""
    info = mlflow.models.get_model_info(model_uri)
    metadata = dict(info.metadata or {})
    if FEATURE_SCHEMA_KEY not in metadata:
        raise ValueError(f"{model_uri} carries no feature schema; log it with log_pipeline")
    schema = pa.DataFrameSchema.from_yaml(metadata[FEATURE_SCHEMA_KEY])
    pipeline = mlflow.sklearn.load_model(model_uri)
    return LoadedModel(pipeline=pipeline, schema=schema, target=metadata.get("target", ""),
                       classes=[str(c) for c in metadata.get("classes", [])],
                       metadata=metadata)
