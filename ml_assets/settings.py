"""Environment-driven settings: profiles are chosen by configuration, never by code edits.

Every value has an embedded default so that nothing needs setting up on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class PlatformSettings:
    home: Path
    mlflow_tracking_uri: str
    mlflow_artifact_location: str
    experiment_name: str
    registered_model_name: str
    data_source: str
    data_path: str
    target: str
    ingest_retries: int
    ingest_retry_delay_seconds: float
    metric_threshold: float
    prediction_log_path: Path
    # PostgreSQL prediction log URL; when set it wins over prediction_log_path.
    prediction_log_url: str
    landing_dir: Path
    labels_dir: Path
    monitoring_start_date: str
    retrain_window_days: float
    retrain_cooldown_seconds: float
    alert_webhook_url: str
    train_on_production_labels: bool
    # Types skops may load beyond the platform's reviewed list (operator-reviewed,
    # comma-separated ML_SKOPS_TRUSTED_TYPES); the model artifact's own list never counts.
    skops_trusted_types: tuple[str, ...] = ()
    # CSV dialect overrides (empty: sniffed from the file): ML_CSV_DELIMITER,
    # ML_CSV_DECIMAL, ML_CSV_ENCODING.
    csv_delimiter: str = ""
    csv_decimal: str = ""
    csv_encoding: str = ""
    # Promote a challenger whose required inputs differ from the champion's (a breaking
    # change for API clients) only when this is set (ML_ALLOW_BREAKING_SCHEMA_CHANGE).
    allow_breaking_schema_change: bool = False
    # The learning task: auto (from the target), classification, binary, multiclass,
    # regression (ML_TASK).
    task: str = "auto"
    # The user's own model, by import path: a class (ML_ESTIMATOR, keyword arguments as
    # a JSON object in ML_ESTIMATOR_PARAMS) or a factory returning an unfitted estimator
    # or Pipeline (ML_MODEL_FACTORY). ML_MODEL_PREPROCESSING: `platform` puts the
    # platform's preprocessing in front of it, `own` fits it on the raw feature columns.
    estimator: str = ""
    estimator_params: str = ""
    model_factory: str = ""
    model_preprocessing: str = "platform"
    # Hyper-parameter search before the final fit: ML_TUNING_TRIALS (0 = off),
    # ML_TUNING_TIMEOUT_SECONDS, ML_TUNING_SPACE (JSON; built-in estimators have one).
    tuning_trials: int = 0
    tuning_timeout_seconds: float = 600.0
    tuning_space: str = ""
    # Gradual rollout: ML_ROLLOUT_MODE (immediate, canary, shadow), the canary's first
    # share (ML_CANARY_SHARE), its later shares (ML_CANARY_STEPS, comma-separated) every
    # ML_CANARY_STEP_MINUTES; the verdict's ML_ROLLOUT_ALPHA, ML_ROLLOUT_MIN_ROWS and time
    # limit ML_ROLLOUT_MAX_HOURS.
    rollout_mode: str = "immediate"
    canary_share: float = 0.1
    canary_steps: str = ""
    canary_step_minutes: float = 60.0
    rollout_alpha: float = 0.05
    rollout_min_rows: int = 100
    rollout_max_hours: float = 168.0
    # How many recent days of predictions the labels sensor matches new labels against
    # (ML_LABEL_LOOKBACK_DAYS).
    label_lookback_days: int = 14
    # Daily batch scoring (ml_assets/batch.py): <input>/<YYYY-MM-DD>/*.csv|*.parquet in,
    # <output>/<YYYY-MM-DD>/predictions.parquet out (ML_BATCH_INPUT_DIR,
    # ML_BATCH_OUTPUT_DIR; default under ML_PLATFORM_HOME/batch).
    batch_input_dir: Path = Path(".ml_platform/batch/input")
    batch_output_dir: Path = Path(".ml_platform/batch/output")
    # ML_BATCH_ROWS_IN_MEMORY: a batch day of more rows stays in its Parquet parts
    # (production_data names them; monitoring reads their sketches).
    batch_rows_in_memory: int = 2_000_000
    # ML_LOG_ROWS_IN_MEMORY: a prediction-log day of more rows is read a segment at a
    # time (production_data keeps its sketches, not its rows).
    log_rows_in_memory: int = 2_000_000
    # Caps on a model's skops file (a zip), checked before anything is decompressed
    # (ml_assets/core/artifacts/archive.py): ML_MODEL_MAX_FILE_BYTES,
    # ML_MODEL_MAX_UNCOMPRESSED_BYTES, ML_MODEL_MAX_ENTRIES, ML_MODEL_MAX_COMPRESSION_RATIO
    # (declared size / compressed size, for entries above 1 MiB).
    model_max_file_bytes: int = 512 * 1024 * 1024
    model_max_uncompressed_bytes: int = 1024 * 1024 * 1024
    model_max_entries: int = 10_000
    model_max_compression_ratio: float = 200.0
    # Caps on a compiled graph's cost per row, checked before ONNX Runtime opens it
    # (ml_assets/core/artifacts/onnx/graph_cost.py): ML_ONNX_MAX_OPERATIONS_PER_ROW,
    # ML_ONNX_MAX_TENSOR_BYTES_PER_ROW.
    onnx_max_operations_per_row: int = 20_000_000
    onnx_max_tensor_bytes_per_row: int = 16 * 1024 * 1024
    # Retrain on any failed drift check (ML_RETRAIN_ON_ANY_DRIFT=true), the former rule;
    # by default a drift retrains only with an estimated or realised performance drop.
    retrain_on_any_drift: bool = False

    @classmethod
    def from_env(cls) -> PlatformSettings:
        home = Path(_env("ML_PLATFORM_HOME", ".ml_platform")).expanduser().resolve()
        return cls(
            home=home,
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            mlflow_artifact_location=_env("ML_MLFLOW_ARTIFACT_LOCATION",
                                          (home / "mlartifacts").as_uri()),
            experiment_name=_env("ML_EXPERIMENT_NAME", "ml_platform"),
            registered_model_name=_env("ML_REGISTERED_MODEL_NAME", "ml_platform_model"),
            data_source=_env("ML_DATA_SOURCE", "breast_cancer"),
            data_path=_env("ML_DATA_PATH", ""),
            target=_env("ML_TARGET", ""),
            ingest_retries=int(_env("ML_INGEST_RETRIES", "2")),
            ingest_retry_delay_seconds=float(_env("ML_INGEST_RETRY_DELAY_SECONDS", "300")),
            metric_threshold=float(_env("ML_METRIC_THRESHOLD", "0.8")),
            prediction_log_path=Path(_env("ML_PREDICTION_LOG_PATH",
                                          str(home / "prediction_log.db"))),
            prediction_log_url=_env("ML_PREDICTION_LOG_URL", ""),
            landing_dir=Path(_env("ML_LANDING_DIR", str(home / "landing"))),
            labels_dir=Path(_env("ML_LABELS_DIR", str(home / "labels"))),
            monitoring_start_date=_env("ML_MONITORING_START_DATE", "2026-11-01"),
            retrain_window_days=float(_env("ML_RETRAIN_WINDOW_DAYS", "7")),
            retrain_cooldown_seconds=float(_env("ML_RETRAIN_COOLDOWN_SECONDS", "21600")),
            alert_webhook_url=_env("ML_ALERT_WEBHOOK_URL", ""),
            train_on_production_labels=_env("ML_TRAIN_ON_PRODUCTION_LABELS", "true").lower()
            in ("1", "true", "yes"),
            skops_trusted_types=parse_type_list(_env("ML_SKOPS_TRUSTED_TYPES", "")),
            csv_delimiter=os.environ.get("ML_CSV_DELIMITER", ""),
            csv_decimal=os.environ.get("ML_CSV_DECIMAL", "").strip(),
            csv_encoding=os.environ.get("ML_CSV_ENCODING", "").strip(),
            allow_breaking_schema_change=_env("ML_ALLOW_BREAKING_SCHEMA_CHANGE", "false")
            .lower() in ("1", "true", "yes"),
            task=_env("ML_TASK", "auto").lower(),
            estimator=_env("ML_ESTIMATOR", ""),
            estimator_params=_env("ML_ESTIMATOR_PARAMS", ""),
            model_factory=_env("ML_MODEL_FACTORY", ""),
            model_preprocessing=_env("ML_MODEL_PREPROCESSING", "platform").lower(),
            tuning_trials=int(_env("ML_TUNING_TRIALS", "0")),
            tuning_timeout_seconds=float(_env("ML_TUNING_TIMEOUT_SECONDS", "600")),
            tuning_space=_env("ML_TUNING_SPACE", ""),
            rollout_mode=_env("ML_ROLLOUT_MODE", "immediate").lower(),
            canary_share=float(_env("ML_CANARY_SHARE", "0.1")),
            canary_steps=_env("ML_CANARY_STEPS", ""),
            canary_step_minutes=float(_env("ML_CANARY_STEP_MINUTES", "60")),
            rollout_alpha=float(_env("ML_ROLLOUT_ALPHA", "0.05")),
            rollout_min_rows=int(_env("ML_ROLLOUT_MIN_ROWS", "100")),
            rollout_max_hours=float(_env("ML_ROLLOUT_MAX_HOURS", "168")),
            label_lookback_days=int(_env("ML_LABEL_LOOKBACK_DAYS", "14")),
            batch_input_dir=Path(_env("ML_BATCH_INPUT_DIR", str(home / "batch" / "input"))),
            batch_output_dir=Path(_env("ML_BATCH_OUTPUT_DIR",
                                       str(home / "batch" / "output"))),
            batch_rows_in_memory=int(_env("ML_BATCH_ROWS_IN_MEMORY", "2000000")),
            log_rows_in_memory=int(_env("ML_LOG_ROWS_IN_MEMORY", "2000000")),
            model_max_file_bytes=int(_env("ML_MODEL_MAX_FILE_BYTES", str(512 * 1024 * 1024))),
            model_max_uncompressed_bytes=int(_env("ML_MODEL_MAX_UNCOMPRESSED_BYTES",
                                                  str(1024 * 1024 * 1024))),
            model_max_entries=int(_env("ML_MODEL_MAX_ENTRIES", "10000")),
            model_max_compression_ratio=float(_env("ML_MODEL_MAX_COMPRESSION_RATIO", "200")),
            onnx_max_operations_per_row=int(_env("ML_ONNX_MAX_OPERATIONS_PER_ROW",
                                                 "20000000")),
            onnx_max_tensor_bytes_per_row=int(_env("ML_ONNX_MAX_TENSOR_BYTES_PER_ROW",
                                                   str(16 * 1024 * 1024))),
            retrain_on_any_drift=_env("ML_RETRAIN_ON_ANY_DRIFT", "false").lower()
            in ("1", "true", "yes"),
        )


def parse_type_list(value: str) -> tuple[str, ...]:
    """Comma-separated, fully qualified type names (`module.Name`), blanks dropped,
    duplicates removed, order kept."""
    names = [part.strip() for part in value.split(",")]
    return tuple(dict.fromkeys(name for name in names if name))
