"""A fitted pipeline made to predict on one thread: every `n_jobs` inside it set to 1.

A forest with `n_jobs=-1` (training's default) starts a joblib thread pool on every
`predict`, and joblib polls its results with 10 ms sleeps: for the few rows a service or
a shard step hands the Pipeline (near ties, a request), that costs more than the
prediction, and a shard step already gets its parallelism from the other shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def nested_estimators(estimator: Any) -> Iterator[Any]:
    """`estimator` and every estimator inside it (Pipeline steps, ColumnTransformer
    transformers, ...), depth first."""
    yield estimator
    for attribute in ("steps", "transformers_", "transformer_list"):
        for item in getattr(estimator, attribute, None) or ():
            if isinstance(item, tuple) and len(item) >= 2 and hasattr(item[1], "get_params"):
                yield from nested_estimators(item[1])


def one_job(pipeline: Any) -> Any:
    """`pipeline` with every n_jobs in it set to 1 (in place; returned for chaining)."""
    params = pipeline.get_params(deep=True)
    jobs = {k: 1 for k in params if k == "n_jobs" or k.endswith("__n_jobs")}
    if jobs:  # CatBoost refuses any set_params once fitted, even an empty one
        pipeline.set_params(**jobs)
    # A wrapper's fitted estimator (EncodedLabelsClassifier.estimator_ around XGBoost) is
    # no parameter: set_params above reached only its unfitted template.
    for estimator in nested_estimators(pipeline):
        fitted = getattr(estimator, "estimator_", None)
        if fitted is not None and hasattr(fitted, "set_params"):
            one_job(fitted)
    return pipeline
