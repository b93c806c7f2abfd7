"""The score sketch performance estimation reads: merged shards equal one pass, exact on a
forest's probabilities, a stated error that holds when the grid is coarse, and a file
that is checked as untrusted input."""

import io

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from ml_assets.core.estimation.calibration import fit_calibrator
from ml_assets.core.estimation.cbpe import estimate_from_sketch, estimate_performance
from ml_assets.core.estimation.day_scores import DayScores, sketch_rows
from ml_assets.core.estimation.score_sketch import ScoreSketch, merge_score_sketches


def _forest_day(load, seed=0, repeat=20):
    """A forest's probabilities on a real dataset's held-out rows (its calibration
    rows) and on a day of rows drawn from the rest (`repeat` times bootstrapped)."""
    x, y = load(return_X_y=True)
    classes = [str(c) for c in np.unique(y)]
    x_fit, x_rest, y_fit, y_rest = train_test_split(x, y, test_size=0.5, random_state=seed,
                                                    stratify=y)
    model = RandomForestClassifier(n_estimators=50, random_state=seed).fit(x_fit, y_fit)
    held = model.predict_proba(x_rest)
    calibrator = fit_calibrator(held, np.asarray([str(v) for v in y_rest]), classes)
    rng = np.random.default_rng(seed)
    day = held[rng.integers(0, len(held), len(held) * repeat)]
    return day, calibrator, classes


def _oracle(proba, predicted, calibrator, draws, seed):
    """Per-row simulation, independent of the sketch: every row's label drawn from its
    calibrated probabilities (draw d: bootstrap replicate d mod replicates), accuracy
    and binary AUC per draw."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    replicates = [calibrator.calibrate(proba, r) for r in range(calibrator.replicates)]
    accuracy, auc = [], []
    ranks = rankdata(proba[:, 1])
    for d in range(draws):
        q = replicates[d % len(replicates)]
        labels = (rng.random(len(q)) < q[:, 1]).astype(int)
        accuracy.append(np.mean(labels == predicted))
        p = labels.sum()
        auc.append((ranks[labels == 1].sum() - p * (p + 1) / 2) / (p * (len(q) - p)))
    return np.asarray(accuracy), np.asarray(auc)


def test_merged_shard_sketches_equal_one_pass_over_the_rows():
    day, calibrator, classes = _forest_day(load_wine)
    predicted = day.argmax(axis=1)
    whole = ScoreSketch.from_rows(day, predicted, classes)
    parts = np.array_split(np.arange(len(day)), 7)
    merged = merge_score_sketches(ScoreSketch.from_rows(day[p], predicted[p], classes)
                                  for p in parts)
    assert merged.n_rows == whole.n_rows == len(day)
    np.testing.assert_array_equal(merged.keys, whole.keys)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    np.testing.assert_array_equal(merged.low, whole.low)
    np.testing.assert_array_equal(merged.high, whole.high)
    one = estimate_from_sketch(whole, calibrator, draws=300, seed=4).to_dict()["metrics"]
    two = estimate_from_sketch(merged, calibrator, draws=300, seed=4).to_dict()["metrics"]
    for name, band in one.items():
        for key in ("estimate", "low", "high"):
            assert two[name][key] == pytest.approx(band[key], abs=1e-9), (name, key)


def test_a_forests_probabilities_are_sketched_exactly_and_match_a_per_row_simulation():
    """A forest's probabilities are multiples of 1/50: one value per cell, no binning
    error, and the estimate matches labels simulated row by row (within Monte Carlo
    error of 2,000 draws on each side)."""
    day, calibrator, classes = _forest_day(load_breast_cancer)
    predicted = day.argmax(axis=1)
    sketch = ScoreSketch.from_rows(day, predicted, classes)
    assert sketch.cells < 200 < len(day)
    estimate = estimate_from_sketch(sketch, calibrator, draws=2000, seed=1)
    assert estimate.binning == {"label_probability": 0.0, "accuracy": 0.0, "roc_auc": 0.0}
    accuracy, auc = _oracle(day, predicted, calibrator, 2000, seed=2)
    for name, values in (("accuracy", accuracy), ("roc_auc", auc)):
        ours = estimate.metrics[name]
        noise = 4 * values.std() / np.sqrt(len(values)) * np.sqrt(2)
        assert abs(ours.estimate - values.mean()) <= noise + 1e-3, (name, ours, values.mean())
        assert ours.high - ours.low == pytest.approx(
            np.quantile(values, 0.975) - np.quantile(values, 0.025), rel=0.25)


def test_a_coarse_grid_costs_no_more_than_its_stated_error():
    """Continuous probabilities (a logistic model) on a grid of 8 levels: the estimate
    moves from the fine grid's by at most the coarse sketch's stated error (plus the
    simulation's noise), and the fine grid states a far smaller one."""
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    x_fit, x_rest, y_fit, y_rest = train_test_split(x, y, test_size=0.5, random_state=0)
    model = LogisticRegression(C=0.05, max_iter=1000).fit(x_fit, y_fit)
    held = model.predict_proba(x_rest)
    classes = ["0", "1"]
    calibrator = fit_calibrator(held, np.asarray([str(v) for v in y_rest]), classes)
    day = held[np.random.default_rng(3).integers(0, len(held), 20_000)]
    predicted = day.argmax(axis=1)
    fine = estimate_from_sketch(ScoreSketch.from_rows(day, predicted, classes), calibrator,
                                draws=1000, seed=5)
    coarse_sketch = ScoreSketch.from_rows(day, predicted, classes, levels=8)
    coarse = estimate_from_sketch(coarse_sketch, calibrator, draws=1000, seed=5)
    assert coarse_sketch.cells <= 16
    assert fine.binning["label_probability"] < 0.01 < coarse.binning["label_probability"]
    assert fine.binning["roc_auc"] < coarse.binning["roc_auc"]
    for name in ("accuracy", "roc_auc"):
        noise = 4 * (fine.metrics[name].high - fine.metrics[name].low) / 3.92 / np.sqrt(1000)
        moved = abs(coarse.metrics[name].estimate - fine.metrics[name].estimate)
        assert moved <= coarse.binning[name] + fine.binning[name] + noise, (name, moved)


def test_too_many_cells_halve_the_grid_and_keep_every_row():
    rng = np.random.default_rng(0)
    p = rng.random(50_000)
    proba = np.column_stack([1 - p, p])
    sketch = ScoreSketch.from_rows(proba, (p > 0.5).astype(int), ["a", "b"], max_cells=100)
    assert sketch.cells <= 100 and sketch.levels <= 64 and sketch.n_rows == 50_000
    np.testing.assert_allclose(sketch.sums.sum(axis=0), proba.sum(axis=0))
    fine = ScoreSketch.from_rows(proba[:10], (p[:10] > 0.5).astype(int), ["a", "b"])
    merged = fine.merged(sketch)  # onto the coarser grid
    assert merged.levels == sketch.levels and merged.n_rows == 50_010


def test_a_multiclass_sketch_in_another_class_order_gives_the_same_estimate():
    day, calibrator, classes = _forest_day(load_wine, repeat=5)
    predicted = day.argmax(axis=1)
    order = [2, 0, 1]
    shuffled = ScoreSketch.from_rows(day[:, order], np.argsort(order)[predicted],
                                     [classes[i] for i in order])
    one = estimate_performance(day, calibrator, np.asarray(classes)[predicted], draws=200)
    two = estimate_from_sketch(shuffled, calibrator, draws=200)
    assert one.to_dict()["metrics"] == two.to_dict()["metrics"]


def test_a_sketch_round_trips_and_a_crafted_file_is_refused_by_name():
    day, _, classes = _forest_day(load_wine, repeat=2)
    sketch = ScoreSketch.from_rows(day, day.argmax(axis=1), classes)
    back = ScoreSketch.from_bytes(sketch.to_bytes())
    assert back.classes == sketch.classes and back.levels == sketch.levels
    np.testing.assert_array_equal(back.keys, sketch.keys)
    np.testing.assert_array_equal(back.sums, sketch.sums)

    def crafted(**changes):
        fields = {"format": np.int64(1), "levels": np.int64(sketch.levels),
                  "max_cells": np.int64(sketch.max_cells),
                  "classes": np.asarray(sketch.classes), "keys": sketch.keys,
                  "counts": sketch.counts, "sums": sketch.sums, "low": sketch.low,
                  "high": sketch.high, **changes}
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v for k, v in fields.items() if v is not None})
        return buffer.getvalue()

    bad_counts = sketch.counts.copy()
    bad_counts[0] = 0
    bad_keys = sketch.keys.copy()
    bad_keys[0, 1] = sketch.levels
    swapped = sketch.low.copy()
    swapped[0] = sketch.high[0] + 0.1
    cases = [
        (b"not a zip", "unreadable"),
        (crafted(format=np.int64(9)), "format 9"),
        (crafted(sums=None), "no 'sums'"),
        (crafted(classes=np.asarray(["a"])), "2\\+ distinct"),
        (crafted(levels=np.int64(1000)), "power of two"),
        (crafted(sums=sketch.sums.astype(np.float32)), "wrong types or shapes"),
        (crafted(counts=bad_counts), "out of range"),
        (crafted(keys=bad_keys), "out of range"),
        (crafted(low=swapped), "not finite probabilities"),
        (crafted(sums=sketch.sums * 3), "outside their cells' bounds"),
        (crafted(**{name: np.repeat(getattr(sketch, name)[:1], 2, axis=0)
                    for name in ("keys", "counts", "sums", "low", "high")}), "a cell twice"),
        (crafted(max_cells=np.int64(1)), "below its 3 classes"),
        (crafted(max_cells=np.int64(3)), "above its max_cells"),
        (crafted(keys=np.asarray([object()] * 3, dtype=object)), "unreadable"),
        (crafted(levels=np.asarray([8, 8])), "'levels' is not one integer"),
        (crafted(format=np.float64(np.inf)), "'format' is not one integer"),
        (crafted(max_cells=np.asarray([], dtype=np.int64)), "'max_cells' is not one"),
        (crafted(counts=np.full_like(sketch.counts, 1 << 60),
                 sums=sketch.sums / sketch.counts[:, None] * float(1 << 60)),
         "more than"),
        (crafted(keys=_shifted_level(sketch.keys)), "disagree with their cells' bounds"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            ScoreSketch.from_bytes(data)


@pytest.mark.parametrize("proba, predicted, message", [
    (np.asarray([[0.2, 0.8]]), [2], "answered class indices"),
    (np.asarray([[np.nan, 0.8]]), [1], "finite numbers in"),
    (np.asarray([[0.2, 1.8]]), [1], "finite numbers in"),
    (np.asarray([[0.2, 0.8]]), [1, 0], "2 answers for 1 rows"),
])
def test_rows_that_are_not_probabilities_are_refused(proba, predicted, message):
    with pytest.raises(ValueError, match=message):
        ScoreSketch.from_rows(proba, predicted, ["a", "b"])


def test_a_days_rows_are_sketched_per_version_and_unusable_rows_counted_by_reason():
    rows = pd.DataFrame({
        "model_version": ["1", "1", "1", "1", "2", "2", None, "3"],
        "prediction": ["a", "b", "zz", "a", "b", "b", "a", 1.5],
        "proba_a": [0.9, 0.2, 0.5, np.nan, 0.1, 0.3, 0.5, np.nan],
        "proba_b": [0.1, 0.8, 0.5, 0.4, 0.9, 0.7, 0.5, np.nan],
    })
    day = sketch_rows(rows)
    assert sorted(day.versions) == ["1", "2"]  # no version: not answered; 3: a regressor
    assert day.versions["1"].n_rows == 2 and day.versions["2"].n_rows == 2
    assert day.left_out == {"answer or probabilities unusable (missing, or not a class)": 2,
                            "without probabilities (a regressor's, or none logged)": 1}
    back = DayScores.from_bytes(day.to_bytes())
    assert back.left_out == day.left_out and sorted(back.versions) == ["1", "2"]
    np.testing.assert_array_equal(back.versions["1"].keys, day.versions["1"].keys)
    merged = back.merged(day)
    assert merged.n_rows == 8 and merged.left_out["without probabilities (a regressor's, "
                                                  "or none logged)"] == 2
    for data, message in ((b"PK\x03\x04 torn", "unreadable"),
                          (_without(day.to_bytes(), "v0_sums"), "no 'sums'")):
        with pytest.raises(ValueError, match=message):
            DayScores.from_bytes(data)


def _shifted_level(keys: np.ndarray) -> np.ndarray:
    """The first cell's level of class 0 moved one step (its bounds stay)."""
    moved = keys.copy()
    moved[0, 1] = moved[0, 1] + 1 if moved[0, 1] == 0 else moved[0, 1] - 1
    return moved


def _without(data: bytes, name: str) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files if k != name}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
