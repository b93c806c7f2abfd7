"""Service settings, read from the environment (every value has a laptop default).

The MLflow store, the platform home and the registered-model name come from the
pipeline's own `PlatformSettings`, so the service serves what the pipeline
registers without any configuration.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ml_assets.core.prediction_log import resolve_log_location
from ml_assets.settings import PlatformSettings
from serving.model.request_models import INPUT_POLICIES

RUNTIMES = ("auto", "onnx", "sklearn")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use; the message names it."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _number(name: str, default, kind=int, minimum=None):
    raw = _env(name, str(default))
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _buckets(name: str) -> tuple[float, ...] | None:
    raw = _env(name, "")
    if not raw:
        return None
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: give comma-separated numbers") from None
    if not values or list(values) != sorted(set(values)) or not all(
            math.isfinite(v) for v in values):
        raise SettingsError(f"{name}={raw!r}: give finite numbers in increasing order")
    return values


def _choice(name: str, default: str, allowed: tuple[str, ...], upper: bool = False) -> str:
    raw = _env(name, default)
    value = raw.upper() if upper else raw.lower()
    if value not in allowed:
        raise SettingsError(f"{name}={raw!r}: use one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class ServingSettings:
    """Everything the prediction service needs to know (table in docs/serving.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # API key; None leaves authentication off.
    api_key: str | None = None
    model_name: str = "ml_platform_model"
    model_alias: str = "champion"
    tracking_uri: str = field(
        default_factory=lambda: PlatformSettings.from_env().mlflow_tracking_uri)
    prediction_log_path: Path = field(
        default_factory=lambda: PlatformSettings.from_env().prediction_log_path)
    # PostgreSQL prediction log (postgresql://user:password@host:port/db); wins over
    # prediction_log_path, which then only names where unstorable rows are spilled at
    # shutdown. None (the default when constructed directly) keeps the SQLite file.
    # Left out of repr: it may hold a password.
    prediction_log_url: str | None = field(default=None, repr=False)
    # Largest batch /predict/batch and /invocations accept, in rows.
    max_batch: int = 1000
    # Largest request body in bytes (413 above it).
    max_body_bytes: int = 4 * 1024 * 1024
    # How often the alias is polled for a new champion; 0 turns polling off.
    poll_seconds: float = 30.0
    # MLflow registry webhooks (serving/http/registry_webhook.py): the secret events are
    # signed with, and the URL at which the MLflow server reaches this service (set
    # both to register the webhook at start). Left out of repr: a secret.
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_url: str | None = None
    # Micro-batching: most rows per predict_proba call, and the longest a batch
    # waits for requests that are on their way.
    micro_batch_rows: int = 64
    micro_batch_wait_ms: float = 1.5
    # Prediction-log rows held in memory; beyond it new predictions are refused (503,
    # commit mode) or their rows dropped and counted (async mode).
    log_queue_rows: int = 50_000
    # "commit": a 200 waits until the request's rows are committed in the log (group
    # commit). "async": fire-and-forget; rows still queued at a crash are lost.
    log_ack: str = "commit"
    # Longest a prediction waits for its commit before it is answered 503.
    log_commit_timeout_seconds: float = 5.0
    # SQLite: how long a write waits for another connection's lock before it fails.
    log_busy_timeout_seconds: float = 2.0
    # SQLite synchronous level: FULL (every commit fsynced before its answer: survives a
    # power cut) or NORMAL (a commit survives a process crash at once, a power cut once
    # the WAL is fsynced, every log_sync_interval_seconds).
    log_sqlite_synchronous: str = "FULL"
    log_sync_interval_seconds: float = 1.0
    access_log: bool = False
    # Values outside a feature's isin list (unseen categories) or the schema's range
    # checks: "accept" answers them, counts them and flags their log rows; "reject"
    # refuses the request (422, 400 on /invocations). See docs/serving.md.
    input_policy: str = "accept"
    # Bucket bounds of ml_api_predicted_value (regressors' predicted values); None keeps
    # serving.http.metrics.VALUE_BUCKETS. ML_API_PREDICTED_VALUE_BUCKETS="0,10,50,100,500".
    predicted_value_buckets: tuple[float, ...] | None = None
    # Which runtime answers: "auto" serves a version's compiled ONNX graph when it passed
    # its parity gate at registration (scikit-learn otherwise), "onnx" requires it (a
    # version without a passing graph is refused), "sklearn" never uses it.
    runtime: str = "auto"
    # uvicorn worker processes; above 1, metrics use prometheus-client's multiprocess
    # mode and every worker follows a reload (see docs/serving.md).
    workers: int = 1
    # Shadow rollouts: most copies of requests the challenger scores at once (after the
    # answers went out); a request beyond it is not copied (ml_api_shadow_skipped_total).
    shadow_max_in_flight: int = 64
    # Slow clients (serving/http/connections.py): the longest a connection may take to
    # send a request's headers, and a request's body; idle keep-alive connections are
    # closed after keepalive_seconds; above max_connections open connections (or
    # requests in progress) a request is answered 503 at once.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_seconds: float = 5.0
    max_connections: int = 1000
    # The load probe (serving/model/load_probe.py): while a version serves, a new one is
    # first loaded and smoke-predicted in a child process with this time limit (0: no
    # probe) and this much memory beyond what the child starts with (RLIMIT_AS).
    load_probe_seconds: float = 120.0
    load_probe_memory_bytes: int = 4 * 1024**3

    @classmethod
    def from_env(cls, **overrides) -> ServingSettings:
        """Settings from os.environ; keyword overrides that are not None win (CLI args)."""
        platform = PlatformSettings.from_env()
        log_url = platform.prediction_log_url or None
        if log_url is not None:
            try:
                resolve_log_location(log_url)
            except ValueError as exc:
                raise SettingsError(f"ML_PREDICTION_LOG_URL: {exc}") from None
        settings = cls(
            host=_env("ML_API_HOST", "127.0.0.1"),
            port=_number("ML_API_PORT", 8000, int, 0),
            api_key=_env("ML_API_KEY", "") or None,
            model_name=platform.registered_model_name,
            model_alias=_env("ML_MODEL_ALIAS", "champion"),
            tracking_uri=platform.mlflow_tracking_uri,
            prediction_log_path=platform.prediction_log_path,
            prediction_log_url=log_url,
            max_batch=_number("ML_API_MAX_BATCH", 1000, int, 1),
            max_body_bytes=_number("ML_API_MAX_BODY_BYTES", 4 * 1024 * 1024, int, 1024),
            poll_seconds=_number("ML_API_POLL_SECONDS", 30.0, float, 0.0),
            webhook_secret=_env("ML_REGISTRY_WEBHOOK_SECRET", "") or None,
            webhook_url=_env("ML_API_WEBHOOK_URL", "") or None,
            micro_batch_rows=_number("ML_API_MICRO_BATCH_ROWS", 64, int, 1),
            micro_batch_wait_ms=_number("ML_API_MICRO_BATCH_WAIT_MS", 1.5, float, 0.0),
            log_queue_rows=_number("ML_PREDICTION_LOG_QUEUE_ROWS", 50_000, int, 1),
            log_ack=_choice("ML_PREDICTION_LOG_ACK", "commit", ("commit", "async")),
            log_commit_timeout_seconds=_number("ML_PREDICTION_LOG_COMMIT_TIMEOUT_SECONDS",
                                               5.0, float, 0.01),
            log_busy_timeout_seconds=_number("ML_PREDICTION_LOG_BUSY_TIMEOUT_SECONDS", 2.0,
                                             float, 0.0),
            log_sqlite_synchronous=_choice("ML_PREDICTION_LOG_SQLITE_SYNCHRONOUS", "FULL",
                                           ("FULL", "NORMAL"), upper=True),
            log_sync_interval_seconds=_number("ML_PREDICTION_LOG_SYNC_INTERVAL_SECONDS", 1.0,
                                              float, 0.01),
            access_log=_env("ML_API_ACCESS_LOG", "false").lower() in ("1", "true", "yes"),
            input_policy=_choice("ML_API_INPUT_POLICY", "accept", INPUT_POLICIES),
            predicted_value_buckets=_buckets("ML_API_PREDICTED_VALUE_BUCKETS"),
            runtime=_choice("ML_API_RUNTIME", "auto", RUNTIMES),
            workers=_number("ML_API_WORKERS", 1, int, 1),
            shadow_max_in_flight=_number("ML_API_SHADOW_MAX_IN_FLIGHT", 64, int, 1),
            header_timeout_seconds=_number("ML_API_HEADER_TIMEOUT_SECONDS", 10.0, float, 0.1),
            body_timeout_seconds=_number("ML_API_BODY_TIMEOUT_SECONDS", 30.0, float, 0.1),
            keepalive_seconds=_number("ML_API_KEEPALIVE_SECONDS", 5.0, float, 0.1),
            max_connections=_number("ML_API_MAX_CONNECTIONS", 1000, int, 1),
            load_probe_seconds=_number("ML_API_LOAD_PROBE_SECONDS", 120.0, float, 0.0),
            load_probe_memory_bytes=_number("ML_API_LOAD_PROBE_MEMORY_BYTES", 4 * 1024**3,
                                            int, 1),
        )
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        if settings.input_policy not in INPUT_POLICIES:
            raise SettingsError(f"ML_API_INPUT_POLICY={settings.input_policy!r}: use one of "
                                f"{', '.join(INPUT_POLICIES)}")
        if settings.runtime not in RUNTIMES:
            raise SettingsError(f"ML_API_RUNTIME={settings.runtime!r}: use one of "
                                f"{', '.join(RUNTIMES)}")
        if settings.webhook_url and not settings.webhook_secret:
            raise SettingsError("ML_API_WEBHOOK_URL is set but ML_REGISTRY_WEBHOOK_SECRET is "
                                "not: registry events are only accepted signed")
        if settings.webhook_url and not settings.webhook_url.startswith(("http://",
                                                                         "https://")):
            raise SettingsError(f"ML_API_WEBHOOK_URL={settings.webhook_url!r}: an http(s) "
                                "URL at which the MLflow server reaches this service")
        if settings.log_queue_rows < settings.max_batch:
            raise SettingsError(
                f"ML_PREDICTION_LOG_QUEUE_ROWS={settings.log_queue_rows} is smaller than "
                f"ML_API_MAX_BATCH={settings.max_batch}: a full batch could never be logged")
        return settings

    @property
    def log_location_setting(self) -> str:
        """The variable that chose the prediction log's location (for error messages)."""
        return "ML_PREDICTION_LOG_URL" if self.prediction_log_url else "ML_PREDICTION_LOG_PATH"

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.model_alias}"
