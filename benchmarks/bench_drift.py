"""Drift scoring speed and agreement: this library vs a per-column scipy loop vs Evidently.

    /tmp/venv/bin/python benchmarks/bench_drift.py                 # 100,000 and 1,000,000 x 20
    /tmp/venv/bin/python benchmarks/bench_drift.py --rows 100000 --repeats 3   # quicker
    /tmp/venv/bin/python benchmarks/bench_drift.py --rows 1000000 --repeats 7 --no-evidently \
        --variants library library_warm library_fixed scipy      # the calibration cost
    python benchmarks/bench_drift.py --rows 1000000 --repeats 3 --no-evidently \
        --variants library library_fixed scipy --ab --rounds 11 [--integers]
        # + interleaved rounds in one process (docs/benchmarks.md, "Drift scoring")

Reference and current frames are float64, N rows x 20 numeric features of four shapes
(normal, lognormal, uniform, gamma); the current frame has 6 of the 20 features shifted
by +0.5 reference std, so those (and only those) should drift. Variants, each timed in
its own fresh subprocess (peak RSS = that process's ru_maxrss, data included):

  profile build   build_reference_profile + to_bytes on the reference (training time)
  library         from_bytes + score_drift on the current frame, DriftConfig(): the
                  calibrated verdicts (KS at alpha 0.01 + normed Wasserstein >= 0.1), a
                  fresh process, so the first day of its size (no cached null)
  library warm    the same, timing a second day of the same size in the same process
                  (cached nulls and critical values)
  library fixed   the same with calibration='fixed' (the former default: normed
                  Wasserstein >= 0.1 over 1,000 rows, no test): what scoring cost before
  library KS      calibration='fixed', numeric_test='ks' against an exact profile (all
                  distinct values stored): the same statistic and p-values as the scipy loop
  scipy loop      scipy.stats.ks_2samp per column, significant when p < 0.01 (the
                  library's alpha); compared with the library's KS verdicts
  evidently       Report([DataDriftPreset()]) in its own venv (--evidently-python), run in
                  a subprocess with that venv's python; skipped with a note if absent

Variants alternate within each repeat; the table shows medians. --ab adds, in one
process, rounds of fixed / calibrated first day of a profile never warmed (caches
emptied) / calibrated second day (cache hit) / calibrated first run after training (the
nulls warm_nulls drew into the on-disk cache at training time, memory caches emptied as
in a new process) / the scipy loop, in an order rotating from round to round; then the
training-time warm's CPU and 30 days of 100-1,500 rows scored from the warmed cache
(nulls drawn: none expected). --integers: integer columns with ties (resampled nulls).

Evidently is never a dependency of this project: create its venv with
    python3 -m venv /tmp/evidently-venv && /tmp/evidently-venv/bin/pip install evidently pandas
(evidently 0.7.23 fails to import with pandas 3: use "pandas==2.3.3" instead of "pandas").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EVIDENTLY_PYTHON = "/tmp/evidently-venv/bin/python"
N_FEATURES = 20
SHIFTED = range(6)  # features shifted by +0.5 reference std
SEED = 20261125
SCIPY_ALPHA = 0.01  # the library's per-feature alpha


# -- data ---------------------------------------------------------------------------

def make_data(rows: int, directory: Path, integers: bool = False) -> None:
    """reference.npy / current.npy, shape (features, rows): each feature contiguous.
    `integers`: Poisson(3), uniform 0-99, uniform 0-499 and Poisson(30) columns (ties:
    the calibrated KS gets a resampled null) instead of the four continuous shapes."""
    import numpy as np

    rng = np.random.default_rng(SEED + rows)

    def draw(i: int, n: int) -> np.ndarray:
        shape = i % 4
        if integers:
            return [lambda: rng.poisson(3, size=n), lambda: rng.integers(0, 100, size=n),
                    lambda: rng.integers(0, 500, size=n),
                    lambda: rng.poisson(30, size=n)][shape]().astype(float)
        if shape == 0:
            return rng.normal(i, 1 + i / 10, size=n)
        if shape == 1:
            return rng.lognormal(0, 0.5, size=n)
        if shape == 2:
            return rng.uniform(-1, 3, size=n)
        return rng.gamma(2.0, 1.5, size=n)

    reference = np.empty((N_FEATURES, rows))
    current = np.empty((N_FEATURES, rows))
    for i in range(N_FEATURES):
        reference[i] = draw(i, rows)
        current[i] = draw(i, rows)
        if i in SHIFTED:
            current[i] += 0.5 * reference[i].std()
            if integers:
                current[i] = np.round(current[i])
    np.save(directory / "reference.npy", reference)
    np.save(directory / "current.npy", current)


def load_frame(path: Path):
    """A DataFrame over the saved (features, rows) array, without copying it."""
    import numpy as np
    import pandas as pd

    array = np.load(path)
    return pd.DataFrame(array.T, columns=[f"f{i}" for i in range(array.shape[0])],
                        copy=False)


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


# -- children: each runs one variant and prints one JSON line -----------------------------

def child_build(data: Path, exact: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    from ml_assets.core.drift.profile import build_reference_profile

    reference = load_frame(data / "reference.npy")
    loaded = peak_rss_gib()
    kinds = {name: "numeric" for name in reference.columns}
    start, cpu_start = time.perf_counter(), time.process_time()
    profile = build_reference_profile(
        reference, kinds, sketch_size=len(reference) if exact else 10_000)
    blob = profile.to_bytes()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    (data / ("profile_exact.bin" if exact else "profile.bin")).write_bytes(blob)
    return {"seconds": seconds, "cpu_seconds": cpu, "loaded_gib": loaded,
            "profile_mib": len(blob) / 2**20}


def child_library(data: Path, variant: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from ml_assets.core.drift.config import DriftConfig
    from ml_assets.core.drift.profile import ReferenceProfile
    from ml_assets.core.drift.scoring import score_drift

    current = load_frame(data / "current.npy")
    ks_exact = variant == "library_ks"
    blob = (data / ("profile_exact.bin" if ks_exact else "profile.bin")).read_bytes()
    loaded = peak_rss_gib()
    config = {"library": DriftConfig(), "library_warm": DriftConfig(),
              "library_fixed": DriftConfig(calibration="fixed"),
              "library_ks": DriftConfig(calibration="fixed", numeric_test="ks")}[variant]
    if variant == "library_warm":  # a first day of this size fills the caches
        score_drift(ReferenceProfile.from_bytes(blob), current, config)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = score_drift(ReferenceProfile.from_bytes(blob), current, config)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    table = report.features

    def column(name: str) -> dict:
        return dict(zip(table["feature"], table[name].astype(float).tolist(), strict=True))

    result = {"seconds": seconds, "cpu_seconds": cpu, "loaded_gib": loaded,
              "drifted": dict(zip(table["feature"], table["drifted"].astype(bool).tolist(),
                                  strict=True)),
              "scores": column("p_value" if ks_exact else "statistic"),
              "tests": sorted(set(table["test"]))}
    if config.calibrated:
        result.update(p_values=column("p_value"), effects=column("effect_size"),
                      significant=dict(zip(table["feature"],
                                           table["significant"].astype(bool).tolist(),
                                           strict=True)),
                      dataset_drifted=report.dataset_drifted)
    return result


def child_ab(data: Path, rounds: int = 11) -> dict:
    """In one process, `rounds` interleaved rounds of: fixed thresholds (what scoring cost
    before calibration), calibrated with every cache emptied (a first day of its size),
    calibrated again (a second day of the same size: cached nulls and critical values)
    and the scipy ks_2samp loop. The order rotates from round to round (the calibrated
    pair kept together, cold first), so no variant always runs after the same one; the
    medians of CPU and wall seconds are free of process start-up and of the load
    drifting between processes. Also checks that the verdicts agree with scipy's."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from ml_assets.core.drift import nulls
    from ml_assets.core.drift.config import DriftConfig
    from ml_assets.core.drift.profile import ReferenceProfile
    from ml_assets.core.drift.scoring import score_drift

    current = load_frame(data / "current.npy")
    reference = load_frame(data / "reference.npy")
    stored = data / "nulls"  # what drift_scores keeps beside the instance's storage
    blob = (data / "profile.bin").read_bytes()
    loaded = peak_rss_gib()
    fixed, calibrated = DriftConfig(calibration="fixed"), DriftConfig()
    score_drift(ReferenceProfile.from_bytes(blob), current, fixed)  # warm imports, pages
    # Training time: the reference_profile asset draws every resampled null into the
    # instance's disk cache (warm_nulls), so that the first scoring draws none.
    cpu_start = time.process_time()
    drawn = nulls.warm_nulls(ReferenceProfile.from_bytes(blob), calibrated,
                             nulls.NullCache(directory=stored))
    warm_cpu = time.process_time() - cpu_start
    times: dict[str, list[tuple[float, float]]] = {"fixed": [], "cold": [], "warm": [],
                                                   "disk": [], "scipy": []}
    found: dict[str, object] = {}

    def run(name: str) -> None:
        if name in ("cold", "disk"):  # a new process: nothing cached in memory
            nulls.NULL_CACHE.clear()
            nulls._KS_CRITICAL.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        if name == "scipy":
            found["scipy"] = scipy_pvalues(reference, current)
        elif name == "disk":  # drift_scores' first run after training: nulls from disk
            found[name] = score_drift(ReferenceProfile.from_bytes(blob), current, calibrated,
                                      cache=nulls.NullCache(directory=stored))
        else:
            found[name] = score_drift(ReferenceProfile.from_bytes(blob), current,
                                      fixed if name == "fixed" else calibrated)
        times[name].append((time.perf_counter() - start, time.process_time() - cpu_start))

    units = [["fixed"], ["cold", "warm"], ["disk"], ["scipy"]]
    for position in range(rounds):
        turn = position % len(units)
        for unit in units[turn:] + units[:turn]:
            for name in unit:
                run(name)
    out = {name: {"median_s": statistics.median(t for t, _ in runs),
                  "median_cpu_s": statistics.median(c for _, c in runs),
                  "min_s": min(t for t, _ in runs)}
           for name, runs in times.items()}
    table = found["warm"].features.set_index("feature")
    pvalues = found["scipy"]
    significant = table["significant"].astype(bool).to_dict()
    agree = sum(significant[f] == (pvalues[f] < SCIPY_ALPHA) for f in pvalues)
    expected = {f"f{i}": i in SHIFTED for i in range(N_FEATURES)}
    verdicts = {name: found[name].features.set_index("feature")["drifted"].astype(bool)
                .to_dict() for name in ("fixed", "cold", "warm", "disk")}
    verdicts["scipy"] = {f: p < SCIPY_ALPHA for f, p in pvalues.items()}

    def truth(drifted: dict) -> str:
        return f"{sum(drifted[f] == expected[f] for f in expected)}/{len(expected)}"

    # A deployment whose day sizes vary: 30 days of 100 to 1,500 rows (the grid of day
    # sizes and the bridge serve them all), each a new process reading the warmed cache.
    rng = np.random.default_rng(SEED)
    varying = {"misses": 0, "cpu_calibrated": [], "cpu_fixed": []}
    for size in rng.integers(100, 1_501, 30).tolist():
        day = current.iloc[rng.integers(0, len(current), size)]
        nulls.NULL_CACHE.clear()
        nulls._KS_CRITICAL.clear()
        cache = nulls.NullCache(directory=stored)
        cpu_start = time.process_time()
        score_drift(ReferenceProfile.from_bytes(blob), day, calibrated, cache=cache)
        varying["cpu_calibrated"].append(time.process_time() - cpu_start)
        cpu_start = time.process_time()
        score_drift(ReferenceProfile.from_bytes(blob), day, fixed)
        varying["cpu_fixed"].append(time.process_time() - cpu_start)
        varying["misses"] += cache.misses
    varying_summary = {"days": 30, "nulls_drawn": varying["misses"],
                       "median_cpu_calibrated_s": statistics.median(varying["cpu_calibrated"]),
                       "median_cpu_fixed_s": statistics.median(varying["cpu_fixed"])}

    return {"seconds": out["cold"]["median_s"], "cpu_seconds": out["cold"]["median_cpu_s"],
            "loaded_gib": loaded, "ab": out, "rounds": rounds,
            "warm_at_training": {"nulls_drawn": drawn, "cpu_s": warm_cpu},
            "varying_day_sizes": varying_summary,
            "ks_significant_agree_with_scipy": f"{agree}/{len(pvalues)}",
            "max_abs_diff_pvalue_vs_scipy": max(abs(float(table.loc[f, "p_value"])
                                                    - pvalues[f]) for f in pvalues),
            "verdicts_match_truth": {name: truth(v) for name, v in verdicts.items()}}


def scipy_pvalues(reference, current) -> dict[str, float]:
    from scipy import stats

    return {name: float(stats.ks_2samp(reference[name].to_numpy(),
                                       current[name].to_numpy()).pvalue)
            for name in reference.columns}


def child_scipy(data: Path) -> dict:
    reference = load_frame(data / "reference.npy")
    current = load_frame(data / "current.npy")
    loaded = peak_rss_gib()
    start, cpu_start = time.perf_counter(), time.process_time()
    pvalues = scipy_pvalues(reference, current)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu, "loaded_gib": loaded,
            "drifted": {name: p < SCIPY_ALPHA for name, p in pvalues.items()},
            "scores": pvalues, "tests": ["ks_2samp"]}


def child_evidently(data: Path) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = load_frame(data / "reference.npy")
    current = load_frame(data / "current.npy")
    loaded = peak_rss_gib()
    start, cpu_start = time.perf_counter(), time.process_time()
    definition = DataDefinition(numerical_columns=list(reference.columns))
    # include_tests=True adds the per-column pass/fail (drift) flags to the snapshot.
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = snapshot.dict()
    scores, methods, drifted = {}, set(), {}
    for metric in result["metrics"]:
        params = metric["config"]
        if params.get("type", "").endswith("ValueDrift"):
            scores[params["column"]] = float(metric["value"])
            methods.add(params["method"])
    for test in result["tests"]:
        params = test["metric_config"]["params"]
        if params.get("type", "").endswith("ValueDrift"):
            drifted[params["column"]] = test["status"] == "FAIL"
    return {"seconds": seconds, "cpu_seconds": cpu, "loaded_gib": loaded, "drifted": drifted,
            "scores": scores, "tests": sorted(methods)}


CHILDREN = {
    "build": lambda data: child_build(data, exact=False),
    "build_exact": lambda data: child_build(data, exact=True),
    "library": lambda data: child_library(data, "library"),
    "library_warm": lambda data: child_library(data, "library_warm"),
    "library_fixed": lambda data: child_library(data, "library_fixed"),
    "library_ks": lambda data: child_library(data, "library_ks"),
    "scipy": child_scipy,
    "ab": lambda data: child_ab(data, int(os.environ.get("BENCH_DRIFT_ROUNDS", "11"))),
    "evidently": child_evidently,
}
LABELS = {
    "build": "profile build (training time)", "build_exact": "exact profile build",
    "library": "library: calibrated, first day of its size",
    "library_warm": "library: calibrated, second day (cache hit)",
    "library_fixed": "library: fixed thresholds (former default)",
    "library_ks": "library: KS vs exact profile",
    "scipy": "scipy ks_2samp loop", "evidently": "Evidently DataDriftPreset",
}


def run_child(variant: str, data: Path, python: str) -> dict:
    env = {**os.environ, "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([python, __file__, "--child", variant, str(data)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"    {variant:<13} {result['seconds']:8.3f} s  cpu {result['cpu_seconds']:8.3f} s  "
          f"peak {result['peak_gib']:.2f} GiB", flush=True)
    return result


# -- the run ----------------------------------------------------------------------------

ALL_VARIANTS = ("build", "build_exact", "library", "library_warm", "library_fixed",
                "library_ks", "scipy")


def scenario(rows: int, repeats: int, evidently_repeats: int,
             evidently_python: str | None, variants: tuple[str, ...] = ALL_VARIANTS,
             ab: bool = False, integers: bool = False) -> dict:
    print(f"\n== {rows:,} rows x {N_FEATURES} numeric features", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_drift_") as tmp:
        data = Path(tmp)
        make_data(rows, data, integers)
        runs: dict[str, list[dict]] = {name: [] for name in CHILDREN}
        for repeat in range(repeats):
            print(f"  repeat {repeat + 1}/{repeats}", flush=True)
            for variant in ("build", "build_exact", *[v for v in variants
                                                      if not v.startswith("build")]):
                if variant in variants or variant == "build" or (
                        variant == "build_exact" and "library_ks" in variants):
                    runs[variant].append(run_child(variant, data, sys.executable))
            if evidently_python and repeat < evidently_repeats:
                runs["evidently"].append(run_child("evidently", data, evidently_python))
        if ab:
            ab_full = run_child("ab", data, sys.executable)
            ab_run = ab_full["ab"]
            print(f"  in one process, medians of {ab_full['rounds']} interleaved rounds: "
                  + json.dumps({k: v for k, v in ab_full.items()
                                if k not in ("seconds", "cpu_seconds", "loaded_gib",
                                             "peak_gib")}), flush=True)
            return {"rows": rows, "runs": {k: v for k, v in runs.items() if v}, "ab": ab_run,
                    "ab_details": ab_full}
    return {"rows": rows, "runs": {k: v for k, v in runs.items() if v}}


def summarize(result: dict) -> dict:
    runs = result["runs"]
    summary = {name: {"median_s": statistics.median(r["seconds"] for r in rs),
                      "min_s": min(r["seconds"] for r in rs),
                      "median_cpu_s": statistics.median(r.get("cpu_seconds", math.nan)
                                                        for r in rs),
                      "peak_gib": max(r["peak_gib"] for r in rs),
                      "loaded_gib": max(r["loaded_gib"] for r in rs), "n": len(rs)}
               for name, rs in runs.items()}
    summary["profile_mib"] = runs["build"][0]["profile_mib"]
    if "build_exact" in runs:
        summary["exact_profile_mib"] = runs["build_exact"][0]["profile_mib"]
    summary["agreement"] = agreement(runs)
    return summary


def agreement(runs: dict) -> dict:
    """Per-feature verdict agreement (first repeat of each; all are deterministic)."""
    expected = {f"f{i}": i in SHIFTED for i in range(N_FEATURES)}
    verdicts = {name: rs[0]["drifted"] for name, rs in runs.items() if "drifted" in rs[0]}
    out: dict = {"truth": {name: sum(v[f] == expected[f] for f in expected)
                           for name, v in verdicts.items()}}
    pairs = [("library", "evidently"), ("library", "scipy"), ("library_fixed", "scipy"),
             ("library_ks", "scipy"), ("library", "library_warm"),
             ("library", "library_fixed")]
    for left, right in pairs:
        if left in verdicts and right in verdicts:
            differ = [f for f in expected if verdicts[left][f] != verdicts[right][f]]
            out[f"{left}~{right}"] = {"agree": len(expected) - len(differ), "differ": differ}
    if "library" in runs and "scipy" in runs:
        ours, theirs = runs["library"][0], runs["scipy"][0]["scores"]
        out["library_significant~scipy_p<0.01"] = sum(
            ours["significant"][f] == (theirs[f] < SCIPY_ALPHA) for f in expected)
        out["max_abs_diff_pvalue_library_vs_scipy"] = max(
            abs(ours["p_values"][f] - theirs[f]) for f in expected)
        out["library_dataset_drifted"] = ours["dataset_drifted"]
    if "evidently" in runs and "library" in runs:
        ours, theirs = runs["library"][0]["effects"], runs["evidently"][0]["scores"]
        out["max_abs_diff_wasserstein_vs_evidently"] = max(abs(ours[f] - theirs[f])
                                                           for f in expected)
    if "library_ks" in runs and "scipy" in runs:
        ks, sp = runs["library_ks"][0]["scores"], runs["scipy"][0]["scores"]
        out["max_abs_diff_pvalue_vs_scipy"] = max(abs(ks[f] - sp[f]) for f in expected)
    if "scipy" in runs:
        sp = runs["scipy"][0]["scores"]
        out["scipy_pvalues_unshifted"] = {f: sp[f] for f in expected if not expected[f]}
    return out


def table(summaries: dict[int, dict]) -> str:
    lines = ["| rows | variant | median s | min s | median CPU s | runs | peak RSS GiB "
             "| data loaded GiB | Evidently / this | scipy loop / this | this / fixed "
             "| CPU: this / fixed |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rows, summary in summaries.items():
        evidently = summary.get("evidently", {}).get("median_s")
        scipy_s = summary.get("scipy", {}).get("median_s")
        fixed_s = summary.get("library_fixed", {}).get("median_s")
        fixed_cpu = summary.get("library_fixed", {}).get("median_cpu_s")
        for name in (*ALL_VARIANTS, "evidently"):
            if name not in summary:
                continue
            s = summary[name]
            scoring = not name.startswith("build")  # a build is a one-off at training time
            vs_ev = _ratio(evidently, s["median_s"]) if scoring and evidently else "n/a"
            vs_sp = _ratio(scipy_s, s["median_s"]) if scoring and scipy_s else "n/a"
            library = name.startswith("library")
            vs_fixed = f"{s['median_s'] / fixed_s:.2f}" if fixed_s and library else "n/a"
            cpu_fixed = (f"{s['median_cpu_s'] / fixed_cpu:.2f}" if fixed_cpu and library
                         else "n/a")
            lines.append(f"| {rows:,} | {LABELS[name]} | {s['median_s']:.3f} | {s['min_s']:.3f} "
                         f"| {s['median_cpu_s']:.3f} | {s['n']} | {s['peak_gib']:.2f} "
                         f"| {s['loaded_gib']:.2f} | {vs_ev} | {vs_sp} | {vs_fixed} "
                         f"| {cpu_fixed} |")
    return "\n".join(lines)


def _ratio(slow: float, fast: float) -> str:
    ratio = slow / fast
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.3f}x"


def environment() -> dict:
    import numpy as np
    import pandas as pd
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__,
            "pandas": pd.__version__, "scipy": scipy.__version__, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats of the library / scipy variants per size")
    parser.add_argument("--evidently-repeats", type=int, nargs="+", default=[3, 2],
                        help="Evidently repeats per size (last value reused)")
    parser.add_argument("--evidently-python", default=DEFAULT_EVIDENTLY_PYTHON,
                        help="python of the venv that has evidently installed")
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=ALL_VARIANTS,
                        help="which variants to run (build always runs: it writes the "
                             "profile)")
    parser.add_argument("--json-out", type=Path, help="also write all raw results here")
    parser.add_argument("--ab", action="store_true",
                        help="also time fixed / calibrated first day / second day / scipy "
                             "loop in interleaved rounds within one process, per size")
    parser.add_argument("--rounds", type=int, default=11,
                        help="rounds of --ab (default 11)")
    parser.add_argument("--integers", action="store_true",
                        help="integer columns (ties: resampled nulls) instead of continuous "
                             "ones")
    args = parser.parse_args()

    if args.child:
        variant, data = args.child
        result = CHILDREN[variant](Path(data))
        result["peak_gib"] = peak_rss_gib()
        print(json.dumps(result))
        return

    os.environ["BENCH_DRIFT_ROUNDS"] = str(args.rounds)  # read by the --ab child
    env = environment()
    print(json.dumps(env))
    if env["OPENBLAS_CORETYPE"]:
        print(f"note: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} is set (it can slow numpy)")
    evidently_python = None if args.no_evidently else args.evidently_python
    if evidently_python and not Path(evidently_python).exists():
        print(f"note: {evidently_python} not found: Evidently skipped. Create it with\n"
              "  python3 -m venv /tmp/evidently-venv && "
              "/tmp/evidently-venv/bin/pip install evidently 'pandas<3'")
        evidently_python = None

    results, summaries = [], {}
    for position, rows in enumerate(args.rows):
        ev_repeats = args.evidently_repeats[min(position, len(args.evidently_repeats) - 1)]
        result = scenario(rows, args.repeats, ev_repeats, evidently_python,
                          tuple(args.variants), args.ab, args.integers)
        results.append(result)
        summaries[rows] = summarize(result)
        print(json.dumps({k: v for k, v in summaries[rows].items()
                          if k in ("profile_mib", "exact_profile_mib", "agreement")},
                         indent=1), flush=True)
    print("\n" + table(summaries))
    for result in results:
        if "ab" in result:
            ab = result["ab"]
            print(f"\nIn one process, {result['rows']:,} rows, medians of "
                  f"{result['ab_details']['rounds']} interleaved rounds:\n"
                  "| scoring | median s | min s | median CPU s | wall / fixed | CPU / fixed "
                  "| scipy loop / this |\n|---|---:|---:|---:|---:|---:|---:|")
            for name, label in (("fixed", "fixed thresholds (former default)"),
                                ("cold", "calibrated, first day of its size"),
                                ("warm", "calibrated, second day (cache hit)"),
                                ("disk", "calibrated, first run after training "
                                 "(warmed nulls from disk)"),
                                ("scipy", "scipy ks_2samp loop")):
                print(f"| {label} | {ab[name]['median_s']:.3f} | {ab[name]['min_s']:.3f} "
                      f"| {ab[name]['median_cpu_s']:.3f} "
                      f"| {ab[name]['median_s'] / ab['fixed']['median_s']:.2f} "
                      f"| {ab[name]['median_cpu_s'] / ab['fixed']['median_cpu_s']:.2f} "
                      f"| {ab['scipy']['median_s'] / ab[name]['median_s']:.1f}x |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"environment": env, "results": results,
                                             "summaries": summaries}, indent=1))


if __name__ == "__main__":
    main()
