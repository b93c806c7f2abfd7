"""Schema changes are decisions: what a new schema breaks for API clients (pure), and the
promotion that refuses a breaking challenger unless the run allows it (real runs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import yaml
from dagster import DagsterInstance, materialize

from ml_assets.core.data.schema_diff import (
    ModelSchema,
    SchemaDiff,
    diff_models,
    diff_schemas,
    model_schema,
)
from ml_assets.core.data.schemas import schema_yaml
from ml_assets.core.registry.promotion import ALLOW_HINT, decide_promotion
from ml_assets.registry import PROMOTION_CHECK
from ml_assets.resources import DataSourceResource
from ml_assets_tests.support.graph import (
    ALL_ASSETS,
    check_evaluation,
    empty_production,
    materialized,
)

T = "label"


def _schema(**columns: pa.Column) -> pa.DataFrameSchema:
    columns[T] = pa.Column(str, checks=pa.Check.isin(["a", "b"]))
    return pa.DataFrameSchema(columns, strict=True)


def _diff(old: dict, new: dict) -> SchemaDiff:
    return diff_schemas(_schema(**old), _schema(**new), T)


def _one(diff: SchemaDiff):
    assert len(diff.changes) == 1, diff.sentences
    return diff.changes[0]


X = pa.Column(float)


# -- the pure diff ------------------------------------------------------------------------

def test_same_features_no_change():
    diff = _diff({"x": X, "year": X}, {"year": X, "x": X})
    assert diff.known and diff.changes == [] and not diff.breaking


def test_removed_feature_is_breaking():
    diff = _diff({"x": X, "year": X}, {"x": X})
    change = _one(diff)
    assert diff.breaking and change.breaking and change.kind == "removed"
    assert change.sentence == "feature 'year' removed: clients that send it get 422"
    assert change.summary == "feature 'year' removed (clients that send it get 422)"


def test_added_feature_breaks_only_when_required():
    optional = _diff({"x": X}, {"x": X, "new": pa.Column(float, nullable=True)})
    assert not optional.breaking
    assert _one(optional).sentence == ("feature 'new' added as optional (nullable): clients "
                                       "that do not send it are still answered")
    required = _diff({"x": X}, {"x": X, "new": X})
    assert required.breaking
    assert _one(required).sentence == ("feature 'new' added as required: clients that do "
                                       "not send it get 422")


@pytest.mark.parametrize("old, new, breaking, words", [
    (float, int, True, "type changed from number to integer"),
    (float, str, True, "type changed from number to string"),
    (int, float, False, "type changed from integer to number"),
    (bool, str, True, "type changed from boolean to string"),
    ("float64", "float32", False, "dtype changed from float64 to float32"),
])
def test_type_changes(old, new, breaking, words):
    change = _one(_diff({"x": pa.Column(old)}, {"x": pa.Column(new)}))
    assert change.kind == "type" and change.breaking is breaking and words in change.what


def test_nullability():
    narrowed = _one(_diff({"x": pa.Column(float, nullable=True)}, {"x": X}))
    assert narrowed.breaking and narrowed.sentence == (
        "feature 'x' is no longer nullable: clients that send null or leave it out get 422")
    widened = _one(_diff({"x": X}, {"x": pa.Column(float, nullable=True)}))
    assert not widened.breaking and "became nullable" in widened.what


@pytest.mark.parametrize("old, new, breaking, words", [
    (["a", "b", "c"], ["a", "b"], True, "no longer allows ['c']"),
    (["a", "b"], ["a", "b", "c"], False, "now also allows ['c']"),
    (None, ["a", "b"], True, "now restricted to ['a', 'b']"),
    (["a", "b"], None, False, "no longer restricted to ['a', 'b']"),
])
def test_allowed_sets(old, new, breaking, words):
    def column(values):
        return pa.Column(str, checks=[] if values is None else [pa.Check.isin(values)])

    diff = _diff({"c": column(old)}, {"c": column(new)})
    change = _one(diff)
    assert change.kind == "allowed_values" and change.breaking is breaking
    assert words in change.what and diff.breaking is breaking


def test_a_set_both_widened_and_narrowed_is_breaking():
    diff = _diff({"c": pa.Column(str, checks=pa.Check.isin(["a", "b"]))},
                 {"c": pa.Column(str, checks=pa.Check.isin(["a", "z"]))})
    assert diff.breaking and [c.breaking for c in diff.changes] == [True, False]


@pytest.mark.parametrize("old, new, breaking, words", [
    ([pa.Check.ge(0)], [pa.Check.ge(1)], True, "lower bound narrowed from >= 0 to >= 1"),
    ([pa.Check.ge(1)], [pa.Check.ge(0)], False, "lower bound loosened from >= 1 to >= 0"),
    ([], [pa.Check.ge(0)], True, "lower bound narrowed from none to >= 0"),
    ([pa.Check.ge(0)], [], False, "lower bound loosened from >= 0 to none"),
    ([pa.Check.ge(0)], [pa.Check.gt(0)], True, "lower bound narrowed from >= 0 to > 0"),
    ([pa.Check.le(10)], [pa.Check.lt(5)], True, "upper bound narrowed from <= 10 to < 5"),
    ([pa.Check.lt(5)], [pa.Check.le(10)], False, "upper bound loosened from < 5 to <= 10"),
    ([pa.Check.ge(0), pa.Check.le(1)], [pa.Check.in_range(0, 1)], None, ""),
])
def test_bounds(old, new, breaking, words):
    diff = _diff({"x": pa.Column(float, checks=old)}, {"x": pa.Column(float, checks=new)})
    if breaking is None:
        assert diff.changes == []
        return
    change = _one(diff)
    assert change.kind == "bound" and change.breaking is breaking and words in change.what


def test_in_range_narrowed_on_both_sides():
    diff = _diff({"x": pa.Column(float, checks=pa.Check.in_range(0, 10))},
                 {"x": pa.Column(float, checks=pa.Check.in_range(1, 9))})
    assert diff.breaking and [c.what for c in diff.changes] == [
        "feature 'x' lower bound narrowed from >= 0 to >= 1",
        "feature 'x' upper bound narrowed from <= 10 to <= 9"]


def test_excluded_columns_and_the_target_are_not_inputs():
    ident = pa.Column(str, metadata={"role": "identifier"})
    diff = _diff({"x": X, "order_id": ident}, {"x": X})
    assert diff.changes == []
    diff = diff_schemas(_schema(x=X), pa.DataFrameSchema(
        {"x": X, "note": pa.Column(str, metadata={"role": "free_text"}),
         T: pa.Column(str, checks=pa.Check.isin(["a", "b", "c"]))}), T)
    assert diff.changes == []  # a new excluded column, a wider target: not API inputs
    demoted = _one(_diff({"x": X, "code": pa.Column(str)}, {"x": X, "code": ident}))
    assert demoted.breaking and demoted.kind == "removed"
    assert demoted.what == ("feature 'code' removed (now a identifier column, not an "
                            "input)")


def test_schema_read_from_mlmodel_metadata_or_unknown():
    schema = _schema(x=X, year=X)
    known = model_schema({"metadata": {"feature_schema": schema_yaml(schema), "target": T}},
                         "champion version 1")
    assert known.schema is not None and known.target == T and known.problem is None
    missing = model_schema({"flavors": {}}, "champion version 1")
    assert missing.schema is None and missing.problem == (
        "champion version 1 carries no feature schema")
    broken = model_schema({"metadata": {"feature_schema": "- a list"}}, "champion version 1")
    assert broken.schema is None and "cannot be read" in (broken.problem or "")
    challenger = ModelSchema(_schema(x=X), T)
    unknown = diff_models(missing, challenger)
    assert not unknown.known and not unknown.breaking and unknown.changes == []
    assert unknown.note == ("champion version 1 carries no feature schema; its inputs are "
                            "unknown, so the change is not judged breaking")
    assert diff_models(known, challenger).breaking


# -- the pure decision --------------------------------------------------------------------

M = {"accuracy": 0.9, "f1_weighted": 0.9, "roc_auc": 0.95}
REMOVED = _diff({"x": X, "year": X}, {"x": X})
REFUSED = ("challenger changes the API's inputs: feature 'year' removed (clients that send "
           "it get 422); set allow_breaking_change: true in the champion_comparison config "
           "(or ML_ALLOW_BREAKING_SCHEMA_CHANGE=true) to promote it anyway")


def test_breaking_change_is_refused_before_the_metrics_or_the_champion_error():
    better = {**M, "f1_weighted": 0.99}
    for decision in (decide_promotion(better, M, schema_diff=REMOVED),
                     decide_promotion(better, None, champion_error="needs year",
                                      schema_diff=REMOVED)):
        assert not decision.promote and decision.reason == REFUSED
        assert decision.reason.endswith(ALLOW_HINT)
        assert decision.breaking_change and not decision.breaking_change_allowed
        assert decision.schema_change == ("breaking, refused: feature 'year' removed "
                                          "(clients that send it get 422)")
        assert decision.schema_changes == (
            "feature 'year' removed: clients that send it get 422",)
        assert decision.as_tags()["promotion.schema_change"] == decision.schema_change


def test_allowed_breaking_change_follows_the_normal_rules():
    cannot = decide_promotion(M, None, champion_error="champion version 1 needs columns the "
                              "held-out data no longer has: year", schema_diff=REMOVED,
                              allow_breaking_change=True, champion_inputs_changed=True)
    assert cannot.promote and cannot.reason == (
        "breaking change to the API's inputs allowed by the run's config: feature 'year' "
        "removed (clients that send it get 422); champion cannot score the held-out data "
        "(champion version 1 needs columns the held-out data no longer has: year); "
        "challenger passed the thresholds")
    assert cannot.schema_change == ("breaking, allowed: feature 'year' removed (clients "
                                    "that send it get 422)")
    assert cannot.breaking_change and cannot.breaking_change_allowed
    worse = decide_promotion({**M, "f1_weighted": 0.8}, M, schema_diff=REMOVED,
                             allow_breaking_change=True)
    assert not worse.promote and "is worse than" in worse.reason
    assert worse.deltas["f1_weighted"] == pytest.approx(-0.1)
    better = decide_promotion({**M, "f1_weighted": 0.95}, M, schema_diff=REMOVED,
                              allow_breaking_change=True)
    assert better.promote and "beats champion" in better.reason
    assert better.reason.startswith("breaking change to the API's inputs allowed")


def test_compatible_and_unknown_changes_do_not_block():
    added = _diff({"x": X}, {"x": X, "new": pa.Column(float, nullable=True)})
    decision = decide_promotion({**M, "f1_weighted": 0.95}, M, schema_diff=added)
    assert decision.promote and not decision.breaking_change
    assert decision.schema_change == ("compatible: feature 'new' added as optional "
                                      "(nullable) (clients that do not send it are still "
                                      "answered)")
    unknown = SchemaDiff.unknown("champion version 1 carries no feature schema")
    decision = decide_promotion({**M, "f1_weighted": 0.95}, M, schema_diff=unknown)
    assert decision.promote and decision.schema_change.startswith("unknown: champion")
    # A champion that cannot be compared is kept, whatever the schema says.
    kept = decide_promotion(M, None, champion_error="x", schema_diff=unknown)
    assert not kept.promote and kept.schema_change.startswith("unknown: champion")
    assert decide_promotion(M, None).schema_change == "none"


# -- real runs of the graph ---------------------------------------------------------------

def labelled_frame(n: int = 300, seed: int = 0, year: bool = True) -> pd.DataFrame:
    """Plain float features with decimals; a string target with three classes that
    `x1` (and a little `x2`) separate well; `year` carries no signal."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "x1": rng.normal(0, 1, n).round(3), "x2": rng.normal(5, 2, n).round(3),
        "x3": rng.normal(-3, 1, n).round(3),
        "year": (2000 + rng.uniform(0, 20, n)).round(2)})
    score = frame["x1"] + 0.05 * (frame["x2"] - 5)
    frame["label"] = np.where(score < -0.4, "low", np.where(score < 0.4, "mid", "high"))
    return frame if year else frame.drop(columns="year")


def write_v2_without(schema_root, dataset: str, column: str) -> None:
    """v2.yaml = v1.yaml with `column` deleted (what a person does by hand)."""
    v1 = schema_root / dataset / "v1.yaml"
    document = yaml.safe_load(v1.read_text())
    assert column in document["columns"], f"{column} not in the inferred schema"
    del document["columns"][column]
    (schema_root / dataset / "v2.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def _registry_assets():
    from ml_assets.definitions import defs

    return [defs.get_assets_def(k) for k in ("registered_model", "champion_comparison",
                                             "champion_model")]


@pytest.fixture
def tracking(mlflow_store, unique_name, tmp_path):
    from ml_assets.resources import MlflowTracking

    return MlflowTracking(tracking_uri=mlflow_store["tracking_uri"],
                          experiment_name=unique_name, registered_model_name=unique_name,
                          artifact_location=(tmp_path / "art").as_uri())


# A single depth-1 tree: a weak first champion (accuracy about 0.73 on the 60 held-out
# rows) that the 10-tree forest (0.92) beats beyond the noise, under a lowered gate.
WEAK = {"n_estimators": 1, "max_depth": 1, "seed": 0}
LOW_GATE = {name: 0.3 for name in ("min_accuracy", "min_precision_weighted",
                                   "min_recall_weighted", "min_f1_weighted", "min_roc_auc")}


def _run(instance, tracking, source, training=None, **comparison):
    ops = {"trained_model": {"config": {"n_estimators": 10, "cv_folds": 2, "n_jobs": 1,
                                        **(training or {})}},
           "champion_comparison": {"config": {"margin": 0.0, **comparison}}}
    if training:
        ops["model_metrics"] = {"config": LOW_GATE}
    return materialize(
        ALL_ASSETS + _registry_assets(), instance=instance, raise_on_error=False,
        resources={"data_source": source, "mlflow_tracking": tracking,
                   "production": empty_production(instance.root_directory)},
        run_config={"ops": ops})


def _comparison_metadata(result) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == "champion_comparison"]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_narrowed_bound_compares_both_models_and_is_refused_unless_allowed(
        tracking, tmp_path, monkeypatch):
    """A bound added to a feature (v2): the champion can still score the held-out rows,
    so both are compared; the change breaks clients, so it is refused by default and
    decided on the metric rule when the run allows it (a significantly better forest is
    promoted; an equal one is not). Metadata and tags name it."""
    monkeypatch.delenv("ML_ALLOW_BREAKING_SCHEMA_CHANGE", raising=False)
    data = tmp_path / "shop.csv"
    labelled_frame().to_csv(data, index=False)
    schemas = tmp_path / "schemas"
    source = DataSourceResource(kind="files", path=str(data), target="label",
                                schema_dir=str(schemas))
    client, name = tracking.client, tracking.registered_model_name
    (tmp_path / "d").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "d")) as instance:
        first = _run(instance, tracking, source, training=WEAK)
        assert first.success, [e.message for e in first.all_events if e.is_step_failure]
        document = yaml.safe_load((schemas / "shop" / "v1.yaml").read_text())
        document["columns"]["x3"]["in_range"] = {"min_value": -100.0, "max_value": 100.0,
                                                 "include_min": True, "include_max": True}
        (schemas / "shop" / "v2.yaml").write_text(yaml.safe_dump(document, sort_keys=False))

        refused = _run(instance, tracking, source)
        assert refused.success and not materialized(refused, "champion_model")
        evaluation = check_evaluation(refused, PROMOTION_CHECK)
        assert evaluation.description.startswith("challenger changes the API's inputs: "
                                                 "feature 'x3' lower bound narrowed")
        assert evaluation.metadata["breaking_change"].value is True
        assert evaluation.metadata["breaking_change_allowed"].value is False
        assert [c.split(":")[0] for c in evaluation.metadata["schema_changes"].value] == [
            "feature 'x3' lower bound narrowed from none to >= -100",
            "feature 'x3' upper bound narrowed from none to <= 100"]
        assert evaluation.metadata["champion_metrics"].value  # both scored
        meta = _comparison_metadata(refused)
        assert meta["schema_change"].startswith("breaking, refused: feature 'x3' lower")
        tags = client.get_model_version(name, "2").tags
        assert tags["promotion.decision"] == "refused"
        assert tags["promotion.schema_change"] == meta["schema_change"]
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

        allowed = _run(instance, tracking, source, allow_breaking_change=True)
        assert allowed.success and materialized(allowed, "champion_model")
        meta = _comparison_metadata(allowed)
        assert meta["breaking_change"] and meta["breaking_change_allowed"]
        assert meta["reason"].startswith("breaking change to the API's inputs allowed by "
                                         "the run's config: feature 'x3' lower bound")
        assert "beats champion" in meta["reason"]  # compared on the metrics (margin 0)
        assert "cannot score" not in meta["reason"]
        assert meta["significant"] is True and meta["gain_low"] > 0
        tags = client.get_model_version(name, "3").tags
        assert tags["promotion.schema_change"].startswith("breaking, allowed: feature 'x3'")
        assert 0 < float(tags["promotion.champion.f1_weighted"]) < float(
            tags["promotion.challenger.f1_weighted"])
        assert str(client.get_model_version_by_alias(name, "champion").version) == "3"

        # The environment's default applies when the config does not say.
        monkeypatch.setenv("ML_ALLOW_BREAKING_SCHEMA_CHANGE", "true")
        document["columns"]["x3"]["in_range"]["max_value"] = 50.0
        (schemas / "shop" / "v3.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        by_env = _run(instance, tracking, source)  # the same forest as version 3
        meta = _comparison_metadata(by_env)
        assert meta["breaking_change_allowed"] is True
        assert "does not beat by the margin" in meta["reason"]  # the metric rule decides
        assert meta["schema_change"] == (
            "breaking, allowed: feature 'x3' upper bound narrowed from <= 100 to <= 50 "
            "(clients that send values outside the new bound get 422 under "
            "ML_API_INPUT_POLICY=reject, and their rows are flagged out_of_range under "
            "accept)")


@pytest.fixture
def cli_env(tmp_path, mlflow_store, unique_name, monkeypatch):
    data = tmp_path / "orders.csv"
    home = tmp_path / "home"
    env = {"ML_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_EXPERIMENT_NAME": unique_name, "ML_REGISTERED_MODEL_NAME": unique_name,
           "ML_MLFLOW_ARTIFACT_LOCATION": (tmp_path / "artifacts").as_uri(),
           "ML_DATA_SOURCE": "files", "ML_DATA_PATH": str(data), "ML_TARGET": "label",
           "ML_PREDICTION_LOG_PATH": str(tmp_path / "prediction_log.db")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ML_ALLOW_BREAKING_SCHEMA_CHANGE", raising=False)
    return {"data": data, "schemas": home / "schemas", "name": unique_name,
            "tracking_uri": mlflow_store["tracking_uri"]}


def test_removed_feature_refused_by_the_cli_then_allowed_and_the_api_follows(
        cli_env, capsys, tmp_path):
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from ml_assets.cli import main
    from serving.app import create_app
    from serving.settings import ServingSettings

    data, name = cli_env["data"], cli_env["name"]
    labelled_frame().to_csv(data, index=False)
    assert main(["train"]) == 0
    first = capsys.readouterr().out
    assert f"registered {name} version 1; it is the champion" in first, first

    write_v2_without(cli_env["schemas"], "orders", "year")
    labelled_frame(year=False).to_csv(data, index=False)
    assert main(["train"]) == 0
    refused = capsys.readouterr().out
    print(refused)
    assert (f"registered {name} version 2 as challenger; not promoted: {REFUSED}"
            in refused), refused
    assert "ml-platform train --allow-breaking-change" in refused
    assert "it is the champion" not in refused
    client = MlflowClient(cli_env["tracking_uri"])
    tags = client.get_model_version(name, "2").tags
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.schema_change"] == ("breaking, refused: feature 'year' removed "
                                               "(clients that send it get 422)")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    assert main(["train", "--allow-breaking-change"]) == 0
    allowed = capsys.readouterr().out
    print(allowed)
    assert f"registered {name} version 3; it is the champion" in allowed, allowed
    assert ("champion cannot score the held-out data (champion version 1 needs columns "
            "the held-out data no longer has: year)") in allowed
    assert ("breaking change to the API's inputs, allowed by this run: feature 'year' "
            "removed (clients that send it get 422)") in allowed
    tags = client.get_model_version(name, "3").tags
    assert tags["promotion.schema_change"] == ("breaking, allowed: feature 'year' removed "
                                               "(clients that send it get 422)")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"

    # The API's request model follows the new champion: no `year`.
    settings = ServingSettings(tracking_uri=cli_env["tracking_uri"], model_name=name,
                               prediction_log_path=tmp_path / "api_log.db", poll_seconds=0)
    row = labelled_frame(n=5, seed=9, year=False).drop(columns="label").iloc[0].to_dict()
    with TestClient(create_app(settings)) as api:
        model = api.get("/model").json()
        assert model["version"] == "3"
        assert [f["name"] for f in model["features"]] == ["x1", "x2", "x3"]
        answer = api.post("/predict", json=row)
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"] in {"low", "mid", "high"}
        assert api.post("/predict", json={**row, "year": 2019.5}).status_code == 422


def test_a_change_of_task_is_breaking_even_with_the_same_features():
    from ml_assets.core.data.schema_diff import ModelSchema, diff_models
    from ml_assets.core.data.schemas import schema_from_yaml

    schema = schema_from_yaml("columns:\n  x:\n    dtype: float64\n  y:\n    dtype: float64\n")
    regressor = ModelSchema(schema, "y", task="regression")
    classifier = ModelSchema(schema, "y", task="binary")
    diff = diff_models(regressor, classifier)
    assert diff.breaking and diff.changes[0].kind == "task"
    assert "from regression to binary" in diff.changes[0].sentence
    assert "a class label with probabilities instead of a number" in diff.changes[0].sentence
    assert not diff_models(ModelSchema(schema, "y", task="binary"),
                           ModelSchema(schema, "y", task="multiclass")).breaking
    unknown = diff_models(ModelSchema(None, "y", "no schema", "regression"), classifier)
    assert unknown.breaking and not unknown.known
    from ml_assets.core.registry.promotion import schema_change_record
    assert schema_change_record(unknown, False).startswith(
        "breaking, refused: the model's task changes from regression to binary")
