"""Features: the seeded split (stratified for classification) and the preprocessing
fitted on train only."""

from dataclasses import replace
from typing import Literal

import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from ml_assets.core.data.encodings import RULE
from ml_assets.core.data.preprocessing import (
    Split,
    build_preprocessor,
    categorical_encodings,
    feature_kinds,
    selected_features,
    split_frame,
)
from ml_assets.core.data.provenance import frame_fingerprint
from ml_assets.core.data.schema_inference import DATETIME_POLICY
from ml_assets.core.data.schemas import feature_columns, feature_encodings, not_features
from ml_assets.core.modeling.tasks import detect_task
from ml_assets.resources import DataSourceResource
from ml_assets.settings import PlatformSettings


class SplitConfig(Config):
    test_size: float = Field(default=0.2, gt=0, lt=1,
                             description="Share of rows held out for evaluation.")
    seed: int = Field(default=42, description="Seed of the split (stratified for "
                      "classification, plain for regression).")
    task: Literal["auto", "classification", "binary", "multiclass", "regression"] = Field(
        default_factory=lambda: PlatformSettings.from_env().task,  # type: ignore[arg-type]
        description="The learning task: auto (a numeric target with many distinct or "
        "fractional values is regression, anything else classification), classification, "
        "binary, multiclass or regression. Default: ML_TASK (auto).")


class FeatureConfig(Config):
    k_best: int = Field(default=20, description="Columns kept by SelectKBest (ANOVA F; "
                        "f_regression for regression) after one-hot encoding; 0 keeps all.")


def task_schema_mismatch(schema, target: str, task: str, origin: str) -> str | None:
    """Why the schema's reading of the target contradicts this run's task, or None: a
    schema written for class labels (a closed isin list) cannot govern a regression run,
    nor a numeric target without classes a classification run."""
    column = schema.columns.get(target)
    if column is None:
        return None
    closed = any(check.name == "isin" for check in column.checks)
    numeric = str(column.dtype).startswith(("float", "int", "Int", "Float"))
    if task == "regression" and closed:
        reads, fix = "class labels (a closed isin list)", "float64 with no isin list"
    elif task != "regression" and numeric and not closed:
        reads, fix = "numbers (no list of classes)", "str with an isin list of the classes"
    else:
        return None
    return (f"the schema ({origin}) reads target {target!r} as {reads}, but this run's task "
            f"is {task}: copy the schema file to the next version and make the target "
            f"{fix}, or set ML_TASK to match the schema")


@asset(group_name="training", kinds={"pandas", "scikit-learn"})
def data_split(context: AssetExecutionContext, config: SplitConfig,
               validated_data: pd.DataFrame, data_source: DataSourceResource) -> Output[Split]:
    """Seeded train/test split of the validated data: stratified for classification,
    plain for regression. The task (binary / multiclass / regression) is detected from
    the target or configured, and stated in the metadata.

    The test split is held out: only evaluation and the champion comparison see it.
    """
    target = data_source.target_column
    schema, origin = data_source.schema_for(validated_data)
    features = feature_columns(schema, target)
    try:
        decision = detect_task(validated_data[target], config.task)
        mismatch = task_schema_mismatch(schema, target, decision.task, origin)
        if mismatch:
            raise ValueError(mismatch)
        split = split_frame(validated_data, target, config.test_size, config.seed, features,
                            excluded=not_features(schema, target), task=decision)
        split = replace(split, encodings=feature_encodings(schema, target))
    except ValueError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    context.log.info("task %s", split.task_reason)
    return Output(split, metadata={
        "task": split.task,
        "task_reason": split.task_reason,
        "train_rows": len(split.X_train),
        "test_rows": len(split.X_test),
        "classes": MetadataValue.json([str(c) for c in split.classes]),
        "train_fingerprint": frame_fingerprint(split.X_train),
        "seed": config.seed,
        "features": MetadataValue.json(list(features)),
        "excluded_columns": MetadataValue.json(split.excluded),
    })


@asset(group_name="training", kinds={"scikit-learn"})
def feature_preprocessor(context: AssetExecutionContext, config: FeatureConfig,
                         data_split: Split):
    """Impute, scale numerics, one-hot categoricals (one with more than 50 values: its
    50 most frequent values plus one column for the rest, as the schema records),
    SelectKBest; fitted on the training split only, on the schema's feature columns
    (identifiers, constants, datetimes and free text are left out). It becomes the
    first step of the served Pipeline."""
    # The split carries the schema's feature kinds; a bare split: the frame's dtypes.
    kinds = data_split.features or feature_kinds(data_split.X_train, target="")
    recorded = getattr(data_split, "encodings", {})  # a split stored before encodings
    categorical = [c for c, kind in kinds.items() if kind == "categorical"]
    applied = categorical_encodings(data_split.X_train, categorical, recorded)
    overridden = {c: e for c, e in applied.items() if recorded.get(c, e) != e}
    if overridden:
        context.log.warning("encoded by the rule rather than the schema's record (more "
                            "values than one-hot allows): %s", overridden)
    preprocessor = build_preprocessor(data_split.X_train, kinds, config.k_best,
                                      task=data_split.task, encodings=recorded)
    preprocessor.fit(data_split.X_train, data_split.y_train)
    selected = selected_features(preprocessor)
    return Output(preprocessor, metadata={
        "input_features": len(kinds),
        "numeric": sum(k == "numeric" for k in kinds.values()),
        "categorical": sum(k == "categorical" for k in kinds.values()),
        "encodings": MetadataValue.json(applied),
        "encoding_rule": RULE,
        "selected_features": MetadataValue.json(selected),
        "k_best": config.k_best,
        "task": data_split.task,
        "excluded_columns": MetadataValue.json(data_split.excluded),
        "datetime_policy": DATETIME_POLICY,
    })

