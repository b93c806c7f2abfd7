"""Registry: register every gated model as challenger; promote it to champion only
when it beats the current champion on the same held-out data, beyond the margin and the
noise of those rows (a seeded paired bootstrap)."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from ml_assets.core.artifacts.compilation import compile_version
from ml_assets.core.artifacts.loading import (
    load_pipeline,
    model_directory,
    operator_trusted_types,
    read_mlmodel,
)
from ml_assets.core.data.preprocessing import Split, model_inputs
from ml_assets.core.data.schema_diff import ModelSchema, SchemaDiff, diff_models, model_schema
from ml_assets.core.data.schemas import feature_columns
from ml_assets.core.modeling.pipeline import TrainedModel
from ml_assets.core.modeling.tasks import (
    CLASSIFICATION_METRICS,
    DIRECTIONS,
    REGRESSION_METRICS,
    default_metric,
    task_metrics,
)
from ml_assets.core.registry import champion as registry
from ml_assets.core.registry.comparison import (
    HeldOutAnswers,
    held_out_answers,
    paired_evidence,
    unopenable_reason,
)
from ml_assets.core.registry.lineage import DATASET_TAG
from ml_assets.core.registry.promotion import PromotionDecision, decide_promotion
from ml_assets.core.registry.significance import (
    DEFAULT_ALPHA,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    RELATIVE_METRICS,
)
from ml_assets.core.rollout.plan import (
    MODES,
    RolloutPlan,
    end_rollout,
    read_rollout,
    start_rollout,
    step_schedule,
)
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.settings import PlatformSettings
from ml_assets.shared import PROMOTION_CHECK, PROMOTION_TAG


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    model_uri: str
    run_id: str


@dataclass(frozen=True)
class ChampionComparison:
    challenger: RegisteredModel
    champion_version: str | None
    decision: PromotionDecision
    # canary | shadow: champion_model starts a rollout instead of promoting.
    rollout: str = "immediate"
    rollout_steps: tuple[tuple[float, float], ...] = ()
    # The champion could not be opened or scored here: refused, and the run fails so
    # that someone fixes it (alert_on_run_failure pages it).
    uncompared: bool = False


def _shares(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"ML_CANARY_STEPS={text!r}: expected comma-separated shares such as "
                         "0.25,0.5") from None


class PromotionConfig(Config):
    metric: str = Field(default="", description="Metric the challenger must improve on, "
                        "in its direction; empty (default): f1_weighted for classification, "
                        "rmse (lower is better) for regression. Classification: "
                        + ", ".join(CLASSIFICATION_METRICS) + "; regression: "
                        + ", ".join(REGRESSION_METRICS) + ".")
    margin: float = Field(default=0.005, ge=0, description="Minimum improvement over the "
                          "champion on the same held-out data, on the metric's scale: for "
                          + ", ".join(RELATIVE_METRICS) + " a share of the champion's error "
                          "(0.005 = 0.5% lower), for the other metrics a difference (0.005 "
                          "of F1). The gain must also clear it beyond the noise of the "
                          "held-out rows (the lower end of the paired bootstrap interval "
                          "above the margin); otherwise the champion stays.")
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, lt=0.5, description="One-sided "
                         "significance level of the paired test: two models of equal "
                         "quality are promoted at most about alpha of the time. The "
                         "recorded interval is the two-sided (1 - 2 alpha) one.")
    resamples: int = Field(default=DEFAULT_RESAMPLES, ge=100, description="Paired "
                           "bootstrap resamples of the held-out rows.")
    seed: int = Field(default=DEFAULT_SEED, description="Seed of the bootstrap resamples "
                      "(the same data and models give the same decision).")
    allow_breaking_change: bool = Field(
        default_factory=lambda: PlatformSettings.from_env().allow_breaking_schema_change,
        description="Promote a challenger whose inputs break the API's clients (a feature "
        "removed, a required one added, a type or allowed values narrowed) instead of "
        "refusing it. Default: ML_ALLOW_BREAKING_SCHEMA_CHANGE (false).")
    rollout: str = Field(
        default_factory=lambda: PlatformSettings.from_env().rollout_mode,
        description="How a challenger that wins here reaches traffic: immediate (it becomes "
        "champion now), canary (it answers a share of live requests, sticky per "
        "X-Client-Key) or shadow (it scores a copy of every request; its answers are logged, "
        "never returned). Canary and shadow end in rollout_evaluation's verdict on live "
        "labelled traffic. The first model is always immediate. Default: ML_ROLLOUT_MODE "
        "(immediate).")
    canary_share: float = Field(
        default_factory=lambda: PlatformSettings.from_env().canary_share, gt=0, le=1,
        description="Share of requests the canary answers at first. Default: "
        "ML_CANARY_SHARE (0.1).")
    canary_steps: list[float] = Field(
        default_factory=lambda: _shares(PlatformSettings.from_env().canary_steps),
        description="Later canary shares, each canary_step_minutes after the previous, "
        "e.g. [0.25, 0.5]. Default: ML_CANARY_STEPS (comma-separated; none).")
    canary_step_minutes: float = Field(
        default_factory=lambda: PlatformSettings.from_env().canary_step_minutes, gt=0,
        description="Minutes between canary steps. Default: ML_CANARY_STEP_MINUTES (60).")

    def rollout_steps(self) -> tuple[tuple[float, float], ...]:
        """The canary's (seconds after the start, share) schedule; ValueError names a
        mode or share that is not allowed."""
        if self.rollout not in MODES:
            raise ValueError(f"champion_comparison rollout {self.rollout!r}: use one of "
                             f"{', '.join(MODES)} (ML_ROLLOUT_MODE)")
        for share in self.canary_steps:
            if not 0 < share <= 1:
                raise ValueError(f"canary step share {share} is outside (0, 1]")
        return step_schedule(self.canary_share, self.canary_steps, self.canary_step_minutes)

    def metric_for(self, task: str) -> str:
        """The comparison metric for `task`; a metric the task does not have is an
        error naming the ones it has."""
        metric = self.metric.strip() or default_metric(task)  # type: ignore[arg-type]
        allowed = task_metrics(task)
        if metric not in allowed:
            kind = "regression" if task == "regression" else "classification"
            raise ValueError(f"champion_comparison metric {metric!r} does not exist for a "
                             f"{kind} model; use one of {', '.join(allowed)}")
        return metric


@asset(group_name="registry", kinds={"mlflow", "onnx"})
def registered_model(context: AssetExecutionContext, trained_model: TrainedModel,
                     model_metrics: dict, data_split: Split,
                     mlflow_tracking: MlflowTracking,
                     data_source: DataSourceResource) -> Output:
    """The gated model as a version in the MLflow model registry, aliased `challenger`,
    with its compiled flavour.

    Runs only when `model_metrics` passed its blocking gate. Registering the same
    logged model twice (a re-execution) returns the existing version. The whole served
    Pipeline is converted to ONNX and checked against scikit-learn on the held-out split
    (plus rows with missing values and unseen categories): labels must be identical and
    probabilities within tolerance. A graph that passes is logged with the version
    (`model.onnx`) and the API serves it; one that cannot be converted or fails parity is
    not used, and the reason is in the version's `onnx.*` tags and this metadata: the
    version is still registered and served by scikit-learn.
    """
    name = mlflow_tracking.registered_model_name
    client = mlflow_tracking.client
    version = registry.register_version(
        client, name, trained_model.model_uri, trained_model.mlflow_run_id,
        trained_model.model_id,
        tags={"dagster_run_id": context.run_id, "data_fingerprint":
              trained_model.data_fingerprint, "code_version": trained_model.code_version,
              "task": trained_model.task, "estimator": trained_model.estimator,
              # the lineage its production rows belong to (ml_assets.core.registry.lineage)
              DATASET_TAG: data_source.name,
              **trained_model.user_code,
              **{f"metric.{k}": f"{v:.6f}" for k, v in model_metrics.items()}})
    features = list(data_split.features)
    parity = compile_version(
        client, name, str(version.version), trained_model.model_id,
        trained_model.mlflow_run_id, trained_model.pipeline,
        model_inputs(data_split.X_train[features]), model_inputs(data_split.X_test[features]),
        trained_model.task)
    if parity.passed:
        context.log.info(f"version {version.version}: compiled ONNX graph passed parity on "
                         f"{parity.rows + parity.probe_rows} rows; the API serves it")
    else:
        context.log.warning(f"version {version.version} is served by scikit-learn: "
                            f"{parity.reason}")
    client.set_registered_model_alias(name, registry.CHALLENGER, version.version)
    registered = RegisteredModel(name, str(version.version),
                                 f"models:/{name}/{version.version}",
                                 trained_model.mlflow_run_id)
    return Output(registered, metadata={
        "registered_model": name, "version": registered.version,
        "model_uri": registered.model_uri, "alias": registry.CHALLENGER,
        "mlflow_run_id": trained_model.mlflow_run_id,
        "runtime": "onnx" if parity.passed else "sklearn",
        **{f"onnx_{k}": v for k, v in parity.as_metadata().items()}})


def _answers(uri: str, split: Split, source: str) -> HeldOutAnswers:
    """A model's answers and metrics on `split`'s held-out rows, opened by the platform's
    safe loader (an unsafe or unreviewed model raises UntrustedModelError, naming it). A
    model of another task (a classifier against a regression split) cannot score."""
    loaded = load_pipeline(uri, source=source)
    task = str(loaded.metadata.get("task") or "classification")
    if (task == "regression") != split.is_regression:
        raise ValueError(f"{source} is a {task} model; this run's target is a {split.task} "
                         "target")
    return held_out_answers(loaded.pipeline, split.X_test, split.y_test, split.is_regression)


def _challenger_schema(model_uri: str, version: str) -> ModelSchema:
    source = f"challenger version {version}"
    try:
        with model_directory(model_uri) as directory:
            return model_schema(read_mlmodel(directory, source), source)
    except Exception as exc:  # noqa: BLE001 - unreadable: unknown, said so
        return ModelSchema(None, "", f"{source}'s MLmodel cannot be read: {str(exc)[:200]}")


@dataclass(frozen=True)
class ChampionSide:
    """What the comparison knows of the champion: the schema change the challenger
    makes, its answers on the held-out rows, or why it cannot give them (`error`, a
    sentence with the cause and the fix; `inputs_changed`: its columns are gone)."""

    diff: SchemaDiff
    answers: HeldOutAnswers | None = None
    error: str | None = None
    inputs_changed: bool = False


def _compare_with_champion(context: AssetExecutionContext, challenger: RegisteredModel,
                           version: str, split: Split) -> ChampionSide:
    """What the challenger changes for the API's clients (both schemas read from the
    MLmodel files, nothing deserialized), and the champion's answers on the held-out
    split, or why it cannot give them: its columns are gone, or it cannot be opened in
    this process (types not trusted here, a module not importable, the safe loader's
    refusal) or scored."""
    source = f"champion version {version}"
    new = _challenger_schema(challenger.model_uri, challenger.version)
    diff = SchemaDiff.unknown(f"{source}'s artifacts cannot be read")
    try:
        with model_directory(f"models:/{challenger.name}/{version}") as directory:
            try:
                old = model_schema(read_mlmodel(directory, source), source)
            except Exception as exc:  # noqa: BLE001 - no MLmodel: unknown inputs
                old = ModelSchema(None, "", f"{source}'s MLmodel cannot be read: "
                                  f"{str(exc)[:200]}")
            diff = diff_models(old, new)
            if not diff.known:
                context.log.warning("schema change not judged: %s", diff.note)
            if old.schema is not None:
                needed = feature_columns(old.schema, old.target or new.target)
                missing = [c for c in needed if c not in split.X_test.columns]
                if missing:
                    return ChampionSide(diff, error=(
                        f"{source} needs columns the held-out data no longer has: "
                        f"{', '.join(missing)}")[:300], inputs_changed=True)
            return ChampionSide(diff, _answers(str(directory), split, source))
    except Exception as exc:  # noqa: BLE001 - never compared: the champion stays
        reason = unopenable_reason(version, challenger.version, exc,
                                   operator_trusted_types())
        context.log.error("%s", reason)
        return ChampionSide(diff, error=reason)


@asset(
    group_name="registry",
    kinds={"mlflow"},
    check_specs=[AssetCheckSpec(
        PROMOTION_CHECK, asset="champion_comparison",
        description="The challenger keeps the API's inputs compatible (or the run allows "
        "the breaking change) and beats the champion on the same held-out data by the "
        "margin (or there is no champion yet); otherwise it is not promoted. A refusal is "
        "a decision, not a failure: the check warns (red when the champion could not be "
        "compared at all), champion_model is skipped and the run succeeds, tagged "
        "ml/promotion=refused.")],
)
def champion_comparison(context: AssetExecutionContext, config: PromotionConfig,
                        registered_model: RegisteredModel, model_metrics: dict,
                        data_split: Split, mlflow_tracking: MlflowTracking) -> Iterator:
    """Challenger vs champion, both scored on this run's held-out split.

    First the schemas: a challenger whose inputs break the API's clients (a feature
    removed, a required one added, a type, nullability, allowed set or bound narrowed;
    see `ml_assets.core.data.schema_diff`) is refused unless `allow_breaking_change`. Then
    both models answer the held-out rows, which hold every validated column: the
    challenger is promoted when its gain in the comparison metric clears the margin (on
    the metric's scale: relative for RMSE, MAE, MAPE) beyond the noise of those rows (a
    seeded paired bootstrap: the interval's lower end above the margin). A champion
    that cannot be compared (it cannot be opened in this process: types not trusted
    here, a module not importable; or it cannot score the rows) is NOT replaced: the
    check fails naming the cause and the fix. Only the first model, and a champion whose
    columns a breaking change the run allowed took away, go without a comparison. The
    decision (who, when, why, metrics of both, margin, gain, interval, p-value, schema
    change) is written to the challenger's MLflow version tags, promoted or refused.
    """
    client = mlflow_tracking.client
    name = registered_model.name
    champion = registry.alias_version(client, name, registry.CHAMPION)
    side: ChampionSide | None = None
    try:
        steps = config.rollout_steps()
        metric = config.metric_for(data_split.task)
    except ValueError as exc:  # a metric the task does not have
        raise Failure(description=str(exc), allow_retries=False) from None
    same = champion is not None and str(champion.version) == registered_model.version
    evidence = None
    if champion is not None and not same:
        side = _compare_with_champion(context, registered_model, str(champion.version),
                                      data_split)
        if side.answers is not None and metric in side.answers.metrics:
            mine = _answers(registered_model.model_uri, data_split,
                            f"challenger version {registered_model.version}")
            try:
                evidence = paired_evidence(metric, data_split.y_test, mine, side.answers,
                                           config.margin, config.alpha, config.resamples,
                                           config.seed)
            except ValueError as exc:  # e.g. MAPE with a true value of 0
                raise Failure(description=f"champion_comparison: {exc}",
                              allow_retries=False) from None
    try:
        decision = decide_promotion(
            model_metrics, side.answers.metrics if side and side.answers else None, metric,
            config.margin, side.error if side else None, side.diff if side else None,
            config.allow_breaking_change, evidence,
            side.inputs_changed if side else False)
    except ValueError as exc:  # a metric the task does not have
        raise Failure(description=str(exc), allow_retries=False) from None
    if same:  # a re-run of an already promoted version
        decision = PromotionDecision(False, "this version is already the champion",
                                     metric, config.margin, model_metrics,
                                     dict(model_metrics),
                                     breaking_change_allowed=config.allow_breaking_change)
    if decision.breaking_change:
        log = context.log.warning if decision.breaking_change_allowed else context.log.error
        log("challenger version %s vs champion: %s", registered_model.version,
            decision.schema_change)
    record = {**decision.as_tags(), "promotion.compared_with": str(
        champion.version if champion else None), "promotion.dagster_run_id": context.run_id,
        "promotion.decided_at": registry.now_utc(), "promotion.decided_by": registry.who()}
    for key, value in record.items():
        client.set_model_version_tag(name, registered_model.version, key, value[:5000])
    # A first model has nothing to be compared with live: it serves at once.
    mode = config.rollout if champion is not None else "immediate"
    # Refused because the champion could not be opened or scored here (not because the
    # challenger breaks clients, which is decided before any comparison).
    uncompared = (side is not None and side.error is not None and not decision.promote
                  and not (decision.breaking_change and not decision.breaking_change_allowed))
    comparison = ChampionComparison(registered_model,
                                    str(champion.version) if champion else None, decision,
                                    mode, steps, uncompared=uncompared)
    table = "| metric | challenger | champion | delta |\n|---|---:|---:|---:|\n" + "\n".join(
        f"| {m} | {decision.challenger[m]:.4f} | "
        + (f"{decision.champion[m]:.4f} | {decision.deltas.get(m, 0.0):+.4f} |"
           if decision.champion else "- | - |") for m in decision.challenger)
    summary = {"challenger_version": registered_model.version,
               "champion_version": comparison.champion_version,
               "decision": "promote" if decision.promote else "refuse",
               "reason": decision.reason, "metric": decision.metric,
               "direction": DIRECTIONS.get(decision.metric, "max"), "task": data_split.task,
               "margin": decision.margin, "schema_change": decision.schema_change,
               "schema_changes": MetadataValue.json(list(decision.schema_changes)),
               "breaking_change": decision.breaking_change,
               "breaking_change_allowed": decision.breaking_change_allowed,
               "rollout": mode, "margin_scale": decision.scale,
               **(decision.evidence.as_record() if decision.evidence else {})}
    yield Output(comparison, metadata={**summary, "comparison": MetadataValue.md(table)})
    # Not comparable at all (the champion cannot be opened or scored here) needs a fix:
    # ERROR. A challenger that lost, or that would break clients, is a decision: WARN.
    yield AssetCheckResult(
        check_name=PROMOTION_CHECK, passed=decision.promote,
        severity=AssetCheckSeverity.ERROR if uncompared else AssetCheckSeverity.WARN,
        description=decision.reason,
        metadata={**summary, "challenger_metrics": MetadataValue.json(decision.challenger),
                  "champion_metrics": MetadataValue.json(decision.champion or {}),
                  "deltas": MetadataValue.json(decision.deltas)})


@asset(group_name="registry", kinds={"mlflow"}, output_required=False)
def champion_model(context: AssetExecutionContext, champion_comparison: ChampionComparison,
                   mlflow_tracking: MlflowTracking) -> Iterator[Output]:
    """The model the prediction API serves: the registry's `champion` alias.

    Moves only when the comparison promoted the challenger; after a refusal it is not
    materialized (nor is anything downstream) and the run, a decision rather than a
    failure, succeeds with the tag `ml/promotion=refused`; except when the champion could
    not be compared at all (it cannot be opened or scored here): that run fails with the
    cause and the fix, so that it is paged. The previous champion stays
    in the history for a one-step `ml-platform rollback`. With `rollout: canary` or
    `shadow` the champion stays and the challenger starts a rollout instead (alias
    `canary`, plan in `rollout.*` tags): `rollout_evaluation` decides it on live
    traffic. A rollout still running is replaced by a newer winner.
    """
    challenger = champion_comparison.challenger
    decision = champion_comparison.decision
    if not decision.promote:
        context.instance.add_run_tags(context.run_id, {
            PROMOTION_TAG: "refused", f"{PROMOTION_TAG}_version": challenger.version})
        context.log.info("version %s not promoted: %s", challenger.version, decision.reason)
        if champion_comparison.uncompared:  # a breakdown to fix, not a decision: paged
            raise Failure(description=decision.reason, allow_retries=False)
        return
    context.instance.add_run_tags(context.run_id, {
        PROMOTION_TAG: champion_comparison.rollout if champion_comparison.champion_version
        else "immediate", f"{PROMOTION_TAG}_version": challenger.version})
    yield _champion_moved(context, champion_comparison, mlflow_tracking)


def _champion_moved(context: AssetExecutionContext, champion_comparison: ChampionComparison,
                    mlflow_tracking: MlflowTracking) -> Output:
    challenger = champion_comparison.challenger
    client = mlflow_tracking.client
    decision = champion_comparison.decision
    running = read_rollout(client, challenger.name)
    if champion_comparison.rollout in ("canary", "shadow"):
        return _start_rollout(context, champion_comparison, mlflow_tracking, running)
    try:
        change = registry.promote(
            client, challenger.name, challenger.version,
            champion_comparison.champion_version,
            {"promotion.reason": decision.reason[:5000],
             "promotion.schema_change": decision.schema_change[:5000],
             "promotion.dagster_run_id": context.run_id})
    except registry.RegistryError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    _replace_running(context, mlflow_tracking, running, challenger.version)
    context.log.info("%s version %s is champion (was %s)", change.name, change.version,
                     change.previous)
    return Output(asdict(change), metadata={
        "registered_model": change.name, "champion_version": change.version,
        "previous_champion": str(change.previous), "promoted_at": change.at,
        "promoted_by": change.by, "reason": decision.reason,
        "schema_change": decision.schema_change, "rollout_mode": "immediate",
        "serving_uri": f"models:/{change.name}@{registry.CHAMPION}"})


def _replace_running(context: AssetExecutionContext, mlflow_tracking: MlflowTracking,
                     running, version: str) -> None:
    """End a rollout in progress that `version` supersedes: replaced by a newer winner,
    or promoted when `version` is the one under rollout (promoted immediately now)."""
    if not running.active or running.plan is None:
        return
    same = running.plan.version == version
    end_rollout(mlflow_tracking.client, mlflow_tracking.registered_model_name, running.plan,
                "promoted" if same else "replaced",
                f"version {version} {'was promoted' if same else 'won a newer comparison'} "
                f"(dagster run {context.run_id})")
    context.log.warning("rollout of version %s %s", running.plan.version,
                        "ended: promoted" if same else f"replaced by version {version}")


def _start_rollout(context: AssetExecutionContext, comparison: ChampionComparison,
                   mlflow_tracking: MlflowTracking, running) -> Output:
    challenger = comparison.challenger
    client = mlflow_tracking.client
    champion = comparison.champion_version
    assert champion is not None, "a first model is promoted immediately"
    if running.active and running.plan is not None \
            and running.plan.version == challenger.version:
        plan: RolloutPlan = running.plan  # a re-execution: the rollout keeps its start
    else:
        _replace_running(context, mlflow_tracking, running, challenger.version)
        try:
            plan = start_rollout(client, challenger.name, comparison.rollout,
                                 challenger.version, champion, comparison.rollout_steps)
        except Exception as exc:  # noqa: BLE001 - RolloutError or the registry's refusal
            raise Failure(description=f"rollout of version {challenger.version} could not "
                          f"start: {exc}", allow_retries=False) from None
    client.set_model_version_tag(challenger.name, challenger.version, "promotion.decision",
                                 f"rollout:{plan.mode}")
    steps = ", ".join(f"{share:.0%} from {offset / 60:g} min" for offset, share in plan.steps)
    context.log.info("version %s starts a %s rollout against champion %s (%s)",
                     challenger.version, plan.mode, champion,
                     steps if plan.mode == "canary" else "a copy of every request")
    current = registry.alias_version(client, challenger.name, registry.CHAMPION)
    return Output({"name": challenger.name, "version": str(current.version if current
                                                           else champion),
                   "previous": None, "action": f"rollout_{plan.mode}",
                   "at": plan.started_at.isoformat(timespec="seconds"), "by": registry.who(),
                   "challenger_version": plan.version}, metadata={
        "registered_model": challenger.name, "champion_version": champion,
        "rollout_mode": plan.mode, "challenger_version": plan.version,
        "canary_steps": steps if plan.mode == "canary" else "shadow: every request copied",
        "started_at": plan.started_at.isoformat(timespec="seconds"),
        "reason": comparison.decision.reason,
        "next": "rollout_evaluation decides on live labelled traffic",
        "serving_uri": f"models:/{challenger.name}@{registry.CHAMPION}"})
