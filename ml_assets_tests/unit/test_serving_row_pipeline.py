"""The scikit-learn runtime's hot path (serving/model/row_pipeline.py): the served
Pipeline answered from validated rows, its preprocessing replayed in numpy. Its answers
must be the Pipeline's own from a DataFrame (`frame_from_rows`, the path it replaces),
bit for bit, on real pipelines the platform trains: numbers, integers, booleans, strings
(one-hot and top-k), missing values, unseen categories, classifiers and regressors,
gradient-boosted trees, a user's own step; rows it does not answer itself go through
the Pipeline, whose answer or error stands unchanged."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime, timezone
from importlib.resources import files

import lightgbm
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import BayesianRidge, LogisticRegression
from sklearn.pipeline import Pipeline

from ml_assets.core.data.datasets import SyntheticSpec
from ml_assets.core.data.schema_inference import checked_schema
from ml_assets.core.modeling.jobs import one_job
from ml_assets_tests.support.models import (
    TrainedPipeline,
    train_breast_cancer,
    train_estimator,
    train_regression,
    train_synthetic,
)
from ml_assets_tests.support.user_factory import ClipScaler
from serving.model.feature_specs import feature_specs, frame_from_rows
from serving.model.numpy_steps import Fallback
from serving.model.request_models import build_request_models
from serving.model.row_pipeline import _disagreement, _leaves, probe_rows, row_pipeline
from serving.model.served import ServedModel, regression_output

PENGUINS = files("palmerpenguins") / "data" / "penguins.csv"


def _penguins() -> pd.DataFrame:
    frame = pd.read_csv(PENGUINS)
    frame["tagged"] = frame.index % 3 == 0  # a boolean feature
    return frame


def _penguins_with(estimator, target: str = "species") -> TrainedPipeline:
    frame = _penguins().dropna(subset=[target])
    return train_estimator(frame, checked_schema(frame, target, name="penguins"), target,
                           estimator)


MODELS = {  # name -> a trained model, built when its test runs
    "breast cancer forest": lambda: train_breast_cancer(n_estimators=20),
    "penguins forest (one-hot, missing, integers, booleans)":
        lambda: _penguins_with(RandomForestClassifier(n_estimators=20, random_state=0)),
    "penguins HistGradientBoosting": lambda: _penguins_with(
        HistGradientBoostingClassifier(max_iter=30, random_state=0)),
    "penguins LightGBM": lambda: _penguins_with(lightgbm.LGBMClassifier(
        n_estimators=20, verbose=-1, random_state=0)),
    "penguins, a user's own step": lambda: _penguins_with(Pipeline([
        ("clip", ClipScaler(limit=2.0)), ("logit", LogisticRegression(max_iter=500))])),
    "synthetic top-k categories, missing values, 3 classes": lambda: train_synthetic(
        SyntheticSpec(n_rows=1500, n_categorical=2, n_categories=70, missing_fraction=0.1,
                      n_classes=3), n_estimators=20),
    "penguins body mass regression": lambda: _penguins_with(
        RandomForestRegressor(n_estimators=20, random_state=0), target="body_mass_g"),
    "penguins body mass, prediction intervals": lambda: _penguins_with(
        BayesianRidge(), target="body_mass_g"),
}


def _specs(trained: TrainedPipeline):
    return tuple(feature_specs(trained.schema, trained.target))


def _rows(frame: pd.DataFrame, specs) -> list[list]:
    values = frame[[spec.name for spec in specs]].astype(object)
    rows = values.where(values.notna(), None).values.tolist()
    return [[bool(v) if spec.kind == "boolean" and v is not None else v
             for v, spec in zip(row, specs, strict=True)] for row in rows]


def _hard_rows(rows: list[list], specs) -> list[list]:
    """Held-out rows plus what a client may send: each feature missing in turn, all
    missing, unseen categories, negative and large numbers, the other boolean."""
    out = [list(r) for r in rows]
    base = rows[0]
    for i, spec in enumerate(specs):
        out.append([None if j == i else v for j, v in enumerate(base)])
        if spec.kind == "string":
            out.append([f"never-seen-{i}" if j == i else v for j, v in enumerate(base)])
        elif spec.kind == "boolean":
            out.append([(not v) if j == i and v is not None else v for j, v in enumerate(base)])
        else:
            for value in (-3, 10 ** 6, 0):
                out.append([value if j == i else v for j, v in enumerate(base)])
    out.append([None] * len(specs))
    return out


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    trained = MODELS[request.param]()
    one_job(trained.pipeline)
    specs = _specs(trained)
    fast, reason = row_pipeline(trained.pipeline, specs, np.nan)
    return trained, specs, fast, reason


def test_answers_are_the_pipelines_own_bit_for_bit(model):
    trained, specs, fast, reason = model
    assert fast is not None, reason
    assert fast.replayed == 2 and "replayed in numpy" in reason  # columns + selection
    rows = _hard_rows(_rows(trained.X_test, specs), specs)
    frame = frame_from_rows(rows, specs)
    regression = not hasattr(trained.pipeline, "classes_")
    if regression:
        interval = isinstance(trained.pipeline[-1], BayesianRidge)
        expected = regression_output(trained.pipeline, frame, interval)
        got = regression_output(fast, rows, interval)
        for a, b in zip(got, expected, strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)
        assert interval == (got[1] is not None)
    else:
        expected = trained.pipeline.predict_proba(frame)
        got = fast.predict_proba(rows)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
    one = fast.predict(rows[:1])
    assert np.array_equal(one, trained.pipeline.predict(frame.head(1)))


def test_seeded_random_rows_match_the_pipelines_matrix(model):
    """Random mixes of every feature's values (held-out ones, missing, unseen, extreme
    but finite numbers): the replayed matrix equals scikit-learn's byte for byte, or
    the replay hands the rows back."""
    trained, specs, fast, _ = model
    assert fast is not None
    pool = _hard_rows(_rows(trained.X_test, specs), specs)
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(40):
        rows = [[pool[rng.integers(len(pool))][i] for i in range(len(specs))]
                for _ in range(int(rng.integers(1, 9)))]
        columns = trained.pipeline[0][0].transform(frame_from_rows(rows, specs))
        blocks = fast.blocks(rows)  # every column, before the selector drops some
        assert blocks.dtype == columns.dtype and blocks.tobytes() == columns.tobytes()
        expected = trained.pipeline[:-1].transform(frame_from_rows(rows, specs))
        got = fast.features(rows)
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
        checked += 1
    assert checked == 40


def test_a_served_model_answers_from_rows_and_says_so():
    trained = _penguins_with(RandomForestClassifier(n_estimators=10, random_state=0))
    served = _served(trained)
    assert served.rows_pipeline is not None, served.rows_reason
    rows = _rows(trained.X_test, served.features)
    expected = trained.pipeline.predict_proba(frame_from_rows(rows, served.features))
    assert np.array_equal(served.sklearn_proba(rows), expected)
    # A copy with the same Pipeline keeps the replay; another Pipeline gets its own.
    assert dataclasses.replace(served, alias="canary").rows_pipeline is served.rows_pipeline
    other = _penguins_with(RandomForestClassifier(n_estimators=5, random_state=1))
    swapped = dataclasses.replace(served, pipeline=other.pipeline)
    assert swapped.rows_pipeline is not None
    assert swapped.rows_pipeline.pipeline is other.pipeline
    assert np.array_equal(swapped.sklearn_proba(rows), other.pipeline.predict_proba(
        frame_from_rows(rows, served.features)))


def test_values_that_overflow_get_the_pipelines_own_error():
    """A value the forest's float32 cast cannot hold: the same ValueError (which the
    batcher turns into the 422 naming the feature) as from the DataFrame path."""
    trained = train_breast_cancer(n_estimators=5)
    served = _served(trained)
    assert served.rows_pipeline is not None
    rows = _rows(trained.X_test.head(2), served.features)
    rows[1][0] = 1e300  # finite in float64 after scaling; infinite in float32
    with pytest.raises(ValueError) as old:
        trained.pipeline.predict_proba(frame_from_rows(rows, served.features))
    with pytest.raises(ValueError) as new:
        served.sklearn_proba(rows)
    assert str(new.value) == str(old.value) and "float32" in str(new.value)


def test_an_encoder_that_refuses_unseen_values_keeps_its_error():
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = _penguins().dropna(subset=["bill_length_mm"])
    features = ["island", "sex", "bill_length_mm", "year"]
    pipeline = Pipeline([
        ("columns", ColumnTransformer([
            ("strings", Pipeline([
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("one_hot", OneHotEncoder(handle_unknown="error", sparse_output=False))]),
             ["island", "sex"]),
            ("numbers", Pipeline([("impute", SimpleImputer(strategy="mean")),
                                  ("scale", StandardScaler())]), ["bill_length_mm", "year"]),
        ])),
        ("model", RandomForestClassifier(n_estimators=5, random_state=0)),
    ]).fit(frame[features], frame["species"])
    schema = checked_schema(frame[[*features, "species"]], "species", name="strict")
    served = _served(TrainedPipeline(pipeline, frame[features], frame[features], schema,
                                     "species"))
    assert served.rows_pipeline is not None, served.rows_reason
    rows = _rows(frame.head(3), served.features)
    assert np.array_equal(served.sklearn_proba(rows), pipeline.predict_proba(
        frame_from_rows(rows, served.features)))
    rows[2][0] = "Atlantis"
    with pytest.raises(Fallback):
        served.rows_pipeline.features(rows)
    with pytest.raises(ValueError) as old:
        pipeline.predict_proba(frame_from_rows(rows, served.features))
    with pytest.raises(ValueError) as new:
        served.sklearn_proba(rows)
    assert str(new.value) == str(old.value) and "Atlantis" in str(new.value)


def test_a_model_that_learned_none_gets_none_from_the_replay_too():
    """missing_string=None (a model trained on frames whose missing strings were None):
    the replay gives its encoder None, as the DataFrame path does."""
    frame = _penguins()
    frame["sex"] = frame["sex"].astype(object).where(frame["sex"].notna(), None)
    trained = _penguins_with(RandomForestClassifier(n_estimators=10, random_state=0))
    specs = _specs(trained)
    X = frame[list(trained.X_train.columns)]
    y = frame["species"]
    pipeline = trained.pipeline
    pipeline.fit(X, y)  # None in `sex` is now a category of its encoder
    fast, reason = row_pipeline(pipeline, specs, None)
    assert fast is not None, reason
    rows = _hard_rows(_rows(frame.head(20), specs), specs)
    expected = pipeline.predict_proba(frame_from_rows(rows, specs, None))
    assert np.array_equal(fast.predict_proba(rows), expected)
    columns = pipeline.named_steps["preprocess"].named_steps["columns"]
    encoded = columns.transform(frame_from_rows(rows, specs, None))
    assert fast.blocks(rows).tobytes() == encoded.tobytes()
    # the marker matters to this model's encoder: NaN would be another category
    assert not np.array_equal(columns.transform(frame_from_rows(rows, specs)), encoded)


def test_what_is_not_replayed_is_served_from_a_dataframe_with_the_reason():
    own = train_regression(Pipeline([("clip", ClipScaler()), ("ridge", BayesianRidge())]),
                           scale=False)  # ML_MODEL_PREPROCESSING=own: the user's step first
    specs = tuple(feature_specs(own.schema, own.target))
    fast, reason = row_pipeline(own.pipeline, specs, np.nan)
    assert fast is None and "ClipScaler" in reason
    trained = train_breast_cancer(n_estimators=5)
    specs = _specs(trained)
    trained.pipeline.named_steps["preprocess"].set_output(transform="pandas")
    fast, reason = row_pipeline(trained.pipeline, specs, np.nan)
    assert fast is None and "DataFrame output" in reason
    trained.pipeline.named_steps["preprocess"].set_output(transform="default")
    assert row_pipeline(trained.pipeline, specs, np.nan)[0] is not None


def test_the_load_time_check_refuses_a_replay_that_differs():
    """The replay is admitted only if it reproduces scikit-learn on probe rows: the
    replay of one fitted preprocessor checked against another's steps is refused."""
    a, b = train_breast_cancer(n_estimators=5, seed=1), train_breast_cancer(n_estimators=5)
    specs = _specs(a)
    fast, _ = row_pipeline(a.pipeline, specs, np.nan)
    assert fast is not None
    b.pipeline.named_steps["preprocess"].named_steps["columns"].transformers_[0][1] \
        .named_steps["scale"].mean_ += 1e-12  # what a replay that lost precision would miss
    assert _disagreement(fast, _leaves(b.pipeline)[:-1]) == (
        "the numpy replay differs from scikit-learn on probe rows")
    assert _disagreement(fast, _leaves(a.pipeline)[:-1]) == ""
    assert len(probe_rows(fast)) >= 5


def _served(trained: TrainedPipeline) -> ServedModel:
    specs = list(feature_specs(trained.schema, trained.target))
    classes = trained.pipeline.classes_.tolist()
    return ServedModel(
        name="row-pipeline", version="1", alias="champion", run_id=None,
        pipeline=one_job(trained.pipeline), target=trained.target,
        labels=[str(c) for c in classes], class_values=classes,
        requests=build_request_models(specs, 100), metrics={},
        loaded_at=datetime.now(timezone.utc), metadata={},
        task="binary" if len(classes) == 2 else "multiclass")



def test_one_job_reaches_a_wrappers_fitted_estimator():
    """XGBoost on string labels is served inside EncodedLabelsClassifier: its fitted
    booster must predict on one thread too (its unfitted template is not what runs)."""
    import xgboost

    from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
    from ml_assets.core.data.schemas import breast_cancer_schema
    from ml_assets.core.modeling.labels import EncodedLabelsClassifier

    frame = load_breast_cancer_frame()
    schema = breast_cancer_schema([c for c in frame.columns if c != BREAST_CANCER_TARGET])
    trained = train_estimator(frame, schema, BREAST_CANCER_TARGET,
                              xgboost.XGBClassifier(n_estimators=5, n_jobs=2))
    wrapper = trained.pipeline[-1]
    assert isinstance(wrapper, EncodedLabelsClassifier)
    assert wrapper.estimator_.n_jobs == 2
    one_job(trained.pipeline)
    assert wrapper.estimator.n_jobs == wrapper.estimator_.n_jobs == 1


def test_the_load_time_check_compares_in_bounded_chunks(monkeypatch):
    """A wide encoder's probe rows are compared a chunk at a time (bounded memory at
    load), and a difference in any chunk still refuses the replay."""
    import serving.model.row_pipeline as module

    trained = train_synthetic(SyntheticSpec(n_rows=600, n_categorical=1, n_categories=70),
                              n_estimators=3)
    specs = _specs(trained)
    fast, reason = row_pipeline(trained.pipeline, specs, np.nan)
    assert fast is not None, reason
    monkeypatch.setattr(module, "PROBE_CELLS", 3 * fast.blocks.width)  # 3 rows a chunk
    assert len(probe_rows(fast)) > 20
    steps = _leaves(trained.pipeline)[:-1]
    assert _disagreement(fast, steps) == ""
    steps = copy.deepcopy(steps)  # the replay reads the fitted arrays it was built from
    steps[0].transformers_[0][1].named_steps["scale"].mean_[-1] += 1e-9
    assert _disagreement(fast, steps) == "the numpy replay differs from scikit-learn on probe rows"
