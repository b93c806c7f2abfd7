"""Days of covariate shift on real, packaged tables nobody here wrote (vega_datasets'
seattle-weather, palmerpenguins), for the performance estimate: a model trained on one
part of the table, calibrated on a second, and scored on days drawn from sub-populations
of the third, with the estimate's band against the realised value (shared by the suite
and benchmarks/estimation_coverage.py)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from ml_assets.core.estimation.calibration import Calibrator, fit_calibrator
from ml_assets.core.estimation.cbpe import estimate_performance
from ml_assets.core.modeling.metrics import classification_metrics


@dataclass(frozen=True)
class Table:
    name: str
    frame: pd.DataFrame
    target: str
    features: list[str]
    # columns whose value windows define the day's sub-population
    segments: list[str]


def seattle_weather() -> Table:
    frame = pd.read_csv(files("vega_datasets") / "_data" / "seattle-weather.csv")
    frame["month"] = pd.to_datetime(frame["date"]).dt.month
    return Table("seattle-weather", frame, "weather",
                 ["precipitation", "temp_max", "temp_min", "wind", "month"],
                 ["temp_max", "precipitation", "wind", "month"])


def penguins() -> Table:
    frame = pd.read_csv(files("palmerpenguins") / "data" / "penguins.csv")
    frame = frame.dropna(subset=["species"])
    frame["male"] = (frame["sex"] == "male").astype(float)
    frame["island_code"] = frame["island"].astype("category").cat.codes
    return Table("palmerpenguins", frame, "species",
                 ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
                  "male", "island_code", "year"],
                 ["body_mass_g", "flipper_length_mm", "bill_length_mm", "island_code"])


@dataclass(frozen=True)
class Setup:
    table: Table
    model: object
    calibrator: Calibrator
    pool: pd.DataFrame  # rows neither trained nor calibrated on


def prepare(table: Table, seed: int = 0) -> Setup:
    """Train on 40% of the rows, calibrate on 35% (the held-out rows), keep 25% as the
    pool days are drawn from (each split stratified and seeded)."""
    frame = table.frame
    train, rest = train_test_split(frame, test_size=0.6, random_state=seed,
                                   stratify=frame[table.target])
    held_out, pool = train_test_split(rest, test_size=25 / 60, random_state=seed,
                                      stratify=rest[table.target])
    model = make_pipeline(SimpleImputer(), RandomForestClassifier(
        n_estimators=100, min_samples_leaf=3, random_state=seed, n_jobs=1))
    model.fit(train[table.features], train[table.target].astype(str))
    calibrator = fit_calibrator(model.predict_proba(held_out[table.features]),
                                held_out[table.target].astype(str), model.classes_, seed=seed)
    return Setup(table, model, calibrator, pool.reset_index(drop=True))


@dataclass(frozen=True)
class Day:
    segment: str
    rows: int
    estimate: float
    low: float
    high: float
    realised: float

    @property
    def covered(self) -> bool:
        return self.low <= self.realised <= self.high


def shifted_day(setup: Setup, rng: np.random.Generator, rows: int,
                flip_segment: bool = False, draws: int = 1000) -> Day:
    """One day: a window of one segment column (a random 40% of its quantile range)
    selects the sub-population; up to `rows` of its rows drawn without replacement (a
    day's rows are distinct rows nobody trained or calibrated on). With
    `flip_segment`, the day's labels are rotated to the next class for rows of the
    window's upper half (concept drift: the same features, other labels)."""
    table, pool = setup.table, setup.pool
    column = table.segments[int(rng.integers(len(table.segments)))]
    values = pool[column]
    start = rng.uniform(0, 0.6)
    low, high = values.quantile(start), values.quantile(start + 0.4)
    inside = pool[(values >= low) & (values <= high)]
    if len(inside) < 10:
        inside = pool
    day = inside.iloc[rng.permutation(len(inside))[:rows]]
    proba = setup.model.predict_proba(day[table.features])  # type: ignore[attr-defined]
    classes = [str(c) for c in setup.model.classes_]  # type: ignore[attr-defined]
    truth = day[table.target].astype(str).to_numpy()
    if flip_segment:
        upper = (day[column] >= day[column].median()).to_numpy()
        rotated = np.asarray([classes[(classes.index(t) + 1) % len(classes)] for t in truth])
        truth = np.where(upper, rotated, truth)
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    estimate = estimate_performance(proba, setup.calibrator, predicted, draws=draws,
                                    seed=int(rng.integers(1 << 30)))
    realised = classification_metrics(truth, predicted, proba, classes)["accuracy"]
    band = estimate.metrics["accuracy"]
    return Day(f"{column} in [{low:.4g}, {high:.4g}]", rows, band.estimate, band.low,
               band.high, realised)


def coverage(table: Table, days: int, seed: int = 0, min_rows: int = 50,
             max_rows: int = 200, draws: int = 1000) -> tuple[float, list[Day]]:
    """The share of `days` covariate-shifted days whose realised accuracy lies in the
    estimate's band, and the days."""
    setup = prepare(table, seed)
    rng = np.random.default_rng(seed)
    result = [shifted_day(setup, rng, int(rng.integers(min_rows, max_rows + 1)),
                          draws=draws) for _ in range(days)]
    return float(np.mean([d.covered for d in result])), result
