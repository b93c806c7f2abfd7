"""Model validation for CI: train the default graph in a throw-away home, then check the
champion the registry serves.

    python scripts/validate_model.py                      # train in a temp dir, validate
    python scripts/validate_model.py --min-roc-auc 0.98   # stricter thresholds
    python scripts/validate_model.py --skip-train         # validate the champion of the
                                                          # configured MLFLOW_TRACKING_URI

Checks, each a row of the summary table:

- training: `python -m ml_assets.cli train` (the `train_model` job, recorded in a
  Dagster instance) succeeds and makes a champion;
- load: `models:/<name>@champion` loads with the platform's safe loader
  (`ml_assets.core.artifacts.loading.load_pipeline`, the one the API uses; never MLflow's
  loaders, which trust the artifact's own format and skops list);
- metrics: held-out rows (the pipeline's own seeded split) are predicted by the loaded
  pipeline; accuracy, weighted precision/recall/F1 and ROC AUC must reach the thresholds;
- reproducible: those metrics equal the ones the training run logged (train mode);
- predict = predict_proba: the pipeline's predict agrees with its probabilities' argmax;
- signature: the MLflow signature's inputs are exactly the schema's feature columns
  (names, order, types, required = not nullable), for the schema in the model's
  metadata and the data source's schema;
- skops: the model is stored in the skops format, needs only reviewed types
  (ml_assets.core.modeling.pipeline.SKOPS_TRUSTED_TYPES plus ML_SKOPS_TRUSTED_TYPES), and
  loading it while trusting nothing is refused (skops raises
  UntrustedTypesFoundException instead of running code).

Exit status: 0 when every check passes, 1 otherwise (the failing checks are named),
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc")
DEFAULT_THRESHOLD = 0.9
HELD_OUT_TOLERANCE = 1e-9


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


class ValidationError(Exception):
    """A step could not run at all; the message says which and why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="validate_model.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for metric in METRICS:
        parser.add_argument(f"--min-{metric.replace('_', '-')}", dest=f"min_{metric}",
                            type=float, default=DEFAULT_THRESHOLD, metavar="X",
                            help=f"minimum held-out {metric} (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--min-r2", dest="min_r2", type=float, default=0.3, metavar="X",
                        help="regression models: minimum held-out R² (default 0.3)")
    parser.add_argument("--max-rmse", dest="max_rmse", type=float, default=None, metavar="X",
                        help="regression models: maximum held-out RMSE (default: none)")
    parser.add_argument("--home", type=Path,
                        help="platform home to train in (default: a new temporary directory, "
                        "removed afterwards)")
    parser.add_argument("--skip-train", action="store_true",
                        help="do not train: validate the champion of the configured "
                        "MLFLOW_TRACKING_URI / ML_REGISTERED_MODEL_NAME")
    parser.add_argument("--model-name", help="registered model (default: "
                        "ML_REGISTERED_MODEL_NAME or ml_platform_model)")
    parser.add_argument("--alias", default="champion", help="alias to validate")
    args = parser.parse_args(argv)
    for metric in METRICS:
        value = getattr(args, f"min_{metric}")
        if not 0.0 <= value <= 1.0:
            parser.error(f"--min-{metric.replace('_', '-')} must be within [0, 1], got {value}")
    return args


def isolate_environment(home: Path) -> None:
    """Point every store at `home`, so training never touches a configured instance,
    tracking server or prediction log; the data-source settings are kept."""
    home = home.resolve()
    os.environ.update({
        "ML_PLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "ML_MLFLOW_ARTIFACT_LOCATION": (home / "mlartifacts").as_uri(),
        "ML_PREDICTION_LOG_PATH": str(home / "prediction_log.db"),
        "ML_EXECUTOR": "in_process",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
    })
    for name in ("MLFLOW_REGISTRY_URI", "ML_PREDICTION_LOG_URL", "ML_ALERT_WEBHOOK_URL"):
        os.environ.pop(name, None)


def train() -> Check:
    """The real entry point, in a child process: `python -m ml_assets.cli train`."""
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-m", "ml_assets.cli", "train"], cwd=REPO,
                             capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
        raise ValidationError(f"`ml-platform train` exited {process.returncode} after "
                              f"{seconds:.0f} s:\n{tail}")
    summary = process.stdout.strip().splitlines()
    promoted = [line for line in summary if "champion" in line]
    if not promoted:
        raise ValidationError("training finished but made no champion:\n"
                              + process.stdout.strip())
    return Check("training", True, f"{seconds:.0f} s; {promoted[-1]}")


def held_out_rows(settings):
    """The held-out split exactly as the pipeline makes it: same data source, schema,
    validation and seeded split (SplitConfig defaults)."""
    from ml_assets.core.data.preprocessing import split_frame
    from ml_assets.core.data.schemas import validate_frame
    from ml_assets.features import SplitConfig
    from ml_assets.resources.factory import build_resources

    source = build_resources(settings)["data_source"]
    frame = source.load()
    schema, origin = source.schema_for(frame)
    validated, report = validate_frame(frame, schema)
    if not report.passed:
        raise ValidationError(f"the data source's rows fail their own schema ({origin}): "
                              f"{report.message}")
    split_config = SplitConfig()
    split = split_frame(validated, source.target_column, split_config.test_size,
                        split_config.seed, task=split_config.task)
    return split, schema, source.target_column


def expected_inputs(schema, target: str) -> list[tuple[str, str, bool]]:
    from ml_assets.core.data.schemas import feature_columns

    types = {"numeric": "double", "boolean": "boolean", "categorical": "string"}
    return [(name, types[kind], not schema.columns[name].nullable)
            for name, kind in feature_columns(schema, target).items()]


def signature_check(info, model_schema, source_schema, target: str) -> Check:
    if info.signature is None:
        return Check("signature", False, "the model has no signature")
    actual = [(spec.name, _mlflow_type_name(spec), spec.required)
              for spec in info.signature.inputs.inputs]
    problems = []
    for label, schema in (("model metadata schema", model_schema),
                          ("data source schema", source_schema)):
        expected = expected_inputs(schema, target)
        if actual != expected:
            missing = [e[0] for e in expected if e[0] not in {a[0] for a in actual}]
            extra = [a[0] for a in actual if a[0] not in {e[0] for e in expected}]
            differing = [f"{a} != {e}" for a, e in zip(actual, expected, strict=False)
                         if a != e][:3]
            problems.append(f"{label}: missing {missing}, extra {extra}, first differences "
                            f"{differing}")
    if info.signature.outputs is None:
        problems.append("no output schema")
    if problems:
        return Check("signature", False, "; ".join(problems))
    kinds = sorted({t for _, t, _ in actual})
    return Check("signature", True, f"{len(actual)} inputs match the schema columns "
                 f"(types {', '.join(kinds)}); output {info.signature.outputs.to_dict()}")


def _mlflow_type_name(spec) -> str:
    kind = spec.type
    return kind.name if hasattr(kind, "name") else str(kind)


def skops_check(model_uri: str) -> Check:
    import skops.io

    from ml_assets.core.artifacts.loading import (
        UntrustedModelError,
        inspect_model,
        model_directory,
        operator_trusted_types,
    )
    from ml_assets.core.modeling.pipeline import SKOPS_TRUSTED_TYPES

    with model_directory(model_uri) as local:
        try:
            model = inspect_model(local, model_uri)
        except UntrustedModelError as exc:
            return Check("skops", False, str(exc))
        needed = model.needed_types
        if needed:
            try:
                skops.io.load(model.path, trusted=[])
            except skops.io.exceptions.UntrustedTypesFoundException as exc:
                refused = str(exc)
            else:
                return Check("skops", False, "skops loaded the file while trusting nothing")
        else:
            refused = "no type beyond skops' defaults"
    extras = sorted(set(needed) & set(operator_trusted_types()) - set(SKOPS_TRUSTED_TYPES))
    note = f"; needs operator-trusted types {extras} (review them)" if extras else ""
    return Check("skops", True, f"format skops; needs {len(needed)} reviewed types{note}; "
                 f"loading with no trust refused ({_shorten(refused, 80)})")


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def validate(args: argparse.Namespace, trained: bool) -> list[Check]:
    import mlflow
    import numpy as np

    from ml_assets.core.artifacts.loading import FEATURE_SCHEMA_KEY, load_pipeline
    from ml_assets.core.data.schemas import schema_from_yaml
    from ml_assets.core.modeling.metrics import classification_metrics, failing_metrics
    from ml_assets.settings import PlatformSettings

    settings = PlatformSettings.from_env()
    name = args.model_name or settings.registered_model_name
    model_uri = f"models:/{name}@{args.alias}"
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    checks = []

    try:
        info = mlflow.models.get_model_info(model_uri)
        loaded = load_pipeline(model_uri)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        raise ValidationError(f"cannot load {model_uri} from {settings.mlflow_tracking_uri}: "
                              f"{type(exc).__name__}: {_shorten(str(exc), 300)}") from None
    version = mlflow.MlflowClient().get_model_version_by_alias(name, args.alias)
    checks.append(Check("load", True, f"{model_uri} = version {version.version} "
                        f"(run {version.run_id}) with the platform's safe loader"))

    split, source_schema, target = held_out_rows(settings)
    metadata = dict(info.metadata or {})
    if FEATURE_SCHEMA_KEY not in metadata:
        checks.append(Check("signature", False, "the model's metadata carries no feature "
                            "schema"))
        model_schema = source_schema
    else:
        model_schema = schema_from_yaml(metadata[FEATURE_SCHEMA_KEY])

    pipeline = loaded.pipeline
    if metadata.get("task") == "regression":
        checks += regression_checks(pipeline, split, args, version, trained)
        checks.append(signature_check(info, model_schema, source_schema, target))
        checks.append(skops_check(model_uri))
        return checks
    predicted = np.asarray(pipeline.predict(split.X_test)).astype(str)
    proba = pipeline.predict_proba(split.X_test)
    classes = [str(c) for c in pipeline.classes_]
    raw = np.asarray(classes)[proba.argmax(axis=1)]
    mismatches = int((predicted != raw).sum())
    checks.append(Check("predict = predict_proba", mismatches == 0,
                        f"{len(predicted)} held-out rows, {mismatches} disagreements"))

    y_true = split.y_test.astype(str).to_numpy()
    metrics = classification_metrics(y_true, predicted, proba, classes)
    thresholds = {metric: getattr(args, f"min_{metric}") for metric in METRICS}
    failures = failing_metrics(metrics, thresholds)
    for metric in METRICS:
        value = metrics[metric]
        checks.append(Check(f"metric {metric}", metric not in failures,
                            f"{value:.4f} (minimum {thresholds[metric]:.4f})"))

    if not version.run_id:
        raise ValidationError(f"{name} version {version.version} records no training run")
    logged = mlflow.MlflowClient().get_run(version.run_id).data.metrics
    differences = {m: (metrics[m], logged.get(f"test_{m}")) for m in METRICS
                   if logged.get(f"test_{m}") is None
                   or not math.isclose(metrics[m], logged[f"test_{m}"], rel_tol=0,
                                       abs_tol=HELD_OUT_TOLERANCE)}
    if trained:
        checks.append(Check("reproducible", not differences,
                            "held-out metrics equal the run's logged test_* metrics"
                            if not differences else f"recomputed vs logged: {differences}"))
    elif differences:
        print("note: recomputed metrics differ from the run's logged ones (expected when the "
              "champion was trained on other data, e.g. production labels)")

    checks.append(signature_check(info, model_schema, source_schema, target))
    checks.append(skops_check(model_uri))
    return checks


def regression_checks(pipeline, split, args, version, trained: bool) -> list[Check]:
    """A regressor's held-out RMSE/MAE/R²/MAPE against the gates and the run's logged
    test_* metrics (no probabilities to compare)."""
    import mlflow
    import numpy as np

    from ml_assets.core.modeling.tasks import regression_metrics

    predicted = np.asarray(pipeline.predict(split.X_test), dtype=np.float64)
    checks = [Check("finite predictions", bool(np.all(np.isfinite(predicted))),
                    f"{len(predicted)} held-out rows")]
    metrics = regression_metrics(split.y_test.astype(float), predicted)
    checks.append(Check("metric r2", metrics["r2"] >= args.min_r2,
                        f"{metrics['r2']:.4f} (minimum {args.min_r2:.4f})"))
    limit = args.max_rmse
    checks.append(Check("metric rmse", limit is None or metrics["rmse"] <= limit,
                        f"{metrics['rmse']:.4f} (maximum {limit if limit is not None else '-'})"))
    if not version.run_id:
        raise ValidationError(f"version {version.version} records no training run")
    logged = mlflow.MlflowClient().get_run(version.run_id).data.metrics
    differences = {m: (v, logged.get(f"test_{m}")) for m, v in metrics.items()
                   if math.isfinite(v) and (logged.get(f"test_{m}") is None or not math.isclose(
                       v, logged[f"test_{m}"], rel_tol=1e-9, abs_tol=HELD_OUT_TOLERANCE))}
    if trained:
        checks.append(Check("reproducible", not differences,
                            "held-out metrics equal the run's logged test_* metrics"
                            if not differences else f"recomputed vs logged: {differences}"))
    return checks


def print_table(checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    print(f"\n{'check':<{width}}  result  detail")
    print(f"{'-' * width}  ------  {'-' * 60}")
    for check in checks:
        print(f"{check.name:<{width}}  {'PASS' if check.passed else 'FAIL':<6}  {check.detail}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = None
    checks: list[Check] = []
    try:
        if not args.skip_train:
            if args.home is None:
                temporary = tempfile.TemporaryDirectory(prefix="validate_model_")
                home = Path(temporary.name)
            else:
                home = args.home
            home.mkdir(parents=True, exist_ok=True)
            isolate_environment(home)
            print(f"training the default graph in {home} ...", flush=True)
            checks.append(train())
        checks += validate(args, trained=not args.skip_train)
    except ValidationError as exc:
        if checks:
            print_table(checks)
        print(f"\nmodel validation FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if temporary is not None:
            temporary.cleanup()
    print_table(checks)
    failed = [c for c in checks if not c.passed]
    if failed:
        print(f"\nmodel validation FAILED: {len(failed)} of {len(checks)} checks: "
              + "; ".join(f"{c.name}: {c.detail}" for c in failed), file=sys.stderr)
        return 1
    print(f"\nmodel validation passed: {len(checks)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
