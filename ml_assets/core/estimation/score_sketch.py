"""A mergeable sketch of a classifier's answers: what performance estimation needs from a
day's rows, kept in cells rather than rows, so shards and log segments are sketched
apart, merged, and a day (or a month) is estimated without loading its rows.

A cell is (the answered class, each class's raw probability on a grid of `levels`
steps); it keeps its row count, the sum of its rows' raw probabilities (their mean is
what the calibrator maps) and their per-class minimum and maximum. Merging adds counts
and sums and widens the bounds: exact, and associative up to float addition. When the
cells outgrow `max_cells`, the grid is halved (neighbouring levels pooled) until they
fit; the stated error (`binning_error`) says what that costs.

What binning changes, and how much (`binning_error`):
- the label probabilities: a row is given its cell's calibrated mean probability
  rather than its own. Per cell the change is at most the calibrator's spread across
  the cell's [min, max] box (exact for a binary model, whose maps are monotone; an
  approximation for multiclass, whose rows are renormalised). The row-weighted mean of
  that spread bounds the error of expected accuracy, and enters precision, recall and
  F1 through the same counts.
- ROC AUC: rows of one level whose raw scores differ are ranked as ties (half a pair
  each), so the AUC moves by at most half the share of positive-negative pairs inside
  such levels.
Rows whose raw probabilities are few distinct values (a random forest's are multiples
of 1 / trees) fall in cells of one value each: the sketch is then exact (both errors 0).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

LEVELS = 4096  # grid steps per class's raw probability (a power of two)
MAX_CELLS = 1 << 16  # more cells: the grid is halved until they fit
_FORMAT = 1
_MAX_ROWS = 2.0 ** 53  # a file's counts above this are not rows (float sums lose them)


@dataclass(frozen=True)
class BinningError:
    """What the sketch's cells cost the estimate, at most (module docstring)."""

    label_probability: float  # mean change of a row's label probabilities
    auc_ties: float  # share of positive-negative pairs tied by the grid alone

    @property
    def auc(self) -> float:
        return self.auc_ties / 2

    def to_dict(self) -> dict[str, float]:
        return {"label_probability": self.label_probability, "accuracy": self.label_probability,
                "roc_auc": self.auc}


@dataclass(frozen=True)
class ScoreSketch:
    """Cells of (answered class, raw probability levels): counts, sums, min, max."""

    classes: tuple[str, ...]
    levels: int
    keys: np.ndarray  # (cells, 1 + k) int64: answered class index, level of each class
    counts: np.ndarray  # (cells,) int64
    sums: np.ndarray  # (cells, k) float64, raw probabilities summed
    low: np.ndarray  # (cells, k) float64
    high: np.ndarray  # (cells, k) float64
    max_cells: int = MAX_CELLS

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def cells(self) -> int:
        return int(self.counts.size)

    @property
    def predicted(self) -> np.ndarray:
        return self.keys[:, 0]

    @property
    def means(self) -> np.ndarray:
        return self.sums / self.counts[:, None]

    @classmethod
    def empty(cls, classes, levels: int = LEVELS, max_cells: int = MAX_CELLS) -> ScoreSketch:
        k = len(classes)
        return cls(tuple(str(c) for c in classes), levels, np.zeros((0, 1 + k), np.int64),
                   np.zeros(0, np.int64), np.zeros((0, k)), np.zeros((0, k)),
                   np.zeros((0, k)), max_cells)

    @classmethod
    def from_rows(cls, proba, predicted, classes, *, levels: int = LEVELS,
                  max_cells: int = MAX_CELLS) -> ScoreSketch:
        """The sketch of rows with raw probabilities `proba` (n x classes, each in [0, 1])
        and answered class indices `predicted` (n,)."""
        classes = tuple(str(c) for c in classes)
        _check_grid(levels, max_cells)
        raw = np.asarray(proba, dtype=np.float64)
        k = len(classes)
        if max_cells < k:
            raise ValueError(f"max_cells {max_cells} is below the {k} classes")
        if raw.ndim != 2 or raw.shape[1] != k:
            raise ValueError(f"probabilities of shape {raw.shape} for {k} classes")
        answered = np.asarray(predicted, dtype=np.int64).reshape(-1)
        if answered.size != raw.shape[0]:
            raise ValueError(f"{answered.size} answers for {raw.shape[0]} rows")
        if not raw.shape[0]:
            return cls.empty(classes, levels, max_cells)
        if not 0 <= raw.min() <= raw.max() <= 1:  # NaN fails every comparison
            raise ValueError("probabilities must be finite numbers in [0, 1]")
        if answered.min() < 0 or answered.max() >= k:
            raise ValueError(f"answered class indices must be in [0, {k})")
        keys = np.column_stack([answered, _grid(raw, levels)])
        return _grouped(classes, levels, max_cells, keys, np.ones(len(raw), np.int64),
                        raw, raw, raw)._fitted()

    def merged(self, other: ScoreSketch) -> ScoreSketch:
        """The sketch of both sketches' rows (on the coarser of their grids)."""
        if other.classes != self.classes:
            raise ValueError(f"sketches of classes {list(self.classes)} and "
                             f"{list(other.classes)} do not merge")
        levels = min(self.levels, other.levels)
        a, b = self.coarsened(levels), other.coarsened(levels)
        return _grouped(self.classes, levels, min(self.max_cells, other.max_cells),
                        np.concatenate([a.keys, b.keys]),
                        np.concatenate([a.counts, b.counts]),
                        np.concatenate([a.sums, b.sums]), np.concatenate([a.low, b.low]),
                        np.concatenate([a.high, b.high]))._fitted()

    def coarsened(self, levels: int) -> ScoreSketch:
        """The same rows on a grid of `levels` steps (a power of two, at most this one's)."""
        if levels == self.levels:
            return self
        if levels > self.levels or self.levels % levels:
            raise ValueError(f"a grid of {self.levels} levels cannot become {levels}")
        keys = self.keys.copy()
        keys[:, 1:] //= self.levels // levels
        return _grouped(self.classes, levels, self.max_cells, keys, self.counts, self.sums,
                        self.low, self.high)

    def reordered(self, classes) -> ScoreSketch:
        """The sketch with its class columns in the order of `classes` (the same names)."""
        classes = tuple(str(c) for c in classes)
        if classes == self.classes:
            return self
        if sorted(classes) != sorted(self.classes):
            raise ValueError(f"the sketch's classes {list(self.classes)} are not "
                             f"{list(classes)}")
        order = [self.classes.index(c) for c in classes]
        where = np.argsort(order)  # old index -> new index
        keys = np.column_stack([where[self.keys[:, 0]], self.keys[:, 1:][:, order]])
        return _grouped(classes, self.levels, self.max_cells, keys, self.counts,
                        self.sums[:, order], self.low[:, order], self.high[:, order])

    def binning_error(self, calibrate) -> BinningError:
        """The stated error of estimating from these cells (module docstring), with
        `calibrate` (raw n x k -> calibrated n x k, the point calibration)."""
        if not self.cells:
            return BinningError(0.0, 0.0)
        spread = np.abs(calibrate(self.high) - calibrate(self.low)).max(axis=1)
        label = float((spread * self.counts).sum() / self.n_rows)
        q = calibrate(self.means)
        k = len(self.classes)
        scored = [1] if k == 2 else range(k)
        ties = total = 0.0
        for c in scored:
            positives = self.counts * q[:, c]
            level, inverse = np.unique(self.keys[:, 1 + c], return_inverse=True)
            pos = np.bincount(inverse, positives, len(level))
            rows = np.bincount(inverse, self.counts, len(level))
            lo = np.full(len(level), np.inf)
            hi = np.full(len(level), -np.inf)
            np.minimum.at(lo, inverse, self.low[:, c])
            np.maximum.at(hi, inverse, self.high[:, c])
            neg = rows - pos
            pairs = pos.sum() * neg.sum()
            if pairs <= 0:
                continue
            weight = 1.0 if k == 2 else pos.sum()
            ties += weight * float((pos * neg)[hi > lo].sum() / pairs)
            total += weight
        return BinningError(label, ties / total if total else 0.0)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, format=np.int64(_FORMAT), levels=np.int64(self.levels),
                            max_cells=np.int64(self.max_cells),
                            classes=np.asarray(self.classes, dtype=np.str_), keys=self.keys,
                            counts=self.counts, sums=self.sums, low=self.low, high=self.high)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoreSketch:
        """A sketch written by `to_bytes`, checked field by field (a file is input)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                fields = {name: stored[name] for name in stored.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
            raise ValueError(f"score sketch unreadable: {type(exc).__name__}: {exc}"[:300]
                             ) from None
        return _checked(fields)

    def _fitted(self) -> ScoreSketch:
        sketch = self
        while sketch.cells > sketch.max_cells and sketch.levels > 1:
            sketch = sketch.coarsened(sketch.levels // 2)
        return sketch


def merge_score_sketches(sketches) -> ScoreSketch | None:
    """The merge of `sketches` (None when there are none)."""
    merged = None
    for sketch in sketches:
        merged = sketch if merged is None else merged.merged(sketch)
    return merged


def _grid(raw: np.ndarray, levels: int) -> np.ndarray:
    """The grid level of each raw probability in [0, 1]."""
    return np.minimum((raw * levels).astype(np.int64), levels - 1)


def _check_grid(levels: int, max_cells: int) -> None:
    if levels < 1 or levels & (levels - 1) or levels > 1 << 20:
        raise ValueError(f"levels must be a power of two up to 2**20, not {levels}")
    if max_cells < 1:
        raise ValueError(f"max_cells must be positive, not {max_cells}")


def _grouped(classes, levels, max_cells, keys, counts, sums, low, high) -> ScoreSketch:
    """Rows (or cells) with equal keys pooled into one cell each, cells in key order.
    Grouped by hashing (pandas.factorize, no sort of the rows): a shard step sketches
    each record batch, so this is on the scoring path."""
    import pandas as pd

    keys = np.asarray(keys, dtype=np.int64)
    k = len(classes)
    if not len(keys):
        return ScoreSketch.empty(classes, levels, max_cells)
    widths = [max((k - 1).bit_length(), 1)] + [max((levels - 1).bit_length(), 1)] * k
    if sum(widths) > 62:
        _, ids = np.unique(keys, axis=0, return_inverse=True)
        ids = ids.reshape(-1)
    else:
        ids = pd.factorize(_codes(keys, widths), sort=False)[0]
    cells = int(ids.max()) + 1
    first = np.full(cells, len(ids), np.int64)
    np.minimum.at(first, ids, np.arange(len(ids)))
    pooled_sums = np.empty((cells, k))
    lo = np.full((cells, k), np.inf)
    hi = np.full((cells, k), -np.inf)
    for c in range(k):
        pooled_sums[:, c] = np.bincount(ids, np.asarray(sums[:, c], np.float64), cells)
        column_lo, column_hi = lo[:, c].copy(), hi[:, c].copy()
        np.minimum.at(column_lo, ids, np.asarray(low[:, c], np.float64))
        np.maximum.at(column_hi, ids, np.asarray(high[:, c], np.float64))
        lo[:, c], hi[:, c] = column_lo, column_hi
    unique = keys[first]
    order = np.lexsort(unique.T[::-1])
    return ScoreSketch(tuple(classes), levels, unique[order],
                       np.bincount(ids, np.asarray(counts, np.float64), cells)
                       .round().astype(np.int64)[order],
                       pooled_sums[order], lo[order], hi[order], max_cells)


def _codes(keys: np.ndarray, widths: list[int]) -> np.ndarray:
    """One integer per row of `keys`, field j in `widths[j]` bits (in range: checked
    where keys come from), ordered as the rows are lexicographically."""
    code = keys[:, 0].copy()
    for j, width in enumerate(widths[1:], start=1):
        code <<= width
        code |= keys[:, j]
    return code


def _checked(fields: dict) -> ScoreSketch:
    def need(name: str) -> np.ndarray:
        if name not in fields:
            raise ValueError(f"score sketch has no {name!r}")
        return fields[name]

    def number(name: str) -> int:
        value = need(name)
        if value.shape != () or value.dtype.kind not in "iu":
            raise ValueError(f"score sketch {name!r} is not one integer")
        return int(value)

    if number("format") != _FORMAT:
        raise ValueError(f"score sketch format {number('format')} is not {_FORMAT}")
    levels, max_cells = number("levels"), number("max_cells")
    _check_grid(levels, max_cells)
    classes = tuple(str(c) for c in need("classes").reshape(-1))
    k = len(classes)
    if k < 2 or len(set(classes)) != k:
        raise ValueError(f"score sketch classes {list(classes)[:5]} are not 2+ distinct names")
    if max_cells < k:
        raise ValueError(f"score sketch max_cells {max_cells} is below its {k} classes")
    keys, counts = need("keys"), need("counts")
    sums, low, high = need("sums"), need("low"), need("high")
    cells = counts.shape[0] if counts.ndim == 1 else -1
    if (keys.dtype != np.int64 or counts.dtype != np.int64 or keys.shape != (cells, 1 + k)
            or any(a.dtype != np.float64 or a.shape != (cells, k) for a in (sums, low, high))):
        raise ValueError("score sketch arrays have the wrong types or shapes")
    if cells > max_cells:
        raise ValueError(f"score sketch has {cells} cells, above its max_cells {max_cells}")
    if cells and (counts.min() < 1 or keys[:, 0].min() < 0 or keys[:, 0].max() >= k
                  or keys[:, 1:].min() < 0 or keys[:, 1:].max() >= levels):
        raise ValueError("score sketch keys or counts out of range")
    if not all(np.isfinite(a).all() for a in (sums, low, high)) or (cells and (
            low.min() < 0 or high.max() > 1 or (low > high).any())):
        raise ValueError("score sketch bounds are not finite probabilities")
    slack = 1e-9 * counts[:, None]
    if cells and ((sums < counts[:, None] * low - slack).any()
                  or (sums > counts[:, None] * high + slack).any()):
        raise ValueError("score sketch sums lie outside their cells' bounds")
    if cells and counts.astype(np.float64).sum() > _MAX_ROWS:
        raise ValueError(f"score sketch counts add up to more than {_MAX_ROWS:.0f} rows")
    if cells and ((_grid(low, levels) != keys[:, 1:]).any()
                  or (_grid(high, levels) != keys[:, 1:]).any()):
        raise ValueError("score sketch keys disagree with their cells' bounds")
    if cells > 1 and len(np.unique(keys, axis=0)) != cells:
        raise ValueError("score sketch has a cell twice")
    return ScoreSketch(classes, levels, keys, counts, sums, low, high, max_cells)
