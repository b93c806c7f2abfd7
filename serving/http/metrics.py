"""Prometheus metrics of one app instance.

One process (the default): the app's own registry, so apps never share counts (tests
build many in one process). Several uvicorn workers (`python -m serving` with
ML_API_WORKERS > 1): prometheus-client's multiprocess mode, in the directory the
supervisor creates and exports as PROMETHEUS_MULTIPROC_DIR before the workers start;
every worker writes its values to its own files there and /metrics, whichever worker
answers it, merges them (counters and histograms are summed; gauges as their
`multiprocess_mode` says, see the note above `ServiceMetrics`).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

disable_created_metrics()  # the *_created series only add noise to every scrape

# Why a model version was rejected or could not be looked up ("untrusted_model": the
# safe loader refused it unopened: pickle/cloudpickle, or skops types nobody reviewed).
FAILURE_REASONS = ("load_error", "smoke_test_failed", "untrusted_model", "registry",
                   "load_probe_failed")

RUNTIMES = ("onnx", "sklearn")  # what answers: the compiled graph or the Pipeline

# Single-row predictions take milliseconds: resolve that range finely.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# Predicted values of regressors (ML_API_PREDICTED_VALUE_BUCKETS overrides): 0, then
# 1-2.5-5 steps from 0.1 to 50,000 (negative values fall in le="0"). The client library
# exports _sum only when no bucket bound is negative, so the defaults start at 0 and
# rate(_sum) / rate(_count) gives the mean predicted value whatever the scale.
VALUE_BUCKETS = (0.0, *sorted(m * 10.0 ** e for m in (1, 2.5, 5) for e in range(-1, 5)))

# How each gauge is merged across worker processes, its `multiprocess_mode` ("live": a
# worker's value goes when the supervisor marks it dead; a stopped or crashed worker
# never lingers).
# - model_version, model_runtime: livemax. Settled, every worker serves the same version
#   with the same runtime, so max is that value. While a swap spreads (well under a
#   second after a reload) the highest version shows, and both runtimes may show 1:
#   both are answering. 0 (MlApiNoChampionLoaded) means no live worker serves a model:
#   every prediction is answered 503. A worker that is still loading (0) at start-up
#   does not hide the others' version.
# - model_version_min: livemin: with model_version, a worker left behind shows (max >
#   min) when a follow failed (serving/workers/sync.py retries it).
# - model_loaded_at: livemax: the latest load by any worker (a swap, or a replaced
#   worker loading the champion), which is what "when did the served model change" asks.
# - log_backlog: livesum: rows accepted and not yet stored, over all workers.
# "mostrecent" would let a worker that is starting (version 0) or failing override the
# others; "max" without "live" would keep a dead worker's version after a rollback.


def multiprocess_values() -> bool:
    """prometheus-client keeps values in per-process files (PROMETHEUS_MULTIPROC_DIR was
    set when it was imported)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


class ServiceMetrics:
    """Counters, histograms and gauges exposed at GET /metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, value_buckets: tuple[float, ...] = VALUE_BUCKETS,
                 multiprocess_dir: str | Path | None = None):
        """`multiprocess_dir`: the workers' shared PROMETHEUS_MULTIPROC_DIR (None: this
        app's own registry). It must have been in the environment when prometheus_client
        was first imported, which the supervisor's spawned workers guarantee."""
        self.multiprocess_dir = Path(multiprocess_dir) if multiprocess_dir else None
        if self.multiprocess_dir is not None and not multiprocess_values():
            raise RuntimeError("multiprocess metrics need PROMETHEUS_MULTIPROC_DIR in the "
                               "environment before prometheus_client is imported")
        self._backlog: Callable[[], float] | None = None
        # Metric children by label values, looked up once (the hot path's labels are few).
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._prediction_children: dict[tuple[str, str], Any] = {}
        self._variant_children: dict[tuple[str, str], Any] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ml_api_requests", "HTTP requests by endpoint, method and "
                                "status code.", ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("ml_api_request_duration_seconds", "Request latency by "
                                 "endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("ml_api_predictions", "Predicted rows by model version and "
                                   "predicted class.", ["model_version", "predicted_class"],
                                   registry=r)
        self.predicted_values = Histogram("ml_api_predicted_value", "Values predicted by "
                                          "regression models, by model version (classifiers "
                                          "count ml_api_predictions_total by class instead).",
                                          ["model_version"], buckets=value_buckets,
                                          registry=r)
        self.model_version = Gauge("ml_api_model_version", "Registry version of the served "
                                   "model (0 while none is loaded).", ["model_name"], registry=r,
                                   multiprocess_mode="livemax")
        self.model_version_min = Gauge("ml_api_model_version_min", "Lowest registry version "
                                       "served by a live worker (with one process: "
                                       "ml_api_model_version).", ["model_name"],
                                       registry=r, multiprocess_mode="livemin")
        self.model_runtime = Gauge("ml_api_model_runtime", "1 for the runtime that answers "
                                   "for the served model (onnx: its compiled graph, "
                                   "sklearn: the Pipeline), 0 for the other.", ["runtime"],
                                   registry=r, multiprocess_mode="livemax")
        for runtime in RUNTIMES:
            self.model_runtime.labels(runtime).set(0)
        self.model_loaded_at = Gauge("ml_api_model_loaded_timestamp_seconds", "When the "
                                     "served model was loaded (Unix time).", registry=r,
                                     multiprocess_mode="livemax")
        self.model_load_failures = Counter("ml_api_model_load_failures", "Model versions "
                                           "rejected (load error, failed smoke prediction, "
                                           "refused as untrusted) or registry look-ups "
                                           "that failed.", ["reason"],
                                           registry=r)
        for reason in FAILURE_REASONS:  # exported at 0 from the start, for alerts
            self.model_load_failures.labels(reason)
        self.model_swaps = Counter("ml_api_model_swaps", "Times a new model version was "
                                   "swapped in.", registry=r)
        self.batch_rows = Histogram("ml_api_micro_batch_rows", "Rows per predict_proba call "
                                    "after micro-batching.", buckets=(1, 2, 4, 8, 16, 32, 64,
                                                                     128, 256, 512, 1024),
                                    registry=r)
        self.log_backlog = Gauge("ml_api_prediction_log_backlog", "Predictions accepted but "
                                 "not yet written to the prediction log.", registry=r,
                                 multiprocess_mode="livesum")
        self.log_write_failures = Counter("ml_api_prediction_log_write_failures", "Failed "
                                          "prediction-log writes (rows kept and retried; "
                                          "waiting requests answered 503).", registry=r)
        self.log_dropped_rows = Counter("ml_api_prediction_log_dropped_rows", "Rows not "
                                        "logged because the queue was full "
                                        "(ML_PREDICTION_LOG_ACK=async only).", registry=r)
        self.log_commit_seconds = Histogram("ml_api_prediction_log_commit_seconds",
                                            "Duration of one prediction-log commit (one "
                                            "transaction of grouped requests).",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.log_commit_rows = Histogram("ml_api_prediction_log_commit_rows", "Rows per "
                                         "prediction-log commit (group commit).",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                  1024, 2048, 4096, 8192), registry=r)

        # Gradual rollouts (serving/rollout.py): answers by variant, the canary share in
        # force, the rollout's mode and challenger, the challenger's failures.
        self.variant_predictions = Counter("ml_api_variant_predictions", "Logged answers "
                                           "(rows) by variant (champion, canary, shadow) "
                                           "and the model version that gave them.",
                                           ["variant", "model_version"], registry=r)
        self.rollout_share = Gauge("ml_api_rollout_share", "Canary share of the traffic in "
                                   "force (0 without a canary rollout, and in shadow mode).",
                                   registry=r, multiprocess_mode="livemax")
        self.rollout_info = Gauge("ml_api_rollout_info", "1 for the rollout this service "
                                  "follows (mode canary or shadow, the challenger's "
                                  "version), 0 for one it followed before.",
                                  ["mode", "challenger_version"], registry=r,
                                  multiprocess_mode="livemax")
        self.rollout_failures = Counter("ml_api_rollout_failures", "Requests the challenger "
                                        "failed on, by variant (canary: the champion "
                                        "answered instead; shadow: its copy was not "
                                        "scored).", ["variant"], registry=r)
        for variant in ("canary", "shadow"):
            self.rollout_failures.labels(variant)
        self.shadow_skipped = Counter("ml_api_shadow_skipped", "Requests not copied to the "
                                      "shadow challenger because ML_API_SHADOW_MAX_IN_FLIGHT "
                                      "copies were being scored already.", registry=r)
        self._rollout_share: Callable[[], float] | None = None
        self._rollout_labels: tuple[str, str] | None = None

        self.input_flags = Counter("ml_api_input_flags", "Answered values the schema's "
                                   "checks exclude (ML_API_INPUT_POLICY=accept), by "
                                   "feature and reason: unseen_category (outside its isin "
                                   "list) or out_of_range (outside its ge/gt/le/lt).",
                                   ["feature", "reason"], registry=r)

    def declare_input_flags(self, pairs) -> None:
        """Export (feature, reason) at 0 before the first flag, for rate() alerts."""
        for feature, reason in pairs:
            self.input_flags.labels(feature, reason)

    def count_input_flags(self, counts: dict[tuple[str, str], int]) -> None:
        for (feature, reason), n in counts.items():
            self.input_flags.labels(feature, reason).inc(n)

    def observe_request(self, endpoint: str, method: str, status: int, started: float) -> None:
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:  # `labels()` takes a lock and builds a key: once per key
            children = self._request_children[key] = (
                self.requests.labels(endpoint, method, str(status)),
                self.latency.labels(endpoint))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def count_predictions(self, model_version: str, labels: list[str]) -> None:
        children = self._prediction_children
        for label, n in (((labels[0], 1),) if len(labels) == 1 else Tally(labels).items()):
            child = children.get((model_version, label))
            if child is None:
                child = children[(model_version, label)] = self.predictions.labels(
                    model_version, label)
            child.inc(n)

    def observe_values(self, model_version: str, values: list[float]) -> None:
        histogram = self.predicted_values.labels(model_version)
        for value in values:
            histogram.observe(value)

    def count_variant(self, variant: str, model_version: str, rows: int) -> None:
        child = self._variant_children.get((variant, model_version))
        if child is None:
            child = self._variant_children[(variant, model_version)] = (
                self.variant_predictions.labels(variant, model_version))
        child.inc(rows)

    def set_rollout(self, mode: str | None, challenger_version: str | None) -> None:
        """ml_api_rollout_info: 1 for (mode, challenger_version), 0 for the previous one;
        None: no rollout is followed."""
        labels = (mode, challenger_version) if mode and challenger_version else None
        if labels == self._rollout_labels:
            return
        if self._rollout_labels is not None:
            self.rollout_info.labels(*self._rollout_labels).set(0)
        if labels is not None:
            self.rollout_info.labels(*labels).set(1)
        self._rollout_labels = labels

    def track_rollout_share(self, share: Callable[[], float]) -> None:
        """ml_api_rollout_share follows `share()` (the canary share in force moves with
        the plan's steps): read at every scrape, or stored by `sample()` with workers."""
        if self.multiprocess_dir is None:
            self.rollout_share.set_function(lambda: float(share()))
        else:
            self._rollout_share = share
            self.sample()

    def observe_log_commit(self, rows: int, seconds: float) -> None:
        self.log_commit_rows.observe(rows)
        self.log_commit_seconds.observe(seconds)
        self.sample()  # multiprocess mode: the backlog just shrank

    def set_model(self, name: str, version: str | None, loaded_at: float | None = None,
                  runtime: str | None = None) -> None:
        self.model_version.labels(name).set(float(version) if version else 0.0)
        self.model_version_min.labels(name).set(float(version) if version else 0.0)
        for known in RUNTIMES:
            self.model_runtime.labels(known).set(1.0 if known == runtime else 0.0)
        if loaded_at is not None:
            self.model_loaded_at.set(loaded_at)

    def track_backlog(self, backlog: Callable[[], float]) -> None:
        """ml_api_prediction_log_backlog follows `backlog()`: read at every scrape with one
        process; with workers (set_function is not supported in multiprocess mode) it is
        stored by `sample()`: after every commit, twice a second (serving/workers/sync.py)
        and before this worker renders."""
        if self.multiprocess_dir is None:
            self.log_backlog.set_function(lambda: float(backlog()))
        else:
            self._backlog = backlog
            self.sample()

    def sample(self) -> None:
        """Store the values read from functions (multiprocess mode; a no-op otherwise)."""
        if self._backlog is not None:
            self.log_backlog.set(self._backlog())
        if self._rollout_share is not None:
            self.rollout_share.set(self._rollout_share())

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self.sample()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return generate_latest(merged)
