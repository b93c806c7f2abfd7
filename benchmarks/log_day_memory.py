"""What monitoring a prediction-log day costs in memory: a day of API traffic written to
the SQLite prediction log as the service writes it (commits of 5,000 rows, 30 float
features, a classifier's probabilities), then read the two ways `production_data` reads
a log day, each in a fresh process whose peak RSS (VmHWM) is measured:

- `whole`: the day read into one frame (`read_day`), scoped, shaped and sketched at once
  (a day of at most ML_LOG_ROWS_IN_MEMORY rows);
- `segments`: read a segment of 65,536 rows at a time up to the day's mark, each scoped,
  shaped and sketched, then dropped (`LogDay.read_segments`: a day above the limit).

Both give the drift and score sketches production_data writes; the drift verdicts judged
from them (`score_sketch`) and the score sketches' cells are compared.

    python benchmarks/log_day_memory.py                       # 250k and 1M rows
    python benchmarks/log_day_memory.py --rows 500000,2000000

Reported per size and mode: peak RSS, the process's baseline before reading (imports),
seconds; the per-million-row slope of each says what a larger day would need.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = "2026-11-20"
FEATURES = 30
MODEL = "bench_log"


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _frame(rows: int, seed: int, shift: float = 0.0):
    from ml_assets.core.data.datasets import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(n_rows=rows, n_numeric=FEATURES, seed=seed, shift=shift)
    return make_synthetic(spec)[spec.numeric_columns]


def write_day(root: Path, rows: int) -> None:
    """The reference profile (features of 20,000 rows) and the log day: rows answered by
    a fixed logistic score, the second half shifted, in commits of 5,000 rows."""
    import datetime as dt

    import numpy as np

    from ml_assets.core.drift.profile import build_reference_profile
    from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog

    reference = _frame(20_000, seed=0)
    profile = build_reference_profile(reference, dict.fromkeys(reference.columns, "numeric"))
    (root / "profile.npz").write_bytes(profile.to_bytes())
    stamp = dt.datetime.fromisoformat(DAY).replace(hour=6, tzinfo=dt.timezone.utc)
    weights = np.linspace(-1, 1, FEATURES)
    with SQLitePredictionLog(root / "log.db", synchronous="NORMAL") as log:
        for start in range(0, rows, 100_000):
            chunk = _frame(min(100_000, rows - start), seed=1 + start // 100_000,
                           shift=0.2 if start >= rows / 2 else 0.0)
            names = list(chunk.columns)
            values = chunk.to_numpy(dtype=float)
            p = 1 / (1 + np.exp(-(np.nan_to_num(values) @ weights) / 4))
            records = [PredictionRecord(
                stamp + dt.timedelta(milliseconds=start + i), f"q{start + i}", 0, MODEL, "1",
                names, values[i].tolist(), "yes" if p[i] >= 0.5 else "no",
                {"no": float(1 - p[i]), "yes": float(p[i])}) for i in range(len(values))]
            for first in range(0, len(records), 5_000):
                log.append_many(records[first:first + 5_000])
            assert log.flush(timeout=600)


def _read(root: str, mode: str, queue) -> None:
    """production_data's read of the log day, in this fresh process."""
    from ml_assets.core.data.logged_rows import LogDay, answered_rows, logged_frame
    from ml_assets.core.data.production_rows import Lineage, scope_rows
    from ml_assets.core.drift.profile import ReferenceProfile
    from ml_assets.core.drift.sketch_scoring import score_sketch
    from ml_assets.core.drift.sketch_store import SketchBasis
    from ml_assets.core.estimation.day_scores import sketch_rows
    from ml_assets.core.prediction_log import SQLitePredictionLog

    profile = ReferenceProfile.from_bytes((Path(root) / "profile.npz").read_bytes())
    basis = SketchBasis(profile, "1")
    lineage = Lineage(MODEL, "synthetic", frozenset({"1"}))
    log = SQLitePredictionLog(Path(root) / "log.db", read_only=True)
    baseline = _peak_mib()
    started = time.perf_counter()
    if mode == "whole":
        kept = scope_rows(answered_rows(log.read_day(DAY)), lineage).rows
        frame = logged_frame(kept)
        drift, scores, rows = basis.sketch(frame), sketch_rows(frame), len(frame)
    else:
        mark = log.day_mark(DAY)
        day = LogDay.read_segments(log.read_segments(DAY, mark.through), lineage,
                                   basis.sketch)
        drift, scores, rows = day.drift, day.scores, day.kept
    seconds = time.perf_counter() - started
    report = score_sketch(profile, drift)
    (sketch,) = scores.versions.values()
    queue.put({"rows": rows, "peak_mib": round(_peak_mib(), 1),
               "baseline_mib": round(baseline, 1), "seconds": round(seconds, 2),
               "drifted": sorted(report.drifted_features),
               "dataset_drifted": bool(report.dataset_drifted),
               "dataset_p_value": float(report.dataset_p_value),
               "score_cells": sketch.keys.tolist(), "score_counts": sketch.counts.tolist()})


def _child(root: Path, mode: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_read, args=(str(root), mode, queue))
    process.start()
    answer = queue.get(timeout=3600)
    process.join()
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="250000,1000000")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="log_day_memory_") as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            write_day(root, rows)
            print(f"{rows:,} rows written in {time.perf_counter() - started:.0f} s",
                  flush=True)
            answers = {mode: _child(root, mode) for mode in ("segments", "whole")}
        whole, segments = answers["whole"], answers["segments"]
        same = all(whole[k] == segments[k] for k in (
            "rows", "drifted", "dataset_drifted", "score_cells", "score_counts")) and abs(
            whole["dataset_p_value"] - segments["dataset_p_value"]) < 1e-9
        for mode, answer in answers.items():
            print(f"{rows:>10,} {mode:<9} peak {answer['peak_mib']:>7.1f} MiB "
                  f"(baseline {answer['baseline_mib']:.1f})  {answer['seconds']:>6.2f} s",
                  flush=True)
        print(f"{'':>10} verdicts and score cells equal: {same}", flush=True)
        results.append({"rows": rows, "same": same, **{
            mode: {k: v for k, v in a.items() if not k.startswith("score_")}
            for mode, a in answers.items()}})
    if len(results) > 1:
        first, last = results[0], results[-1]
        millions = (last["rows"] - first["rows"]) / 1e6
        for mode in ("segments", "whole"):
            slope = (last[mode]["peak_mib"] - first[mode]["peak_mib"]) / millions
            print(f"{mode:<9} {slope:7.1f} MiB per million rows", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
