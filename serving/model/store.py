"""The model store: versions loaded from the MLflow registry by alias, checked, swapped
atomically (one loaded version is a `ServedModel`, serving/model/served.py).

`ModelStore.current` is the one reference requests read. A request takes it once
and uses that model to the end, so a swap (a single assignment) never changes
the model under a request in flight. A candidate version is only swapped in
after it loads and passes a smoke prediction; otherwise it is rejected, counted,
and the old model keeps serving. Models are opened only by the platform's safe
loader (`ml_assets.core.artifacts.loading`): a version it refuses (pickle, unreviewed
skops types) is rejected as `untrusted_model` and never runs a line of its code. While
a version serves, a new one that passes the loader's checks is first loaded and
smoke-predicted in a child process with time and memory limits
(serving/model/load_probe.py): if that child crashes, hangs or runs out of memory, the
version is rejected as `load_probe_failed` and the served one keeps serving.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.base import is_classifier

from ml_assets.core.artifacts.compilation import read_compiled
from ml_assets.core.artifacts.loading import (
    LoadedModel,
    UntrustedModelError,
    load_pipeline,
    model_file_path,
    read_mlmodel,
)
from ml_assets.core.artifacts.onnx.runtime import CompiledModel
from ml_assets.core.data.schemas import excluded_columns
from ml_assets.core.modeling.jobs import one_job
from serving.http.metrics import ServiceMetrics
from serving.model import load_probe
from serving.model.feature_specs import example_rows, feature_specs
from serving.model.request_models import OUT_OF_RANGE, UNSEEN_CATEGORY, build_request_models
from serving.model.served import (
    PREDICT_LOCK,
    REGRESSION,
    SHADOW_LOCK,
    ServedModel,
    learned_none_category,
    model_task,
    offers_std,
    regression_output,
)
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The smoke rows' compiled regression answers must be this close (relative, as in the
# parity gate) to the Pipeline's.
SMOKE_RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class VersionRecord:
    """What the registry says about a version that its loading needs (read once, by the
    serving process: the load probe's child never opens the registry)."""

    run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]


class ModelRejected(Exception):
    """A candidate version that must not serve; the message says why."""

    def __init__(self, version: str, reason: str, message: str):
        super().__init__(message)
        self.version = version
        self.reason = reason


def _input_example(local_path: str, names: list[str]) -> list[dict] | None:
    """The model's logged input example as records (None when it has none). Its file
    must lie inside the model directory: MLflow joins the path the artifact names
    without checking it."""
    try:
        mlmodel = read_mlmodel(Path(local_path), local_path)
        info = mlmodel.get("saved_input_example_info")
        if not isinstance(info, dict):
            return None
        model_file_path(Path(local_path), info.get("artifact_path"), local_path)
    except Exception as exc:  # noqa: BLE001 - no usable example: rows from the schema
        logger.warning("input example of %s not used (%s); using rows from the schema",
                       local_path, exc)
        return None
    try:
        # mlflow annotates this `str | None`; it returns the logged example itself
        # (a DataFrame for these models), hence the cast.
        example = cast(Any, mlflow.models.Model.load(local_path).load_input_example(local_path))
    except Exception:  # noqa: BLE001 - an unreadable example falls back to the schema
        logger.warning("input example of %s unreadable; using rows from the schema", local_path)
        return None
    if example is None or not hasattr(example, "to_dict") or not set(names) <= set(example):
        return None
    frame = example[names].head(5).astype(object)
    return frame.where(frame.notna(), None).to_dict(orient="records")


def load_in_child(settings: ServingSettings, version: str, directory: str,
                  record: VersionRecord) -> None:
    """The load probe's work in its child: `ModelStore.load` of the downloaded version."""
    ModelStore.loader(settings).load(version, directory, record)


class ModelStore:
    """Loads `models:/<name>@<alias>` and keeps the one served reference."""

    def __init__(self, settings: ServingSettings, metrics: ServiceMetrics,
                 on_swap: Callable[[ServedModel], None] | None = None):
        self.settings = settings
        self.metrics = metrics
        self.on_swap = on_swap
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.rejected: dict[str, str] = {}  # version -> why, so polling does not retry it
        # The last candidate refused while another version serves: {version, reason,
        # detail}; shown by /ready and /model until a swap or the alias moves back.
        self.refused: dict[str, str] | None = None
        self._lock = threading.Lock()
        mlflow.set_tracking_uri(settings.tracking_uri)
        self.client = MlflowClient(settings.tracking_uri)
        metrics.set_model(settings.model_name, None)

    @classmethod
    def loader(cls, settings: ServingSettings) -> ModelStore:
        """A store that only loads versions (`load`, given their directory and registry
        record), never serves or swaps them: the load probe's child uses it. It has no
        metrics and opens no registry."""
        store = cls.__new__(cls)
        store.settings = settings
        store.current = None
        return store

    def champion_version(self) -> str | None:
        """The version the alias points at now; None when there is none (yet)."""
        try:
            return str(self.client.get_model_version_by_alias(
                self.settings.model_name, self.settings.model_alias).version)
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def refresh(self, force: bool = False, retry_rejected: bool = False) -> dict:
        """Swap to the alias's version if it differs from the served one (`force`: reload
        even the same version). A version rejected before is skipped unless
        `retry_rejected`, so polling does not count the same failure again. Thread-safe;
        returns {"status": swapped|unchanged|rejected|no_model|registry_error, ...}."""
        with self._lock:
            served = self.current.version if self.current else None
            try:
                version = self.champion_version()
            except Exception as exc:  # noqa: BLE001 - registry down: keep serving
                self.metrics.model_load_failures.labels("registry").inc()
                self.last_error = f"registry look-up failed: {exc}"
                logger.warning("%s; still serving version %s", self.last_error, served)
                return {"status": "registry_error", "detail": self.last_error,
                        "serving_version": served}
            if version is None:
                self.last_error = (f"no model version has alias {self.settings.model_alias!r} "
                                   f"in registered model {self.settings.model_name!r} yet")
                return {"status": "no_model" if served is None else "unchanged",
                        "detail": self.last_error, "serving_version": served}
            if version == served and not force:
                self.refused = None  # the alias is back on the served version
                return {"status": "unchanged", "serving_version": served}
            if version in self.rejected and not (force or retry_rejected):
                return {"status": "rejected", "detail": self.rejected[version],
                        "serving_version": served, "candidate_version": version}
            try:
                model = self.load(version)
            except ModelRejected as exc:
                self.rejected[version] = str(exc)
                self.last_error = str(exc)
                self.refused = {"version": version, "reason": exc.reason, "detail": str(exc)}
                self.metrics.model_load_failures.labels(exc.reason).inc()
                logger.error("rejected %s version %s: %s; still serving version %s",
                             self.settings.model_name, version, exc, served)
                return {"status": "rejected", "detail": str(exc), "serving_version": served,
                        "candidate_version": version}
            self.swap(model)
            self.rejected.pop(version, None)
            return {"status": "swapped", "serving_version": version, "previous_version": served}

    def swap(self, model: ServedModel) -> None:
        """Serve `model` from the next request on (one reference assignment)."""
        previous = self.current
        self.current = model
        self.last_error = None
        self.refused = None
        self.metrics.model_swaps.inc()
        self.metrics.set_model(model.name, model.version, model.loaded_at.timestamp(),
                               runtime=model.runtime)
        self.metrics.declare_input_flags(
            (check.name, reason) for check in model.requests.checks
            for reason, applies in ((UNSEEN_CATEGORY, check.allowed is not None),
                                    (OUT_OF_RANGE, check.bounded)) if applies)
        logger.info("serving %s version %s (was %s)", model.name, model.version,
                    previous.version if previous else "none")
        if self.on_swap is not None:
            self.on_swap(model)

    def refusal_detail(self) -> str | None:
        """'serving version 1; version 2 refused (untrusted_model): ...' while a refused
        candidate waits behind the served model; None otherwise."""
        refused, current = self.refused, self.current
        if refused is None or current is None:
            return None
        return (f"serving version {current.version}; version {refused['version']} refused "
                f"({refused['reason']}): {refused['detail']}")

    def load(self, version: str, directory: str | None = None,
             record: VersionRecord | None = None) -> ServedModel:
        """Load one registry version (from its downloaded `directory` and registry
        `record` when given) and smoke-test it; raises ModelRejected. While a version
        serves, one that passes the loader's checks is probed in a child process first
        (`_probe`)."""
        name = self.settings.model_name
        started = time.perf_counter()
        try:
            if record is None:
                details = self.client.get_model_version(name, version)
                record = VersionRecord(details.run_id, dict(details.tags or {}),
                                       self._run_metrics(details.run_id))
            with tempfile.TemporaryDirectory(prefix="serving-model-") as tmp:
                local = directory or mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
                source = f"version {version} (models:/{name}/{version})"
                # Built here first: every static and array check refuses a crafted file
                # in this process within seconds (booster records are checked before
                # their parsers run; a tree's arrays after skops builds it, before any
                # prediction). The probe then runs what the checks cannot bound, the
                # smoke prediction and the compiled graph, in a child first.
                loaded: LoadedModel = load_pipeline(local, source=source)
                self._probe(version, local, record)
                specs = feature_specs(loaded.schema, loaded.target)
                example = _input_example(local, [spec.name for spec in specs])
                pipeline = one_job(loaded.pipeline)
                task = model_task(loaded.metadata, pipeline)
                classes = [] if task == REGRESSION else pipeline.classes_.tolist()
                interval = task == REGRESSION and offers_std(pipeline)
                compiled, runtime_reason = self._compiled(
                    Path(local), record.tags, [spec.name for spec in specs],
                    task, classes, interval)
            rows = example or example_rows(specs)
            model = ServedModel(
                name=name, version=version, alias=self.settings.model_alias,
                run_id=record.run_id, pipeline=pipeline, target=loaded.target,
                labels=[str(c) for c in classes], class_values=classes,
                task=task, interval=interval, compiled=compiled,
                runtime_reason=runtime_reason,
                requests=build_request_models(
                    specs, self.settings.max_batch, rows[0], pipeline,
                    self.settings.input_policy,
                    ignored=excluded_columns(loaded.schema, loaded.target)),
                metrics=record.metrics,
                loaded_at=datetime.now(timezone.utc), metadata=loaded.metadata,
                excluded_columns=excluded_columns(loaded.schema, loaded.target),
                missing_string=None if learned_none_category(pipeline) else np.nan)
        except ModelRejected:
            raise
        except UntrustedModelError as exc:  # refused unopened: nothing of it ran
            # A file that is no readable archive at all is broken, not hostile: a load
            # error, as before the archive checks; every other refusal is untrusted.
            if getattr(exc, "check", None) == "archive.format":
                raise ModelRejected(version, "load_error",
                                    f"version {version} failed to load: {exc}") from exc
            raise ModelRejected(version, "untrusted_model", str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - any load failure rejects the version
            raise ModelRejected(version, "load_error",
                                f"version {version} failed to load: {exc}") from exc
        self.smoke_test(model, rows)
        model = self._runtime_checked(model, rows)
        logger.info("loaded %s version %s in %.2fs (runtime %s%s)", name, version,
                    time.perf_counter() - started, model.runtime,
                    f": {model.runtime_reason}" if model.runtime_reason else "")
        return model

    def _probe(self, version: str, directory: str, record: VersionRecord) -> None:
        """Load `version` from `directory` in a child process first (load_probe), when a
        version serves (nothing else to protect at start-up) and ML_API_LOAD_PROBE_SECONDS
        is above 0. Raises ModelRejected with the child's refusal, or `load_probe_failed`
        when the child crashed, timed out or ran out of memory."""
        if self.current is None or self.settings.load_probe_seconds <= 0:
            return
        try:
            report = load_probe.probe(load_in_child, self.settings, version, directory,
                                      record)
        except load_probe.ProbeFailed as exc:
            raise ModelRejected(version, load_probe.REASON,
                                f"version {version} refused: {exc}") from exc
        if report["status"] == "rejected":
            raise ModelRejected(version, report["reason"], report["message"])
        logger.info("version %s loaded in its probe in %.2fs (%.0f MiB peak); %.2fs with "
                    "the child's start", version, report["seconds"],
                    report["peak_bytes"] / 2**20, report["wall_seconds"])

    def _compiled(self, directory: Path, tags: dict, names: list[str], task: str,
                  classes: list, interval: bool) -> tuple[CompiledModel | None, str]:
        """The version's compiled graph if this service may serve it, else (None, why).
        ML_API_RUNTIME=onnx refuses a version without one (ModelRejected)."""
        runtime = self.settings.runtime
        if runtime == "sklearn":
            return None, "ML_API_RUNTIME=sklearn"
        if interval:
            compiled, reason = None, ("its prediction intervals need the estimator's "
                                      "return_std, which the compiled graph does not have")
        else:
            compiled, reason = read_compiled(directory, tags, names, task, classes)
        if compiled is None and runtime == "onnx":
            raise ValueError(f"ML_API_RUNTIME=onnx requires a compiled graph that passed "
                             f"parity, and this version has none: {reason}")
        return compiled, reason

    def _runtime_checked(self, model: ServedModel, rows: list[dict]) -> ServedModel:
        """The compiled graph must give the Pipeline's answers on the smoke rows too
        (labels identical; values within the parity tolerance), else the Pipeline
        serves: a faster answer is never worth a different one."""
        if model.compiled is None:
            return model
        records = [model.requests.record.model_validate(row) for row in rows]
        validated = [model.requests.row_of(r) for r in records]
        try:
            if model.is_regression:
                fast = model.compiled.predict_values(validated)
                frame = model.frame(validated)
                with SHADOW_LOCK, PREDICT_LOCK, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    slow, _ = regression_output(model.pipeline, frame, False)
                agree = bool(np.all(np.abs(fast - slow) <= SMOKE_RELATIVE_TOLERANCE
                                    * np.maximum(1.0, np.abs(slow))))
            else:
                fast_proba = model.compiled.predict_proba(validated)
                slow_proba = model.sklearn_proba(validated)
                agree = (fast_proba.shape == slow_proba.shape and bool(np.array_equal(
                    fast_proba.argmax(axis=1), slow_proba.argmax(axis=1))))
        except Exception as exc:  # noqa: BLE001 - the Pipeline serves instead
            reason = f"the compiled graph failed on the smoke rows ({type(exc).__name__}: {exc})"
        else:
            if agree:
                return model
            reason = "the compiled graph's answers on the smoke rows differ from the Pipeline's"
        if self.settings.runtime == "onnx":
            raise ModelRejected(model.version, "load_error",
                                f"version {model.version}: ML_API_RUNTIME=onnx, but {reason}")
        logger.warning("version %s: %s; served by scikit-learn", model.version, reason)
        return replace(model, compiled=None, runtime_reason=reason)

    @staticmethod
    def smoke_test(model: ServedModel, rows: list[dict]) -> None:
        """Rows the request model accepts must get sane probabilities (classifiers) or
        finite numbers, one per row (regressors) from the pipeline."""
        try:
            if model.is_regression:
                ModelStore._smoke_regression(model, rows)
                return
            if not hasattr(model.pipeline, "predict_proba"):
                raise ValueError("the pipeline has no predict_proba")
            records = [model.requests.record.model_validate(row) for row in rows]
            frame = model.frame([model.requests.row_of(r) for r in records])
            with SHADOW_LOCK, PREDICT_LOCK, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                proba = model.pipeline.predict_proba(frame)
            for message in {str(w.message) for w in caught}:
                logger.warning("version %s warns when predicting: %s", model.version, message)
            if proba.shape != (len(rows), len(model.labels)):
                raise ValueError(f"predict_proba returned shape {proba.shape}, expected "
                                 f"({len(rows)}, {len(model.labels)})")
            if not np.all(np.isfinite(proba)) or not np.allclose(proba.sum(axis=1), 1.0):
                raise ValueError("predict_proba returned probabilities that are not finite "
                                 "or do not sum to 1")
            expected = model.metadata.get("classes")
            if expected and [str(c) for c in expected] != model.labels:
                raise ValueError(f"pipeline classes {model.labels} differ from the logged "
                                 f"classes {expected}")
        except Exception as exc:  # noqa: BLE001 - any failure rejects the version
            raise ModelRejected(model.version, "smoke_test_failed",
                                f"version {model.version} failed its smoke prediction: "
                                f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _smoke_regression(model: ServedModel, rows: list[dict]) -> None:
        if is_classifier(model.pipeline):
            raise ValueError("the model is logged as a regression model but its pipeline "
                             "is a classifier")
        if model.metadata.get("classes"):
            raise ValueError("the model is logged as a regression model but its metadata "
                             f"lists classes {model.metadata['classes']}")
        records = [model.requests.record.model_validate(row) for row in rows]
        frame = model.frame([model.requests.row_of(r) for r in records])
        with SHADOW_LOCK, PREDICT_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values, std = regression_output(model.pipeline, frame, model.interval)
        for message in {str(w.message) for w in caught}:
            logger.warning("version %s warns when predicting: %s", model.version, message)
        if not np.all(np.isfinite(values)):
            raise ValueError("predict returned values that are not finite")
        if std is not None and not (np.all(np.isfinite(std)) and np.all(std >= 0)):
            raise ValueError("predict(return_std=True) returned standard deviations that "
                             "are not finite or negative")

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except MlflowException:
            logger.warning("metrics of training run %s unavailable", run_id)
            return {}
