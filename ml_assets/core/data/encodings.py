"""How a categorical feature is encoded: the rule inference records in the schema and the
preprocessor applies, so the encoded width never grows with the number of categories.

- `one_hot`: one column per value seen in training (at most ONE_HOT_MAX_CATEGORIES
  values, which every closed `isin` list of an inferred schema is);
- `one_hot_top_k`: more values than that: one column for each of the TOP_K_CATEGORIES
  most frequent values of the training split, plus one column for every other value
  (rarer ones, and values first seen at serving, which are also flagged unseen).

A column encodes to at most TOP_K_CATEGORIES + 1 float32 columns whatever its number of
values, so a training row costs a bounded number of bytes (README, "Your own data"). A
recorded `one_hot` whose training split holds more values than ONE_HOT_MAX_CATEGORIES (a
schema written from a smaller first file) is encoded as `one_hot_top_k`, and the
preprocessor's metadata says so.
"""

from __future__ import annotations

ENCODING_KEY = "encoding"
ONE_HOT = "one_hot"
ONE_HOT_TOP_K = "one_hot_top_k"
ENCODINGS = (ONE_HOT, ONE_HOT_TOP_K)

ONE_HOT_MAX_CATEGORIES = 50  # up to this many distinct values: one column per value
TOP_K_CATEGORIES = 50        # beyond: the K most frequent values + one "other" column

RULE = (f"categorical features with at most {ONE_HOT_MAX_CATEGORIES} distinct values are "
        f"one-hot encoded ({ONE_HOT}); with more, the {TOP_K_CATEGORIES} most frequent "
        f"values of the training split get a column each and every other value (unseen "
        f"ones included) shares one more ({ONE_HOT_TOP_K})")


def encoding_for(distinct: int) -> str:
    """The encoding the rule gives a categorical column with `distinct` values."""
    if distinct < 0:
        raise ValueError(f"a column cannot have {distinct} distinct values")
    return ONE_HOT if distinct <= ONE_HOT_MAX_CATEGORIES else ONE_HOT_TOP_K


def encoding_note(distinct: int) -> str:
    """The sentence the schema keeps about an open categorical's encoding."""
    if encoding_for(distinct) == ONE_HOT:
        return (f"{distinct} distinct values: an open categorical feature (no closed list "
                "of values), one-hot encoded; values the model has not seen are flagged "
                "and encoded as none of them")
    return (f"{distinct} distinct values: an open categorical feature, encoded as one "
            f"column for each of its {TOP_K_CATEGORIES} most frequent values in the "
            "training split plus one column for all other values (unseen ones are "
            "flagged and go there)")


def effective_encoding(recorded: str | None, distinct_in_train: int) -> str:
    """The encoding applied to a column: the recorded one, except that `one_hot` (or no
    record: a declared or hand-written schema) over more than ONE_HOT_MAX_CATEGORIES
    training values is `one_hot_top_k`, so the width stays bounded."""
    if recorded is not None and recorded not in ENCODINGS:
        raise ValueError(f"unknown categorical encoding {recorded!r}; use one of "
                         f"{', '.join(ENCODINGS)}")
    if recorded == ONE_HOT_TOP_K:
        return ONE_HOT_TOP_K
    return encoding_for(distinct_in_train)
