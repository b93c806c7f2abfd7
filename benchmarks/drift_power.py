"""False-alarm rates (A/A) and power of the calibrated drift verdicts; the tables of
docs/drift.md ("Measured false alarms and power") come from this script.

    python benchmarks/drift_power.py --calibration            # A/A: every (m, n) cell
    python benchmarks/drift_power.py --power                  # shifts in 1, 3, 10 features
    python benchmarks/drift_power.py --min-rows               # the n behind min_rows
    python benchmarks/drift_power.py --check                  # the drift check (asset)
    python benchmarks/drift_power.py --ties --repeats 60      # grid of nulls: off-grid days
    python benchmarks/drift_power.py --all --repeats 400      # what docs/drift.md shows

A/A: each repeat draws a fresh reference of m rows and, from the same distribution, one
day of each size n; the reference is profiled (build_reference_profile) and every day is
scored with DriftConfig() (and, for comparison, with calibration="fixed", the former
rule). The mixed frame has 10 columns: normal, lognormal, Student t (df 2), Poisson(3)
integers (ties), a normal column with 5 % missing values, categorical balanced (4
categories), imbalanced (90/7/2/1 %), rare (5 common + 50 categories of 0.1 % each),
long-tailed (Zipf over 300 categories: days hold values the reference never saw) and a
boolean (30 % True). Per-feature rates are per column kind; dataset rates are given for
the whole frame and for its numeric and categorical halves (Holm over those columns'
p-values: what scoring a frame of only those columns gives).

Power: a reference of 5,000 rows x 10 N(0, 1) features; days of n rows with a mean shift
of d std in k features (or, for the categorical table, 10 balanced 4-category features
where one category's share rises from 25 % by s, the others shrinking in proportion).
Check: the drift_scores check's decision (ml_assets.core.drift.check.decide) with a real
model (ml_assets_tests.support.drift_frames.model_world: a logistic regression on 6 N(0, 1)
features, outputs profiled on held-out rows): no-drift windows that fail / warn, with the
check's budget split between the feature and prediction verdicts (the default) and, for
comparison, both at the full dataset_alpha; and the power of the check by window size.
Ties: integer columns (Poisson(3), codes 0-99, three values 80/15/5 %, Poisson(30)),
whose KS null is resampled once per column for a grid of day sizes (a day of n rows
reads the null of the grid size at or below n): A/A rates at day sizes off the grid,
and power (Poisson(3) + Bernoulli(0.5), a 0.29-std shift; KS significance at alpha)
with the grid's null against a null drawn at the day's own size.
Seeded; rates over --repeats days (the binomial standard error is given).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_assets.core.drift import nulls  # noqa: E402
from ml_assets.core.drift.check import CheckSettings, decide  # noqa: E402
from ml_assets.core.drift.config import DriftConfig  # noqa: E402
from ml_assets.core.drift.nulls import NULL_CACHE  # noqa: E402
from ml_assets.core.drift.profile import build_reference_profile  # noqa: E402
from ml_assets.core.drift.scoring import score_drift  # noqa: E402
from ml_assets.core.drift.stats import holm  # noqa: E402
from ml_assets_tests.support.drift_frames import (  # noqa: E402
    CATEGORICAL,
    KINDS,
    NUMERIC,
    mixed_frame,
    model_world,
)

REFERENCE_SIZES = (500, 5_000, 100_000)
DAY_SIZES = (30, 50, 100, 200, 500, 2_000, 20_000)

# -- the A/A frame -------------------------------------------------------------------------




def _family_drifted(table: pd.DataFrame, names: list[str], alpha: float) -> bool:
    rows = table.set_index("feature").loc[names]
    return bool((holm(rows["p_drift"].to_numpy(float)) <= alpha).any())


def calibration(repeats: dict[int, int], seed: int = 20261207) -> list[dict]:
    """A/A rates per (m, n) cell."""
    config, fixed = DriftConfig(), DriftConfig(calibration="fixed")
    cells = []
    for m in REFERENCE_SIZES:
        rng = np.random.default_rng([seed, m])
        reps = repeats[m]
        feature_hits = {n: np.zeros(len(KINDS)) for n in DAY_SIZES}
        dataset = {n: np.zeros(4) for n in DAY_SIZES}  # mixed, numeric, categorical, old
        start = time.perf_counter()
        for _ in range(reps):
            profile = build_reference_profile(mixed_frame(rng, m), KINDS)
            for n in DAY_SIZES:
                day = mixed_frame(rng, n)
                report = score_drift(profile, day, config)
                table = report.features
                feature_hits[n] += table["drifted"].to_numpy(bool)
                dataset[n] += [report.dataset_drifted,
                               _family_drifted(table, NUMERIC, config.dataset_alpha),
                               _family_drifted(table, CATEGORICAL, config.dataset_alpha),
                               score_drift(profile, day, fixed).dataset_drifted]
            NULL_CACHE.clear()  # every repeat has its own reference
        print(f"  m={m:,}: {reps} repeats in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        for n in DAY_SIZES:
            cells.append({"m": m, "n": n, "repeats": reps,
                          "features": dict(zip(KINDS, (feature_hits[n] / reps).tolist(),
                                               strict=True)),
                          "dataset": (dataset[n] / reps).tolist()})
    return cells


def calibration_tables(cells: list[dict]) -> str:
    reps = sorted({c["repeats"] for c in cells})
    short = {"normal": "normal", "lognormal": "lognorm", "student_t2": "t(2)",
             "poisson_ints": "ints", "with_missing": "5% NaN", "balanced": "balanced",
             "imbalanced": "imbal.", "rare": "rare", "long_tail": "long tail",
             "flag": "bool"}
    lines = ["Per-feature false-alarm rate (alpha = 0.01; a column drifted on a no-drift "
             "day):", "",
             "| m | n | " + " | ".join(short[k] for k in KINDS) + " |",
             "|---:|---:|" + "---:|" * len(KINDS)]
    for c in cells:
        lines.append(f"| {c['m']:,} | {c['n']:,} | "
                     + " | ".join(_pct(c["features"][k]) for k in KINDS) + " |")
    lines += ["", "Dataset false-alarm rate (dataset_alpha = 0.02) and the former rule "
              "(share of drifted features >= 0.5, fixed thresholds) on the same days:", "",
              "| m | n | mixed (10 cols) | numeric (5) | categorical (5) | former rule, mixed |",
              "|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        mixed, numeric, categorical, old = c["dataset"]
        lines.append(f"| {c['m']:,} | {c['n']:,} | {_pct(mixed)} | {_pct(numeric)} | "
                     f"{_pct(categorical)} | {_pct(old)} |")
    lines += ["", f"Repeats per cell: {', '.join(map(str, reps))} (see the command); "
              + ", ".join(f"{r} repeats: 3 standard errors = "
                          f"{_pct(3 * math.sqrt(0.01 * 0.99 / r))} at 1 %, "
                          f"{_pct(3 * math.sqrt(0.02 * 0.98 / r))} at 2 %" for r in reps)
              + "."]
    return "\n".join(lines)


# -- power ----------------------------------------------------------------------------------

def power(repeats: int, seed: int = 7) -> str:
    rng = np.random.default_rng(seed)
    m, features = 5_000, [f"x{i}" for i in range(10)]
    reference = pd.DataFrame(rng.normal(size=(m, 10)), columns=features)
    profile = build_reference_profile(reference, dict.fromkeys(features, "numeric"))
    config = DriftConfig()
    sizes = (100, 200, 500, 2_000)
    lines = ["Numeric: reference 5,000 x 10 N(0, 1); a day's mean shifted by d std in k "
             "features. Dataset verdict detected / one shifted feature's own verdict:", "",
             "| shift d | k features | " + " | ".join(f"n = {n:,}" for n in sizes) + " |",
             "|---:|---:|" + "---:|" * len(sizes)]
    for shift in (0.2, 0.5, 1.0):
        for k in (1, 3, 10):
            cells = []
            for n in sizes:
                detected = own = 0
                for _ in range(repeats):
                    day = rng.normal(size=(n, 10))
                    day[:, :k] += shift
                    report = score_drift(profile, pd.DataFrame(day, columns=features), config)
                    detected += report.dataset_drifted
                    own += bool(report.features["drifted"].iloc[0])
                cells.append(f"{_pct(detected / repeats)} / {_pct(own / repeats)}")
            lines.append(f"| {shift} | {k} | " + " | ".join(cells) + " |")

    categories = np.array(["a", "b", "c", "d"], dtype=object)
    names = [f"c{i}" for i in range(10)]
    reference = pd.DataFrame({c: categories[rng.integers(0, 4, size=m)] for c in names})
    profile = build_reference_profile(reference, dict.fromkeys(names, "categorical"))
    lines += ["", "Categorical: reference 5,000 x 10 features of 4 equally likely "
              "categories; on the day one category's share rises from 25 % to 25 % + s in "
              "k features (the others shrink in proportion). Dataset / own verdict:", "",
              "| share shift s | k features | "
              + " | ".join(f"n = {n:,}" for n in sizes) + " |",
              "|---:|---:|" + "---:|" * len(sizes)]
    for rise in (0.05, 0.1, 0.2):
        shifted = np.array([0.25 + rise] + [(0.75 - rise) / 3] * 3)
        for k in (1, 3, 10):
            cells = []
            for n in sizes:
                detected = own = 0
                for _ in range(repeats):
                    day = pd.DataFrame({
                        c: categories[np.searchsorted(
                            np.cumsum(shifted if i < k else np.full(4, 0.25)),
                            rng.random(n), side="right").clip(0, 3)]
                        for i, c in enumerate(names)})
                    report = score_drift(profile, day, config)
                    detected += report.dataset_drifted
                    own += bool(report.features["drifted"].iloc[0])
                cells.append(f"{_pct(detected / repeats)} / {_pct(own / repeats)}")
            lines.append(f"| {rise} | {k} | " + " | ".join(cells) + " |")
    lines += ["", f"{repeats} days per cell (3 standard errors at 50 %: "
              f"{_pct(3 * math.sqrt(0.25 / repeats))})."]
    return "\n".join(lines)


def min_rows_curve(repeats: int, seed: int = 11) -> str:
    """Power to detect a 0.5-std shift in one of 10 features, by n (reference 5,000)."""
    rng = np.random.default_rng(seed)
    features = [f"x{i}" for i in range(10)]
    reference = pd.DataFrame(rng.normal(size=(5_000, 10)), columns=features)
    profile = build_reference_profile(reference, dict.fromkeys(features, "numeric"))
    lines = ["A 0.5-std mean shift in 1 of 10 N(0, 1) features, reference 5,000 rows:", "",
             "| n | the feature's own verdict (alpha 0.01) | dataset verdict (Holm, 0.02) |",
             "|---:|---:|---:|"]
    for n in (40, 50, 60, 70, 80, 90, 100, 120, 150):
        own = dataset = 0
        for _ in range(repeats):
            day = rng.normal(size=(n, 10))
            day[:, 0] += 0.5
            report = score_drift(profile, pd.DataFrame(day, columns=features))
            own += bool(report.features["drifted"].iloc[0])
            dataset += report.dataset_drifted
        lines.append(f"| {n} | {_pct(own / repeats)} | {_pct(dataset / repeats)} |")
    return "\n".join(lines)


def check_rates(repeats: int, seed: int = 5) -> str:
    """The drift check (fail = dataset or prediction verdict) on windows of n rows."""
    profile, day = model_world(seed)
    split = CheckSettings()
    union = split.drift_config(False)  # both families at the full dataset_alpha
    sizes = (50, 100, 200, 500, 2_000)
    lines = ["The drift check with a model (6 features, a logistic regression's outputs): "
             "no-drift windows, then a 0.5-std shift in x0 (a feature the model uses) and in "
             "x5 (one it ignores):", "",
             "| n | A/A fail (default: 1 % + 1 %) | A/A fail (2 % + 2 %, not used) "
             "| A/A warn | 0.5 std in x0: fail | 0.5 std in x5: fail |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        fail = fail_union = warn = 0
        for _ in range(repeats):
            frame = day(n)
            report = score_drift(profile, frame, split.drift_config(True))
            outcome = decide(report, split).outcome
            fail += outcome == "fail"
            warn += outcome == "warn"
            wide = score_drift(profile, frame, union)
            fail_union += wide.dataset_drifted or wide.prediction_drifted
        used = ignored = 0
        for _ in range(repeats):
            used += decide(score_drift(profile, day(n, 0.5, 1), split.drift_config(True)),
                           split).outcome == "fail"
            shifted = day(n)
            shifted["x5"] += 0.5
            ignored += decide(score_drift(profile, shifted, split.drift_config(True)),
                              split).outcome == "fail"
        lines.append(f"| {n:,} | {_pct(fail / repeats)} | {_pct(fail_union / repeats)} "
                     f"| {_pct(warn / repeats)} | {_pct(used / repeats)} "
                     f"| {_pct(ignored / repeats)} |")
    se = math.sqrt(0.02 * 0.98 / repeats)
    lines += ["", f"{repeats} windows per cell (3 standard errors at 2 %: {_pct(3 * se)})."]
    return "\n".join(lines)


TIED = {"poisson3": lambda rng, n: rng.poisson(3, n),
        "codes100": lambda rng, n: rng.integers(0, 100, n),
        "three_values": lambda rng, n: rng.choice(3, n, p=[0.8, 0.15, 0.05]),
        "poisson30": lambda rng, n: rng.poisson(30, n)}
OFF_GRID = (12, 28, 46, 77, 92, 129, 182, 200, 305, 432, 500, 800)


def _tied(rng, n: int, shift: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame({name: draw(rng, n).astype(float) for name, draw in TIED.items()})
    if shift:
        frame["poisson3"] += rng.integers(0, 2, n)
    return frame


@contextlib.contextmanager
def _null_at_the_days_size(n: int):
    """The former rule, for comparison: the null drawn at the day's own size."""
    saved = nulls.null_grid
    nulls.null_grid = lambda m: np.array([n], dtype=np.int64)
    try:
        yield
    finally:
        nulls.null_grid = saved


def ties(repeats: int, seed: int = 20261208) -> str:
    """A/A rates off the grid, and power of the grid's null against the day's own."""
    config = DriftConfig(missing_rate_threshold=None)
    lines = ["Integer columns with ties, KS at alpha = 0.01, days off the grid of nulls "
             f"({repeats} days per cell): share of no-drift days a column is significant "
             "(4 columns pooled), and power on Poisson(3) + Bernoulli(0.5) with the grid's "
             "null / with a null drawn at the day's own size:", "",
             "| m | n | grid size used | A/A (grid) | power (grid) | power (own size) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for m in (500, 5_000, 100_000):
        rng = np.random.default_rng([seed, m])
        aa = {n: 0 for n in OFF_GRID}
        power_grid = {n: 0 for n in OFF_GRID}
        power_own = {n: 0 for n in OFF_GRID}
        start = time.perf_counter()
        for _ in range(repeats):
            profile = build_reference_profile(_tied(rng, m), dict.fromkeys(TIED, "numeric"))
            cache = nulls.NullCache()
            for n in OFF_GRID:
                table = score_drift(profile, _tied(rng, n), config, cache=cache).features
                aa[n] += int(table["significant"].sum())
                shifted = _tied(rng, n, shift=True)
                row = score_drift(profile, shifted, config, cache=cache).features.iloc[0]
                power_grid[n] += bool(row["significant"])
                with _null_at_the_days_size(n):
                    own = score_drift(profile, shifted[["poisson3"]], config,
                                      cache=nulls.NullCache())  # the others: absent
                power_own[n] += bool(own.features.iloc[0]["significant"])
        print(f"  ties m={m:,}: {repeats} repeats in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        grid = nulls.null_grid(m)
        for n in OFF_GRID:
            below = grid[grid <= n]
            used = f"{below.max():,}" if below.size and n * m / (n + m) < 1000 else "bridge"
            lines.append(f"| {m:,} | {n:,} | {used} | {_pct(aa[n] / (4 * repeats))} "
                         f"| {_pct(power_grid[n] / repeats)} | {_pct(power_own[n] / repeats)} |")
    return "\n".join(lines)


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", action="store_true", help="A/A tables")
    parser.add_argument("--power", action="store_true", help="power tables")
    parser.add_argument("--min-rows", action="store_true", help="power by n (min_rows)")
    parser.add_argument("--check", action="store_true",
                        help="the drift check's false alarms and power (with a model)")
    parser.add_argument("--ties", action="store_true",
                        help="integer columns: A/A and power off the grid of nulls")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--repeats", type=int, default=200,
                        help="A/A repeats for m = 500 and 5,000 (half for 100,000); "
                             "days per power cell")
    parser.add_argument("--power-repeats", type=int, default=200)
    args = parser.parse_args()
    if not (args.calibration or args.power or args.min_rows or args.check or args.ties
            or args.all):
        parser.error("choose --calibration, --power, --min-rows, --check, --ties or --all")
    out = []
    if args.calibration or args.all:
        reps = {500: args.repeats, 5_000: args.repeats, 100_000: max(1, args.repeats // 2)}
        out.append(calibration_tables(calibration(reps)))
    if args.power or args.all:
        out.append(power(args.power_repeats))
    if args.min_rows or args.all:
        out.append(min_rows_curve(args.power_repeats))
    if args.check or args.all:
        out.append(check_rates(args.repeats))
    if args.ties or args.all:
        out.append(ties(args.repeats))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
