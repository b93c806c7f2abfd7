"""ModelCheckError, and the checks on fitted preprocessing arrays: per-feature shapes,
encoders, scalers, imputers, selectors, column selections, sparse matrices.

A check is `def check_x(obj, where: str) -> None` raising `ModelCheckError` whose
message starts with `where` (the object's place in the model, e.g. "StandardScaler
step 'scale' of ..."); `validation.VALIDATORS` maps types to checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.feature_selection import SelectKBest
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import StandardScaler


class ModelCheckError(ValueError):
    """A model (or its skops file) failed a check; `check` names it (`tree.children`,
    `archive.entries`, ...) and the message says where and what, in one sentence."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


Validator = Callable[[Any, str], None]

# Fitted arrays whose last axis is one entry per input feature, wherever they appear.
PER_FEATURE_ARRAYS = (
    "feature_names_in_", "mean_", "var_", "scale_", "statistics_", "scores_", "pvalues_",
    "data_min_", "data_max_", "data_range_", "min_", "max_abs_", "center_", "variances_",
    "coef_", "theta_", "components_", "means_", "cluster_centers_", "lambdas_",
    "quantiles_", "feature_log_prob_", "feature_count_", "bin_edges_", "n_bins_",
)
_PER_FEATURE = frozenset(PER_FEATURE_ARRAYS)


def fail(check: str, where: str, what: str) -> ModelCheckError:
    return ModelCheckError(check, f"{where}: {what}")


def n_features_of(obj: Any, where: str) -> int | None:
    """`n_features_in_` when fitted (a whole number >= 0), else None."""
    n = vars(obj).get("n_features_in_") if hasattr(obj, "__dict__") else None
    if n is None:
        return None
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0:
        raise fail("n_features", where, f"n_features_in_ {n!r} is not a whole number")
    return int(n)


def name_of(obj: Any) -> str:
    return type(obj).__name__


# -- preprocessing -----------------------------------------------------------------------

def check_categories(est: Any, where: str) -> None:
    """OneHotEncoder, OrdinalEncoder, TargetEncoder: one category array per feature."""
    categories = vars(est).get("categories_")
    n = n_features_of(est, where)
    if categories is None or n is None:
        return
    if not isinstance(categories, list) or len(categories) != n or any(
            not isinstance(c, np.ndarray) or c.ndim != 1 for c in categories):
        size = len(categories) if isinstance(categories, list) else name_of(categories)
        raise fail("encoder.categories", where, f"categories_ holds {size} 1-d arrays, "
                   f"not n_features_in_ {n}")
    drop = vars(est).get("drop_idx_")
    if isinstance(drop, np.ndarray):
        ok = drop.shape == (n,) and all(
            d is None or (isinstance(d, int | np.integer) and 0 <= int(d) < len(c))
            for d, c in zip(drop.tolist(), categories, strict=True))
        if not ok:
            raise fail("encoder.drop", where, "drop_idx_ does not index into categories_")


def check_standard_scaler(est: StandardScaler, where: str) -> None:
    """mean_, var_, scale_: one finite value per feature."""
    n = n_features_of(est, where)
    for name in ("mean_", "var_", "scale_"):
        value = vars(est).get(name)
        if value is None or n is None:
            continue
        if not isinstance(value, np.ndarray) or value.shape != (n,) \
                or not np.isfinite(value).all():
            raise fail("scaler.arrays", where, f"{name} is not {n} finite numbers "
                       f"(n_features_in_ {n})")


def check_simple_imputer(est: SimpleImputer, where: str) -> None:
    """statistics_: one fill value per feature."""
    value, n = vars(est).get("statistics_"), n_features_of(est, where)
    if value is not None and n is not None and (not isinstance(value, np.ndarray)
                                                or value.shape != (n,)):
        raise fail("imputer.statistics", where, f"statistics_ has shape "
                   f"{getattr(value, 'shape', None)}, not ({n},)")


def check_select_k_best(est: SelectKBest, where: str) -> None:
    """scores_ / pvalues_: one per feature; k within them."""
    n = n_features_of(est, where)
    if n is None:
        return
    for name in ("scores_", "pvalues_"):
        value = vars(est).get(name)
        if value is not None and (not isinstance(value, np.ndarray) or value.shape != (n,)):
            raise fail("selector.scores", where, f"{name} has shape "
                       f"{getattr(value, 'shape', None)}, not ({n},)")
    k = est.k
    if not (k == "all" or (isinstance(k, int | np.integer) and 0 <= int(k) <= n)):
        raise fail("selector.k", where, f"k {k!r} is not 'all' nor in 0..{n}")


def _column_problem(columns: Any, n: int, names: set[str] | None) -> str | None:
    if callable(columns) or columns is None:
        return None
    if isinstance(columns, slice):
        columns = [c for c in (columns.start, columns.stop) if c is not None]
    if isinstance(columns, list | tuple) and columns and all(
            isinstance(c, bool | np.bool_) for c in columns):
        columns = np.asarray(columns, dtype=bool)  # a mask (e.g. the remainder's)
    values = np.asarray(columns, dtype=object if isinstance(columns, list | tuple) else None)
    if values.dtype == bool:
        return None if values.shape == (n,) else f"a {values.shape} mask for {n} columns"
    for value in np.atleast_1d(values).tolist():
        if isinstance(value, bool):
            return f"mixed column selector {value!r}"
        if isinstance(value, int | np.integer):
            if not -n <= int(value) < n:
                return f"column {value} outside 0..{n - 1}"
        elif isinstance(value, str):
            if names is not None and value not in names:
                return f"column {value!r} that is not among its input columns"
        else:
            return f"column selector {value!r}"
    return None


def check_column_transformer(est: ColumnTransformer, where: str) -> None:
    """Every transformer's columns lie within the input (indices, masks, names)."""
    n = n_features_of(est, where)
    fitted = vars(est).get("transformers_")
    if n is None or fitted is None:
        return
    names_in = vars(est).get("feature_names_in_")
    names = None if names_in is None else {str(c) for c in names_in}
    for name, _, columns in fitted:
        problem = _column_problem(columns, n, names)
        if problem:
            raise fail("columns.range", where, f"transformer {name!r} selects {problem}")


def check_sparse(matrix: Any, where: str) -> None:
    """A CSR/CSC/BSR matrix: indices and indptr consistent and in range."""
    try:
        matrix.check_format(full_check=True)
    except (ValueError, TypeError) as exc:
        raise fail("sparse.indices", where, f"sparse matrix is malformed: {exc}") from exc


def check_coo(matrix: Any, where: str) -> None:
    """A COO matrix: every coordinate inside its shape."""
    for axis, coords in enumerate(matrix.coords):
        if coords.size and (coords.min() < 0 or coords.max() >= matrix.shape[axis]):
            raise fail("sparse.indices", where, f"sparse matrix has an index outside its "
                       f"shape {matrix.shape}")


def check_feature_arrays(obj: Any, where: str) -> None:
    """For anything fitted with n_features_in_: each PER_FEATURE_ARRAYS attribute has
    n_features_in_ entries on its last axis."""
    n = n_features_of(obj, where)
    if n is None:
        return
    state = vars(obj)
    for name in _PER_FEATURE.intersection(state):
        value = state[name]
        if isinstance(value, np.ndarray) and (value.ndim == 0 or value.shape[-1] != n):
            raise fail("n_features", where, f"{name} has shape {value.shape} but "
                       f"n_features_in_ is {n}")


