"""Prometheus metrics of one app instance (its own registry, so apps never share counts)."""

from __future__ import annotations

import time
from collections import Counter as Tally

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

disable_created_metrics()  # the *_created series only add noise to every scrape

# Why a model version was rejected or could not be looked up ("untrusted_model": the
# safe loader refused it unopened: pickle/cloudpickle, or skops types nobody reviewed).
FAILURE_REASONS = ("load_error", "smoke_test_failed", "untrusted_model", "registry")

RUNTIMES = ("onnx", "sklearn")  # what answers: the compiled graph or the Pipeline

# Single-row predictions take milliseconds: resolve that range finely.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# Predicted values of regressors (ML_API_PREDICTED_VALUE_BUCKETS overrides): 0, then
# 1-2.5-5 steps from 0.1 to 50,000 (negative values fall in le="0"). The client library
# exports _sum only when no bucket bound is negative, so the defaults start at 0 and
# rate(_sum) / rate(_count) gives the mean predicted value whatever the scale.
VALUE_BUCKETS = (0.0, *sorted(m * 10.0 ** e for m in (1, 2.5, 5) for e in range(-1, 5)))


class ServiceMetrics:
    """Counters, histograms and gauges exposed at GET /metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, value_buckets: tuple[float, ...] = VALUE_BUCKETS):
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
                                   "model (0 while none is loaded).", ["model_name"], registry=r)
        self.model_runtime = Gauge("ml_api_model_runtime", "1 for the runtime that answers "
                                   "for the served model (onnx: its compiled graph, "
                                   "sklearn: the Pipeline), 0 for the other.", ["runtime"],
                                   registry=r)
        for runtime in RUNTIMES:
            self.model_runtime.labels(runtime).set(0)
        self.model_loaded_at = Gauge("ml_api_model_loaded_timestamp_seconds", "When the "
                                     "served model was loaded (Unix time).", registry=r)
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
                                 "not yet written to the prediction log.", registry=r)
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
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(time.perf_counter() - started)

    def count_predictions(self, model_version: str, labels: list[str]) -> None:
        for label, n in Tally(labels).items():
            self.predictions.labels(model_version, label).inc(n)

    def observe_values(self, model_version: str, values: list[float]) -> None:
        histogram = self.predicted_values.labels(model_version)
        for value in values:
            histogram.observe(value)

    def observe_log_commit(self, rows: int, seconds: float) -> None:
        self.log_commit_rows.observe(rows)
        self.log_commit_seconds.observe(seconds)

    def set_model(self, name: str, version: str | None, loaded_at: float | None = None,
                  runtime: str | None = None) -> None:
        self.model_version.labels(name).set(float(version) if version else 0.0)
        for known in RUNTIMES:
            self.model_runtime.labels(known).set(1.0 if known == runtime else 0.0)
        if loaded_at is not None:
            self.model_loaded_at.set(loaded_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
