"""A request the generated request models refuse, as the client is told: pydantic's
errors as FastAPI shows them (loc, msg, type; `validation_detail`) and one line naming
every bad row (`validation_message`), both without echoing the client's input beyond
short excerpts. Shared by /predict, /predict/batch and /invocations (and the V2 codec's
null message).
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from serving.model.input_limits import excerpt, excerpt_loc

# Said of a null (or NaN) sent for a feature that is not nullable.
NULL_MESSAGE = "may not be null (the model was trained without missing values here)"
NULL_ERROR_TYPE = "null_not_allowed"

# Error types that mean "this value is wrong", not "this field is missing / unknown".
_NOT_VALUE_ERRORS = frozenset({"missing", "extra_forbidden"})
MAX_NAMED_ROWS = 20  # bad rows a batch's message names (the count says how many in all)
MAX_ERRORS_PER_ROW = 3


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def validation_detail(exc: ValidationError, limit: int = 100,
                      features: frozenset[str] | None = None) -> list[dict]:
    """Pydantic errors as FastAPI shows them (loc, msg, type), without echoing input:
    at most `limit` errors, keys and messages cut to short excerpts. A null or NaN sent
    for one of `features` (which are then not nullable: nullable ones accept both) is
    reported as such, not as the type or the allowed values it failed."""
    detail = []
    for e in exc.errors(include_url=False, include_input=features is not None)[:limit]:
        loc = e["loc"]
        if (features is not None and loc and isinstance(loc[-1], str) and loc[-1] in features
                and e["type"] not in _NOT_VALUE_ERRORS and _is_null(e.get("input", 0))):
            detail.append({"loc": excerpt_loc(loc), "msg": NULL_MESSAGE,
                           "type": NULL_ERROR_TYPE})
            continue
        detail.append({"loc": excerpt_loc(loc), "msg": excerpt(e["msg"], 200),
                       "type": e["type"]})
    return detail


def _row_of(loc: list) -> int | None:
    """The row index a location starts with (after "records" on /predict/batch)."""
    if len(loc) > 1 and loc[0] == "records" and isinstance(loc[1], int):
        return loc[1]
    return loc[0] if loc and isinstance(loc[0], int) else None


def error_summary(detail: list[dict], index_word: str, limit: int = 5,
             total: int | None = None) -> str:
    """One line. For one record: its first `limit` field errors. For many rows: every
    bad row up to MAX_NAMED_ROWS, in order, each with its first MAX_ERRORS_PER_ROW
    errors, then how many bad rows there are when not all are named."""
    by_row: dict[int, list[str]] = {}
    hidden: dict[int, int] = {}
    parts = []
    for item in detail:
        loc = list(item["loc"])
        row = _row_of(loc)
        if row is None:
            parts.append(f"{'.'.join(str(p) for p in loc) or 'body'}: {item['msg']}")
            continue
        loc = loc[2:] if loc[0] == "records" else loc[1:]
        errors = by_row.get(row)
        if errors is None:
            if len(by_row) >= MAX_NAMED_ROWS:
                hidden.setdefault(row, 0)
                continue
            errors = by_row[row] = []
        if len(errors) < MAX_ERRORS_PER_ROW:
            errors.append(f"{'.'.join(str(p) for p in loc) or 'row'}: {item['msg']}")
        else:
            hidden[row] = hidden.get(row, 0) + 1
    if not by_row:
        total = len(detail) if total is None else total
        more = f" (and {total - limit} more)" if total > limit else ""
        return "invalid input: " + "; ".join(parts[:limit]) + more
    named = [f"{index_word} {row}: " + "; ".join(errors)
             + (f" (and {hidden[row]} more)" if hidden.get(row) else "")
             for row, errors in by_row.items()]
    bad_rows = len(by_row) + sum(1 for row in hidden if row not in by_row)
    count = (f" ({bad_rows} bad {index_word}s in all; the first {MAX_NAMED_ROWS} are named)"
             if bad_rows > len(by_row) else "")
    return "invalid input: " + "; ".join([*parts[:limit], *named]) + count


def validation_message(exc: ValidationError, index_word: str = "row",
                       features: frozenset[str] | None = None) -> str:
    """One line naming the failing fields; in a batch, every bad row (up to
    MAX_NAMED_ROWS) by its index, with the number of bad rows when there are more."""
    detail = validation_detail(exc, exc.error_count(), features)
    return error_summary(detail, index_word, total=exc.error_count())
