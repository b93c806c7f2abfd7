"""The prediction log writer's CPU per row, before and after a change: one group commit
(`SQLitePredictionLog._write`: the columnar encoding, the batch and its request-id index
rows inserted, COMMIT) of commits shaped like the service's, timed in CPU seconds of
the writing thread, for this checkout and a baseline checkout, rounds interleaved.

    python benchmarks/prediction_log_writer.py [--baseline-tree DIR] [--rounds 7]
                                               [--seconds 1.0] [--tmpdir /dev/shm]

Commits: 1 one-row request (a lone request), 8 and 32 one-row requests (what the writer
takes at once at c=8 and c=32), and one 1,000-row request; rows of the breast-cancer
shape (30 float features, two classes) with distinct request ids. Each tree runs in a
worker process of its own (importing that tree's `ml_assets`); the parent alternates
the workers round by round (the order flips every round) and prints, per commit shape,
the median over rounds of the CPU microseconds per row (encoding alone, and the whole
write) and the before/after ratio of the same run. SQLite file under `--tmpdir`, WAL,
synchronous=FULL (on /dev/shm the fsync costs little, so the figures are the CPU's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"1 request x 1 row": (1, 1), "8 requests x 1 row": (8, 1),
          "32 requests x 1 row": (32, 1), "1 request x 1,000 rows": (1, 1000)}
FEATURES = tuple(f"mean feature {i:02d}" for i in range(30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", type=Path, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="CPU seconds per shape and round")
    parser.add_argument("--tmpdir", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.seconds)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds and --seconds must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="log_writer_", dir=args.tmpdir))
    trees = {"after": REPO}
    if args.baseline_tree:
        trees["before"] = args.baseline_tree.resolve()
    workers = {}
    try:
        for label, tree in trees.items():
            (workdir / label).mkdir()
            workers[label] = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker",
                 str(workdir / label), "--seconds", str(args.seconds)],
                cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        results: dict[str, list[dict]] = {label: [] for label in trees}
        order = list(trees)
        for round_ in range(args.rounds):
            for label in order:
                proc = workers[label]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("round\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit(f"the {label} worker died")
                results[label].append(json.loads(line))
            print(f"round {round_ + 1}/{args.rounds} done, load average "
                  f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
            order.reverse()
        print_table(results)
    finally:
        for proc in workers.values():
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_table(results: dict[str, list[dict]]) -> None:
    labels = list(results)
    print(f"| commit | part | {' | '.join(f'{x} (us CPU/row)' for x in labels)} |"
          + (" before / after |" if len(labels) == 2 else ""))
    print("|---|---|" + "---:|" * (len(labels) + (len(labels) == 2)))
    for shape in SHAPES:
        for part in ("encode", "write"):
            medians = [statistics.median(r[shape][part] for r in results[x]) for x in labels]
            ratio = f" {medians[1] / medians[0]:.2f}x |" if len(labels) == 2 else ""
            cells = " | ".join(f"{m:.1f}" for m in medians)
            print(f"| {shape} | {part} | {cells} |{ratio}")


def worker(directory: Path, seconds: float) -> int:
    """Answer "round" lines on stdin with one JSON line of figures."""
    from datetime import datetime, timezone

    from ml_assets.core.prediction_log import PredictionRecord, SQLitePredictionLog, columnar

    log = SQLitePredictionLog(directory / "log.db", synchronous="FULL")
    counter = 0

    def commit(requests: int, rows: int) -> list:
        nonlocal counter
        now = datetime.now(timezone.utc)
        records = []
        for _ in range(requests):
            counter += 1
            request_id = f"{counter:032x}"
            records += [PredictionRecord(now, request_id, i, "model", "1", FEATURES,
                                         [0.5 + j + (counter % 97) / 7 for j in range(30)],
                                         "benign", {"benign": 0.25, "malignant": 0.75},
                                         "", "champion", 0.12)
                        for i in range(rows)]
        return records

    def per_row(fn, requests: int, rows: int) -> float:
        """CPU microseconds per row of `fn(records)` over about `seconds` CPU seconds."""
        spent = done = 0.0
        for _ in range(100_000):  # bounded; stops on time first
            records = commit(requests, rows)
            started = time.thread_time()
            fn(records)
            spent += time.thread_time() - started
            done += len(records)
            if spent >= seconds:
                break
        return spent / done * 1e6

    try:
        for line in sys.stdin:
            if line.strip() != "round":
                continue
            figures = {shape: {"encode": per_row(columnar.encode, *dims),
                               "write": per_row(log._write, *dims)}
                       for shape, dims in SHAPES.items()}
            print(json.dumps(figures), flush=True)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
