"""A day's drift window judged from its days' merged sketches: a day's rows are read only
when it has no usable sketch, when a sketch verdict could differ from the rows' one, or
for the fixed thresholds (which need the rows)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from ml_assets.core.drift.check import CheckSettings, judged_answers
from ml_assets.core.drift.config import DriftConfig
from ml_assets.core.drift.nulls import NullCache
from ml_assets.core.drift.pooling import Window, plan_day, score_window
from ml_assets.core.drift.profile import ReferenceProfile
from ml_assets.core.drift.scoring import DriftReport
from ml_assets.core.drift.sketch import DriftSketch, merge_sketches
from ml_assets.core.drift.sketch_scoring import uncertain_columns
from ml_assets.core.drift.sketch_store import SketchBasis, read_sketch


@dataclass(eq=False)
class WindowDay:
    """One calendar day of a window: its rows (None: not recorded, count them by
    loading), its usable sketch file (None: there is none on this profile and model
    version), how to load its rows (None for a day without data), and how to sketch it
    without loading it whole (`build`: a day that kept rows in place, in batch parts or
    in the prediction log)."""

    day: str
    rows: int | None
    sketch: str | None
    load: Callable[[], pd.DataFrame | None]
    build: Callable[[SketchBasis], DriftSketch] | None = None


@dataclass(frozen=True, eq=False)
class JudgedWindow:
    """The window's report, how it was judged ('sketches' or 'rows'), the days whose
    rows were read, the rows whose outputs were judged and the day's own rows."""

    report: DriftReport
    window: Window
    source: str
    loaded: tuple[str, ...]
    prediction_rows: int
    day_rows: int


class _Days:
    """The window's days, each loaded at most once."""

    def __init__(self, days: Sequence[WindowDay]) -> None:
        self.days = {d.day: d for d in days}
        self.frames: dict[str, pd.DataFrame] = {}

    def frame(self, day: str) -> pd.DataFrame:
        if day not in self.frames:
            frame = self.days[day].load()
            self.frames[day] = frame if frame is not None else pd.DataFrame()
        return self.frames[day]

    def rows(self, day: WindowDay) -> int:
        return day.rows if day.rows is not None else len(self.frame(day.day))


def judge_window(profile: ReferenceProfile, days: Sequence[WindowDay],
                 settings: CheckSettings, config: DriftConfig, version: str | None,
                 cache: NullCache) -> JudgedWindow:
    """The last of `days` (calendar days, oldest first) judged as `pool_day` and
    `score_window` judge it on the rows, with the same verdicts: the window is planned
    from the days' row counts, then judged from the merge of its days' sketches (a day
    without one is loaded and sketched). Read from the rows instead: the fixed
    thresholds, a window none of whose days has a sketch, and a window where a sketch
    verdict could differ (`uncertain_columns`: a Wasserstein effect within its error of
    its threshold), and PSI bins other than the profile's."""
    store = _Days(days)
    counts = [(d.day, store.rows(d)) for d in days]
    window = plan_day(counts, settings.min_rows, settings.max_pooled_days)
    day_rows = counts[-1][1]
    if window.status in ("empty", "insufficient"):
        report = score_window(profile, window, config, cache=cache)
        return JudgedWindow(report, window, "rows", tuple(store.frames), 0, day_rows)
    chosen = [store.days[d] for d in window.days]
    # day sketches hold the profile's own PSI bins (`SketchBasis.sketch`)
    sketchable = config.calibrated and config.psi_bins == profile.psi_bins
    if sketchable and any(d.sketch or d.build for d in chosen):
        sketch = merge_sketches(_sketch(d, store, profile, version) for d in chosen)
        report = score_window(profile, window, config, cache=cache, sketch=sketch)
        if not uncertain_columns(report):
            return JudgedWindow(report, window, "sketches", tuple(store.frames),
                                sketch.n_prediction_rows, day_rows)
    parts = [store.frame(d.day) for d in chosen]
    frame = pd.concat([f for f in parts if len(f)], ignore_index=True) if any(
        len(f) for f in parts) else pd.DataFrame()
    window = dataclasses.replace(window, frame=frame)
    report = score_window(profile, window, config,
                          lambda rows: judged_answers(rows, version), cache=cache)
    return JudgedWindow(report, window, "rows", tuple(store.frames),
                        len(judged_answers(frame, version)), day_rows)


def _sketch(day: WindowDay, store: _Days, profile: ReferenceProfile,
            version: str | None) -> DriftSketch:
    if day.sketch is not None:
        return read_sketch(day.sketch)
    if day.build is not None:
        return day.build(SketchBasis(profile, version))
    return SketchBasis(profile, version).sketch(store.frame(day.day))
