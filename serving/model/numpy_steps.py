"""The platform's fitted preprocessing steps replayed in numpy from validated rows, for
the scikit-learn runtime (serving/model/row_pipeline.py admits them per model load).

One row through a fitted `ColumnTransformer` costs about 2.4 ms of scikit-learn's
per-call machinery (a DataFrame per column group, input validation, tags, feature-name
checks, set_output wrappers) for microseconds of arithmetic. The steps below do that
arithmetic alone, from fitted attributes read once, with scikit-learn's own operations
in its order and dtypes: numeric groups (`SimpleImputer` mean/median, `StandardScaler`)
on one float64 matrix, categorical groups (`SimpleImputer` constant/most_frequent on
object columns, then a dense `OneHotEncoder`) as per-column look-up tables, blocks
stacked as the ColumnTransformer stacks them, then a feature selector's mask. Anything
else is `Unsupported` (the Pipeline runs it); input the replay should not answer itself
(a value that is not finite after a step, an unknown category an encoder refuses, an
integer beyond int64) raises `Fallback`, and the Pipeline answers those rows with its
own answer or error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from sklearn import feature_selection
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from serving.model.feature_specs import FeatureSpec

NUMERIC_KINDS = ("number", "integer", "boolean")
INT64_LIMIT = 2.0 ** 63  # float64 integers at or beyond this are no int64 (old path decides)
# Selectors whose transform is `X[:, get_support()]` (SelectorMixin's, not overridden).
SELECTORS = (feature_selection.SelectKBest, feature_selection.SelectPercentile,
             feature_selection.SelectFpr, feature_selection.SelectFdr,
             feature_selection.SelectFwe, feature_selection.GenericUnivariateSelect,
             feature_selection.VarianceThreshold)
NO_COLUMN = -1  # an encoder's output for the value: no column set
REFUSED = -2  # the encoder raises for the value (handle_unknown="error")


class Unsupported(ValueError):
    """A fitted step this module does not replay; the message says which and why."""


class Fallback(Exception):
    """Rows the replay does not answer itself: the Pipeline answers (or refuses) them."""


def _default_output(step) -> bool:
    """Whether `step` returns plain arrays (no set_output to pandas/polars)."""
    config = getattr(step, "_sklearn_output_config", None) or {}
    return (config.get("transform", "default") == "default"
            and sklearn.get_config().get("transform_output", "default") == "default")


def _steps(transformer) -> list:
    """The fitted steps of a column group: a Pipeline's (passthrough ones left out), or
    the transformer itself."""
    if type(transformer) is Pipeline:
        return [s for _, s in transformer.steps if s is not None and s != "passthrough"]
    return [transformer]


# -- numeric groups: one float64 matrix ------------------------------------------------

def _imputer_op(imputer: SimpleImputer) -> Callable[[np.ndarray], np.ndarray]:
    """SimpleImputer(mean/median).transform on float64: NaN -> the column's statistic;
    columns without a statistic (all missing in training) dropped, as it drops them."""
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    keep = None if imputer.keep_empty_features else np.flatnonzero(~np.isnan(statistics))
    if keep is not None and len(keep) == len(statistics):
        keep = None
    fill = statistics if keep is None else statistics[keep]

    def impute(X: np.ndarray) -> np.ndarray:
        if keep is not None:
            X = X[:, keep]
        return np.where(np.isnan(X), fill, X)

    return impute


def _scaler_op(scaler: StandardScaler) -> Callable[[np.ndarray], np.ndarray]:
    """StandardScaler.transform on float64: X -= mean_; X /= scale_ (as it does)."""
    mean = None if scaler.mean_ is None or not scaler.with_mean else np.asarray(scaler.mean_)
    scale = None if scaler.scale_ is None or not scaler.with_std else np.asarray(scaler.scale_)

    def standardise(X: np.ndarray) -> np.ndarray:
        X = X.copy()
        if mean is not None:
            X -= mean
        if scale is not None:
            X /= scale
        return X

    return standardise


def _numeric_op(step) -> Callable[[np.ndarray], np.ndarray]:
    if type(step) is SimpleImputer:
        if step.strategy not in ("mean", "median"):
            raise Unsupported(f"SimpleImputer(strategy={step.strategy!r}) on numbers")
        if not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)):
            raise Unsupported(f"SimpleImputer(missing_values={step.missing_values!r})")
        if step.add_indicator:
            raise Unsupported("SimpleImputer(add_indicator=True)")
        return _imputer_op(step)
    if type(step) is StandardScaler:
        return _scaler_op(step)
    raise Unsupported(f"{type(step).__module__}.{type(step).__qualname__} on numbers")


@dataclass(frozen=True)
class NumericGroup:
    """A column group of numbers: the values of `columns` (indices into a row) as one
    float64 matrix (None -> NaN), then each step's arithmetic."""

    columns: tuple[int, ...]
    integer: list[int]  # positions (within `columns`) of integer features
    ops: tuple[Callable[[np.ndarray], np.ndarray], ...]

    def __call__(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        columns = self.columns
        X = np.array([[row[i] for i in columns] for row in rows], dtype=np.float64)
        X = X.reshape(len(rows), len(columns))
        if self.integer and (np.abs(X[:, self.integer]) >= INT64_LIMIT).any():
            raise Fallback("an integer beyond int64")
        for op in self.ops:
            if np.isinf(X).any():
                raise Fallback("a value is not finite")
            X = op(X)
        if not np.isfinite(X).all():
            raise Fallback("a value is not finite")
        return X


# -- categorical groups: a look-up table per column -------------------------------------

def _is_nan(value) -> bool:
    return isinstance(value, float) and value != value


@dataclass(frozen=True)
class _Column:
    """One categorical feature: value -> column offset within the group's block."""

    table: dict
    none: int  # offset for None (an encoder may have learned None as a category)
    nan: int  # offset for NaN (missing, when the imputer does not replace it)
    unknown: int  # offset for any other value (NO_COLUMN, or REFUSED)

    def offset(self, value) -> int:
        if value is None:
            return self.none
        if _is_nan(value):
            return self.nan
        return self.table.get(value, self.unknown)


def _encoder_columns(encoder: OneHotEncoder) -> tuple[list[_Column], int]:
    """Per feature, where each value lands in a dense OneHotEncoder's output
    (drop=None): a category's own column; infrequent categories, and unknown values
    under infrequent_if_exist/warn, the feature's last ("infrequent") column; other
    unknown values no column ("ignore", or no infrequent column) or refused ("error")."""
    if encoder.drop is not None or getattr(encoder, "drop_idx_", None) is not None:
        raise Unsupported("OneHotEncoder(drop=...)")
    if encoder.sparse_output:
        raise Unsupported("OneHotEncoder(sparse_output=True)")
    try:
        infrequent = encoder.infrequent_categories_
    except AttributeError:  # infrequent grouping not enabled
        infrequent = [None] * len(encoder.categories_)
    columns, offset = [], 0
    for categories, rare in zip(encoder.categories_, infrequent, strict=True):
        rare_set = set() if rare is None else set(np.asarray(rare, dtype=object).tolist())
        values = np.asarray(categories, dtype=object).tolist()
        frequent = [v for v in values if not (v in rare_set or (
            _is_nan(v) and any(_is_nan(r) for r in rare_set)))]
        width = len(frequent) + (1 if rare_set else 0)
        other = offset + len(frequent) if rare_set else NO_COLUMN
        table: dict = {}
        none = nan = NO_COLUMN
        position = {id(v): offset + k for k, v in enumerate(frequent)}
        for value in values:
            at = position.get(id(value), other)
            if value is None:
                none = at
            elif _is_nan(value):
                nan = at
            else:
                table[value] = at
        if encoder.handle_unknown == "error":
            unknown = REFUSED
        elif encoder.handle_unknown in ("infrequent_if_exist", "warn"):
            unknown = other
        else:
            unknown = NO_COLUMN
        columns.append(_Column(table, none if None in values else unknown,
                               nan if any(_is_nan(v) for v in values) else unknown, unknown))
        offset += width
    if offset != len(encoder.get_feature_names_out()):
        raise Unsupported("OneHotEncoder output width differs from its feature names")
    return columns, offset


@dataclass(frozen=True)
class CategoricalGroup:
    """A column group of strings: an optional SimpleImputer (NaN -> its fill value)
    then a dense OneHotEncoder, as one table look-up per value."""

    columns: tuple[int, ...]  # row indices, after the imputer's dropped columns
    fills: tuple  # per column: what a missing (NaN) value becomes, or NaN (no imputer)
    missing: Any  # what a missing string (None in a row) reaches the Pipeline as
    encoded: tuple[_Column, ...]
    width: int
    dtype: np.dtype

    def __call__(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        out = np.zeros((len(rows), self.width), dtype=self.dtype)
        for i, fill, column in zip(self.columns, self.fills, self.encoded, strict=True):
            for r, row in enumerate(rows):
                value = row[i]
                if value is None:
                    value = self.missing
                if _is_nan(value):
                    value = fill
                at = column.offset(value)
                if at >= 0:
                    out[r, at] = 1
                elif at == REFUSED:
                    raise Fallback("a category the encoder refuses")
        return out


def _categorical_group(steps: list, columns: tuple[int, ...], missing: Any
                       ) -> CategoricalGroup:
    *imputers, encoder = steps
    if type(encoder) is not OneHotEncoder or len(imputers) > 1:
        raise Unsupported("a string column group other than [SimpleImputer] + OneHotEncoder")
    fills: list = [np.nan] * len(columns)
    if imputers:
        imputer = imputers[0]
        if type(imputer) is not SimpleImputer or imputer.strategy not in ("constant",
                                                                           "most_frequent"):
            raise Unsupported("a string imputer other than SimpleImputer constant/most_frequent")
        if not _is_nan(imputer.missing_values) or imputer.add_indicator:
            raise Unsupported("a string SimpleImputer not replacing NaN, or with indicators")
        if getattr(imputer, "_fit_dtype", np.dtype(object)).kind != "O":
            raise Unsupported("a string SimpleImputer not fitted on object columns")
        statistics = np.asarray(imputer.statistics_, dtype=object).tolist()
        kept = [k for k, s in enumerate(statistics)
                if imputer.keep_empty_features or not _is_nan(s)]
        columns = tuple(columns[k] for k in kept)
        fills = [statistics[k] for k in kept]
    encoded, width = _encoder_columns(encoder)
    if len(encoded) != len(columns):
        raise Unsupported("the OneHotEncoder's features differ from its columns")
    return CategoricalGroup(columns, tuple(fills), missing, tuple(encoded), width,
                            np.dtype(encoder.dtype))


# -- the ColumnTransformer, and selectors after it -------------------------------------

def _check_names(step, names: list[str]) -> None:
    fitted = getattr(step, "feature_names_in_", None)
    if (fitted is None or [str(n) for n in fitted] != names
            or getattr(step, "n_features_in_", None) != len(names)):
        raise Unsupported(f"{type(step).__name__} was fitted on other columns")


@dataclass(frozen=True)
class ColumnBlocks:
    """A fitted ColumnTransformer (dense output, named columns) from validated rows:
    each group's block, stacked in its order (np.hstack, as it stacks them)."""

    groups: tuple[NumericGroup | CategoricalGroup, ...]
    width: int

    def __call__(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        if not self.groups:
            raise Fallback("no columns")
        X = np.hstack([group(rows) for group in self.groups])
        if not np.isfinite(X).all():
            raise Fallback("a value is not finite")
        return X


def column_blocks(transformer, specs: Sequence[FeatureSpec], missing: Any) -> ColumnBlocks:
    """The numpy replay of a fitted ColumnTransformer over `specs`' rows; Unsupported
    when it holds a step, option or column selection this module does not replay."""
    if type(transformer) is not ColumnTransformer:
        raise Unsupported(f"{type(transformer).__name__} is no ColumnTransformer")
    if transformer.sparse_output_ or not _default_output(transformer):
        raise Unsupported("a ColumnTransformer with sparse or DataFrame output")
    index = {spec.name: i for i, spec in enumerate(specs)}
    fitted = getattr(transformer, "feature_names_in_", None)
    if fitted is None or any(str(name) not in index for name in fitted):
        raise Unsupported("the ColumnTransformer was fitted on columns that are no features")
    groups: list[NumericGroup | CategoricalGroup] = []
    width = 0
    for _, trans, selection in transformer.transformers_:
        names = list(selection) if isinstance(selection, (list, tuple, np.ndarray)) else None
        if (isinstance(trans, str) and trans == "drop") or names == []:
            continue
        if names is None or not all(isinstance(n, str) and n in index for n in names):
            raise Unsupported("a column selection other than a list of feature names")
        if isinstance(trans, str):
            raise Unsupported(f"a {trans!r} column group")
        steps = _steps(trans)
        if not steps or not all(_default_output(s) for s in [trans, *steps]):
            raise Unsupported("an empty or DataFrame-output column group")
        _check_names(steps[0], names)
        columns = tuple(index[n] for n in names)
        kinds = {specs[i].kind for i in columns}
        group: NumericGroup | CategoricalGroup
        if kinds <= set(NUMERIC_KINDS):
            integer = [k for k, i in enumerate(columns) if specs[i].kind == "integer"]
            group = NumericGroup(columns, integer, tuple(_numeric_op(s) for s in steps))
            width += _numeric_width(steps, len(columns))
        elif kinds == {"string"}:
            group = _categorical_group(steps, columns, missing)
            width += group.width
        else:
            raise Unsupported("a column group mixing numbers and strings")
        groups.append(group)
    return ColumnBlocks(tuple(groups), width)


def _numeric_width(steps: list, width: int) -> int:
    for step in steps:
        if type(step) is SimpleImputer and not step.keep_empty_features:
            width = int((~np.isnan(np.asarray(step.statistics_, dtype=np.float64))).sum())
    return width


@dataclass(frozen=True)
class Selection:
    """A fitted feature selector's transform: the columns of its support mask."""

    mask: np.ndarray

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return X[:, self.mask]


def selection(step, width: int) -> Selection:
    """The numpy replay of a fitted selector (SELECTORS) over `width` columns."""
    if type(step) not in SELECTORS or not _default_output(step):
        raise Unsupported(f"{type(step).__name__} is no replayed selector")
    mask = np.asarray(step.get_support(), dtype=bool)
    if mask.shape != (width,) or not mask.any():
        raise Unsupported(f"{type(step).__name__} selects none of, or not, {width} columns")
    return Selection(mask)
