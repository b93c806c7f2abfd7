"""Quiet days pooled with the preceding ones until the window is large enough to judge."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ml_assets.core.drift.config import (
    DEFAULT_MAX_POOLED_DAYS,
    DEFAULT_MIN_ROWS,
    DriftConfig,
    _require,
)
from ml_assets.core.drift.nulls import NullCache
from ml_assets.core.drift.profile import (
    ReferenceProfile,
)
from ml_assets.core.drift.scoring import DriftReport, score_drift
from ml_assets.core.drift.sketch import DriftSketch
from ml_assets.core.drift.sketch_scoring import score_sketch

# -- quiet days: pooling ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Window:
    """What one day is judged on: the day itself, or the day pooled with the days just
    before it (`days`, oldest first, ending with `day`). status: 'ok' (the day alone has
    min_rows rows), 'pooled' (it needed `pooled_days` preceding days), 'insufficient'
    (still fewer than min_rows rows within max_days days: no verdict) or 'empty' (the
    day has no rows: nothing new to judge)."""

    day: Any
    frame: pd.DataFrame
    days: tuple[Any, ...]
    n_rows: int
    status: str
    min_rows: int

    @property
    def pooled_days(self) -> int:
        return len(self.days) - 1

    @property
    def note(self) -> str:
        if self.status == "empty":
            return f"no rows on {self.day}: no verdict"
        if self.status == "insufficient":
            return (f"not enough data yet: {self.n_rows} rows over {len(self.days)} day(s) "
                    f"(< {self.min_rows}): no verdict")
        if self.status == "pooled":
            earlier = ", ".join(str(d) for d in self.days[:-1])
            return f"pooled with {self.pooled_days} preceding day(s) ({earlier})"
        return ""


def pool_windows(days: Sequence[tuple[Any, pd.DataFrame]], min_rows: int = DEFAULT_MIN_ROWS,
                 max_days: int = DEFAULT_MAX_POOLED_DAYS) -> list[Window]:
    """One window per day (days in time order, as (label, frame) pairs).

    The rule: a day with at least `min_rows` rows is judged alone. A smaller day (but not
    an empty one) is pooled with the days just before it, most recent first, until the
    window holds `min_rows` rows, using at most `max_days` days in all (the day
    included); if even that falls short, the window is 'insufficient' (no verdict yet).
    A pooled window's verdict speaks for the whole window, not the day alone."""
    _require(min_rows >= 1 and max_days >= 1, "min_rows and max_days must be >= 1")
    return [_window(days, position, min_rows, max_days) for position in range(len(days))]


def pool_day(days: Sequence[tuple[Any, pd.DataFrame]], min_rows: int = DEFAULT_MIN_ROWS,
             max_days: int = DEFAULT_MAX_POOLED_DAYS) -> Window:
    """The window of the LAST of `days` (in time order, as (label, frame) pairs; a day
    without data as an empty frame, so that `max_days` counts calendar days): what
    `pool_windows(days, ...)[-1]` gives, without building the other days' windows."""
    _require(min_rows >= 1 and max_days >= 1, "min_rows and max_days must be >= 1")
    _require(len(days) > 0, "pool_day needs at least the day itself")
    return _window(days, len(days) - 1, min_rows, max_days)


def plan_day(days: Sequence[tuple[Any, int]], min_rows: int = DEFAULT_MIN_ROWS,
             max_days: int = DEFAULT_MAX_POOLED_DAYS) -> Window:
    """`pool_day` from the days' row counts alone ((label, rows) pairs, in time order):
    the same days, rows and status, with an empty `frame` (the rows are not read: the
    window is then judged from its days' merged sketches, `score_window(sketch=...)`)."""
    _require(min_rows >= 1 and max_days >= 1, "min_rows and max_days must be >= 1")
    _require(len(days) > 0, "plan_day needs at least the day itself")
    counts = [n for _, n in days]
    first, total, status = _span(counts, len(days) - 1, min_rows, max_days)
    return Window(days[-1][0], pd.DataFrame(), tuple(d for d, _ in days[first:]), total,
                  status, min_rows)


def _span(counts: Sequence[int], position: int, min_rows: int,
          max_days: int) -> tuple[int, int, str]:
    """(first day of the window ending at `position`, its rows, its status): the pooling
    rule on row counts, whether the rows are at hand or only counted."""
    if counts[position] == 0:
        return position, 0, "empty"
    first, total = position, counts[position]
    while total < min_rows and first > 0 and position - first + 1 < max_days:
        first -= 1
        total += counts[first]
    status = ("insufficient" if total < min_rows else
              "ok" if first == position else "pooled")
    return first, total, status


def _window(days: Sequence[tuple[Any, pd.DataFrame]], position: int, min_rows: int,
            max_days: int) -> Window:
    day, frame = days[position]
    first, total, status = _span([len(f) for _, f in days], position, min_rows, max_days)
    chosen = days[first:position + 1]
    pooled = (frame if len(chosen) == 1 else
              pd.concat([f for _, f in chosen if len(f)], ignore_index=True))
    return Window(day, pooled, tuple(d for d, _ in chosen), total, status, min_rows)


def score_window(profile: ReferenceProfile, window: Window,
                 config: DriftConfig | None = None,
                 prediction_rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None, *,
                 cache: NullCache | None = None,
                 sketch: DriftSketch | None = None) -> DriftReport:
    """`score_drift` on a window of `pool_windows`: status 'insufficient' (no verdict,
    per-column rows say so) below min_rows, 'empty' for an empty day; otherwise the
    report of the (pooled) frame, saying which days it covers. `prediction_rows` picks
    the rows whose outputs are judged from the window's frame. `sketch`: the window's
    merged sketch (its days' sketches, `plan_day`'s window), judged by `score_sketch`
    instead of the frame (calibrated verdicts only)."""
    config = config or DriftConfig()
    extra: dict[str, Any] = {"pooled_days": window.pooled_days, "note": window.note,
                             "window_days": [str(d) for d in window.days]}
    if window.status in ("insufficient", "empty"):
        frame = window.frame.iloc[:0]
        report = score_drift(profile, frame, config, cache=cache)
        tables = {}
        for name, table in (("features", report.features),
                            ("predictions", report.predictions)):
            table = table.copy()
            table["status"] = window.status
            tables[name] = table
        return dataclasses.replace(report, **tables, status=window.status,
                                   n_rows=window.n_rows, **extra)
    if sketch is not None:
        _require(sketch.n_rows == window.n_rows, f"the sketch holds {sketch.n_rows} rows, "
                 f"the window {window.n_rows}")
        return dataclasses.replace(score_sketch(profile, sketch, config, cache=cache),
                                   **extra)
    rows = prediction_rows(window.frame) if prediction_rows is not None else None
    report = score_drift(profile, window.frame, config, rows, cache=cache)
    return dataclasses.replace(report, **extra)


