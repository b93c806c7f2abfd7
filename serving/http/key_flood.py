"""A cheap guard against JSON bodies that flood a record with keys.

Validating a `/predict` record with 200,000 unknown keys costs pydantic seconds (one
error object per key) and hundreds of MB, all of it holding the GIL, so the event loop
stalls even when the work runs in a thread. Before any model is built, `key_flood`
counts the object keys and objects of the body outside its strings with a few
vectorised passes over the bytes (milliseconds for a 4 MiB body; no object per key),
and refuses a body whose records carry more keys than a record may have: the schema's
columns plus `RECORD_KEYS_SLACK` (so every ordinary mistake, a few unknown fields, still
gets pydantic's per-field answer).
"""

from __future__ import annotations

import numpy as np

RECORD_KEYS_SLACK = 1024  # keys a record may carry beyond the schema's columns
_QUOTE, _COLON, _BRACE = ord('"'), ord(":"), ord("{")


def keys_and_objects(body: bytes) -> tuple[int, int]:
    """(object keys, objects) of a JSON text, counted outside its strings (the colons
    and opening braces that are not inside a string)."""
    # Escaped backslashes first, then escaped quotes: what is left of `"` delimits
    # strings (for valid JSON; an invalid body only gets an approximate count).
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in body else body
    raw = np.frombuffer(text, dtype=np.uint8)
    # 1 within a string (uint8 loops release the GIL; bool ones are slower)
    inside = np.bitwise_xor.accumulate((raw == _QUOTE).view(np.uint8))
    keys = int(np.count_nonzero(raw == _COLON) - np.count_nonzero((raw == _COLON) & inside))
    objects = int(np.count_nonzero(raw == _BRACE) - np.count_nonzero((raw == _BRACE) & inside))
    return keys, objects


def key_flood(body: bytes, columns: int, max_records: int = 1) -> str | None:
    """None when the body's records (at most `max_records` of them, plus an enclosing
    object when there is more than one allowed) hold at most `columns` keys each plus
    RECORD_KEYS_SLACK in all; else the message that refuses it."""
    per_record = columns + RECORD_KEYS_SLACK
    wrapper = 0 if max_records == 1 else 1  # {"records": [...]}
    if body.count(b":") <= per_record + wrapper:  # cannot hold more keys than colons
        return None
    keys, objects = keys_and_objects(body)
    records = max(1, min(objects - wrapper, max_records))
    # The slack is granted once per body, not once per record: padding a batch with empty
    # objects must not buy one record room for thousands of unknown keys.
    if keys - wrapper <= columns * records + RECORD_KEYS_SLACK:
        return None
    if max_records == 1:
        return (f"the record has {keys} fields, more than the {per_record} a record may "
                f"have (the model's schema has {columns} columns); unknown fields are "
                "refused")
    return (f"the records hold {keys - wrapper} fields, more than {columns} per record plus "
            f"{RECORD_KEYS_SLACK} (the model's schema has {columns} columns); unknown fields "
            "are refused")
