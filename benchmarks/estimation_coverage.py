"""Coverage, false alarms and power of the performance estimate (CBPE, ml_assets.core.estimation);
the tables of docs/drift.md ("Performance estimated before labels") come from this script.

    python benchmarks/estimation_coverage.py --real       # seattle-weather, palmerpenguins
    python benchmarks/estimation_coverage.py --aa         # A/A coverage and false alarms
    python benchmarks/estimation_coverage.py --power      # detection of a real drop
    python benchmarks/estimation_coverage.py --family     # the gate on all five metrics
    python benchmarks/estimation_coverage.py --all        # what docs/drift.md shows

Real: per table and seed (a deployment: its own train / held-out / pool split), a
random forest trained on 40% of the rows and calibrated on 35%; --days days of 50-200
rows drawn without replacement from a sub-population of the remaining 25% (a window of
40% of the quantile range of one column); the share of days whose realised accuracy lies
in the estimate's 95% band. Then days whose labels are rotated for the window's upper
half (concept drift): the share reported outside the band.

A/A: a binary world whose true P(b) is Beta(0.5, 0.5), the model reporting a distorted
probability (p^3 / (p^3 + (1-p)^3)), calibrated on 2,000 rows; days whose labels follow
the truth: coverage of the band, and the share of days called "below" a gate set at the
day's true expected accuracy (the worst case: the model exactly at the gate).

Power: the same world with the rows' true P(b) pulled towards 0.5 by a share s (a
covariate shift into the model's uncertain region): the share of days whose band lies
wholly below a gate of 0.8.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_assets.core.estimation import evidence  # noqa: E402
from ml_assets.core.estimation.calibration import fit_calibrator  # noqa: E402
from ml_assets.core.estimation.cbpe import estimate_performance, verdict  # noqa: E402
from ml_assets_tests.support.estimation_days import (  # noqa: E402
    coverage,
    penguins,
    prepare,
    seattle_weather,
    shifted_day,
)


def real(days: int, seeds: int) -> None:
    print("| table | seed | days | coverage of the 95% band | mean estimate | mean realised "
          "| mean band width | concept-drift days reported outside |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for table in (seattle_weather(), penguins()):
        pooled = []
        for seed in range(seeds):
            covered, result = coverage(table, days, seed=seed)
            pooled.append(covered)
            setup = prepare(table, seed)
            rng = np.random.default_rng(1000 + seed)
            flipped = [shifted_day(setup, rng, 150, flip_segment=True) for _ in range(20)]
            outside = np.mean([not d.covered and d.realised < d.low for d in flipped])
            print(f"| {table.name} | {seed} | {days} | {covered:.2f} | "
                  f"{np.mean([d.estimate for d in result]):.3f} | "
                  f"{np.mean([d.realised for d in result]):.3f} | "
                  f"{np.mean([d.high - d.low for d in result]):.3f} | {outside:.2f} |")
        print(f"| {table.name} | all | {days * seeds} | **{np.mean(pooled):.3f}** | | | | |")


def _world(rng, n, shift=0.0):
    true = rng.beta(0.5, 0.5, n)
    true = (1 - shift) * true + shift * 0.5
    raw = true ** 3 / (true ** 3 + (1 - true) ** 3)
    labels = np.where(rng.random(n) < true, "b", "a")
    return np.column_stack([1 - raw, raw]), labels, true


def aa(repeats: int) -> None:
    rng = np.random.default_rng(0)
    proba, labels, _ = _world(rng, 2000)
    calibrator = fit_calibrator(proba, labels, ["a", "b"])
    print("| rows a day | days | coverage (95% band) | called below a gate at the true "
          "accuracy (nominal <= 2.5%) |")
    print("|---:|---:|---:|---:|")
    for rows in (30, 50, 100, 200, 500, 2000):
        covered, alarms = [], []
        for _ in range(repeats):
            proba, labels, true = _world(rng, rows)
            predicted = np.where(proba[:, 1] >= 0.5, "b", "a")
            estimate = estimate_performance(proba, calibrator, predicted, draws=400,
                                            seed=int(rng.integers(1 << 30)))
            band = estimate.metrics["accuracy"]
            realised = float(np.mean(labels == predicted))
            expected = float(np.mean(np.where(predicted == "b", true, 1 - true)))
            covered.append(band.low <= realised <= band.high)
            alarms.append(verdict(estimate, {"accuracy": expected})[0] == evidence.BELOW)
        se = np.sqrt(0.05 * 0.95 / repeats)
        print(f"| {rows} | {repeats} | {np.mean(covered):.3f} (± {se:.3f}) | "
              f"{np.mean(alarms):.3f} |")


def power(repeats: int) -> None:
    rng = np.random.default_rng(1)
    proba, labels, _ = _world(rng, 2000)
    calibrator = fit_calibrator(proba, labels, ["a", "b"])
    shifts = (0.0, 0.2, 0.4, 0.6, 0.8)
    header = " | ".join(f"s={s} (acc {np.mean(_acc(rng, s)):.2f})" for s in shifts)
    print(f"| rows a day | {header} |")
    print("|---:|" + "---:|" * len(shifts))
    for rows in (50, 100, 200, 500):
        cells = []
        for shift in shifts:
            hits = 0
            for _ in range(repeats):
                proba, _, _ = _world(rng, rows, shift)
                estimate = estimate_performance(proba, calibrator, draws=400,
                                                seed=int(rng.integers(1 << 30)))
                hits += verdict(estimate, {"accuracy": 0.8})[0] == evidence.BELOW
            cells.append(f"{hits / repeats:.2f}")
        print(f"| {rows} | " + " | ".join(cells) + " |")


def family(deployments: int, days: int) -> None:
    """The gate on all five gated metrics, each at the model's population value (the
    model is not below the gate): the share of days called "below" by the family-wise
    rule (Bonferroni, 2.5 % / 5 per metric) and by the former one (any band wholly
    below), by the held-out rows the calibrator was fitted on."""
    from sklearn import metrics

    from ml_assets.core.estimation.cbpe import GATED

    rng = np.random.default_rng(21)
    proba, _, true = _world(rng, 200_000)
    predicted = (proba[:, 1] >= 0.5).astype(np.int64)
    labels = (rng.random(true.size) < true).astype(np.int64)
    weighted = {"average": "weighted", "zero_division": 0}
    population = {"accuracy": metrics.accuracy_score(labels, predicted),
                  "precision_weighted": metrics.precision_score(labels, predicted, **weighted),
                  "recall_weighted": metrics.recall_score(labels, predicted, **weighted),
                  "f1_weighted": metrics.f1_score(labels, predicted, **weighted),
                  "roc_auc": metrics.roc_auc_score(labels, proba[:, 1])}
    gate = {name: population[name] for name in GATED}
    print("| calibrator fitted on | rows a day | days | called below: family-wise rule "
          "| former rule (any band below) |")
    print("|---:|---:|---:|---:|---:|")
    for held in (2000, 1000, 300):
        for rows in (50, 200, 1000):
            new = old = 0
            for _ in range(deployments):
                held_proba, held_labels, _ = _world(rng, held)
                calibrator = fit_calibrator(held_proba, held_labels, ["a", "b"])
                for _ in range(days):
                    day, _, _ = _world(rng, rows)
                    answered = np.where(day[:, 1] >= 0.5, "b", "a")
                    estimate = estimate_performance(day, calibrator, answered, draws=400,
                                                    seed=int(rng.integers(1 << 30)))
                    new += verdict(estimate, gate)[0] == evidence.BELOW
                    old += any(estimate.metrics[m].high < gate[m] for m in GATED
                               if m in estimate.metrics)
            total = deployments * days
            print(f"| {held:,} | {rows:,} | {total} | {new / total:.3f} | {old / total:.3f} |")


def _acc(rng, shift):
    _, _, true = _world(rng, 20000, shift)
    return np.maximum(true, 1 - true)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--aa", action="store_true")
    parser.add_argument("--power", action="store_true")
    parser.add_argument("--family", action="store_true",
                        help="the gate on all five metrics: family-wise vs former rule")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # ROC AUC undefined on one-class days
    started = time.perf_counter()
    if args.real or args.all:
        real(args.days, args.seeds)
    if args.aa or args.all:
        aa(args.repeats)
    if args.power or args.all:
        power(args.repeats // 2)
    if args.family or args.all:
        family(15, 40)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
