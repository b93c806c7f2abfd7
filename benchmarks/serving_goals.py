"""Issue 23's serving goals, read off one run of benchmarks/bench_serving.py (every
figure a median of the same interleaved rounds): PASS or MISS per goal, with the
figures and, for a miss, how far off it is.

For the service with 1 worker on the default settings (compiled runtime, durable log):
- one row at c=32: at least 40% of the FastAPI-constant floor's req/s and at least 5x
  MLServer's best (over the batching settings tried);
- one row at c=1: p50 at most 0.35 ms;
- the compiled runtime at least as fast (req/s) as the scikit-learn runtime at every
  load measured;
- 1,000-row batches at c=4, on every wire format: rows/s at least 1.5x MLServer's best,
  with p99 no worse than that MLServer setting's.
"""

from __future__ import annotations

ONNX, SKLEARN = "service onnx, 1 worker", "service sklearn, 1 worker"
FLOOR = "FastAPI route returning a constant"
PEER = "MLServer"


def _best_peer(results: dict, case_prefix: str) -> tuple[str, dict] | None:
    """MLServer's best (highest req/s) cell among cases starting with `case_prefix`."""
    cells = [(f"{server} {case.split(', ')[-1]}" if case.count(",") > 1 else server, r)
             for (case, server), r in results.items()
             if server.startswith(PEER) and case.startswith(case_prefix)]
    return max(cells, key=lambda cell: cell[1]["rps"]) if cells else None


def goals(results: dict, suffix: str = "") -> list[tuple[str, str, str, str]]:
    """(goal, measured, target, PASS/MISS/n.a.) for the service (`suffix`: a baseline's)."""
    onnx, sklearn = ONNX + suffix, SKLEARN + suffix
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    ours = results.get(("1 row, c=32", onnx))
    floor = results.get(("1 row, c=32", FLOOR))
    peer = _best_peer(results, "1 row, c=32")
    if ours and floor:
        share = ours["rps"] / floor["rps"]
        rows.append(("1 row, c=32: >= 40% of the FastAPI-constant floor",
                     f"{ours['rps']:,.0f} / {floor['rps']:,.0f} req/s = {share:.0%}",
                     ">= 40%", verdict(share >= 0.40)))
    if ours and peer:
        ratio = ours["rps"] / peer[1]["rps"]
        rows.append(("1 row, c=32: >= 5x MLServer's best",
                     f"{ours['rps']:,.0f} / {peer[1]['rps']:,.0f} req/s ({peer[0]}) = "
                     f"{ratio:.2f}x", ">= 5x", verdict(ratio >= 5)))
    one = results.get(("1 row, c=1", onnx))
    if one:
        rows.append(("1 row, c=1: p50 <= 0.35 ms", f"p50 {one['p50_ms']:.3f} ms "
                     f"({one['p50_ms'] / 0.35:.2f}x the goal)", "<= 0.35 ms",
                     verdict(one["p50_ms"] <= 0.35)))
    for (case, server), r in results.items():
        if server != onnx or (case, sklearn) not in results:
            continue
        sk = results[(case, sklearn)]
        ratio = r["rps"] / sk["rps"]
        rows.append((f"{case}: compiled >= scikit-learn runtime",
                     f"{r['rps']:,.1f} / {sk['rps']:,.1f} req/s = {ratio:.2f}x", ">= 1.00x",
                     verdict(ratio >= 1)))
    peer = _best_peer(results, "1,000 rows, c=4")
    for (case, server), r in results.items():
        if server != onnx or not case.startswith("1,000 rows, c=4"):
            continue
        if peer is None:
            rows.append((f"{case}: >= 1.5x MLServer's best, p99 no worse", "no MLServer "
                         "figure in this run", ">= 1.5x", "n.a."))
            continue
        ratio = r["rps"] / peer[1]["rps"]
        p99_ok = r["p99_ms"] <= peer[1]["p99_ms"]
        rows.append((f"{case}: >= 1.5x MLServer's best, p99 no worse",
                     f"{r['rps'] * 1000:,.0f} / {peer[1]['rps'] * 1000:,.0f} rows/s "
                     f"({peer[0]}) = {ratio:.2f}x; p99 {r['p99_ms']:.1f} vs "
                     f"{peer[1]['p99_ms']:.1f} ms", ">= 1.5x, p99 <=",
                     verdict(ratio >= 1.5 and p99_ok)))
    return rows


def print_goals(results: dict, suffixes: tuple[str, ...] = ("",)) -> dict:
    """The goals table (Markdown) per tree; returns {suffix: rows} for the JSON."""
    table = {}
    for suffix in suffixes:
        rows = goals(results, suffix)
        if not rows:
            continue
        table[suffix or "this tree"] = rows
        print(f"\n## Issue 23 goals: {ONNX + suffix} (default settings, durable log)\n")
        print("| goal | measured (medians, same run) | target | verdict |")
        print("|---|---|---|---|")
        for goal, measured, target, verdict in rows:
            print(f"| {goal} | {measured} | {target} | **{verdict}** |")
    return table
