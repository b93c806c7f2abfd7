"""Tables at real size (issue 21): a flights-like table of 300,000 rows, with a 4,000-value
tail number and R's shuffled `rownames`, trains through the platform's own code in a child
process whose peak RSS stays under 2 GB; the row names are an identifier, the tail number
is encoded by the rule its schema records (its 50 most frequent values + "other")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ml_assets.core.data.encodings import ONE_HOT_TOP_K, TOP_K_CATEGORIES

ROOT = Path(__file__).resolve().parents[2]
PEAK_LIMIT = 2 * 10**9


def test_flights_like_table_trains_in_bounded_memory():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "ml_assets_tests.support.big_tables", "--rows", "300000"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["train_rows"] == 240_000
    assert result["peak_rss_bytes"] < PEAK_LIMIT, result
    # The shuffled, gapped row names are an identifier, not a feature (nor an API field).
    assert result["excluded"] == {"rownames": "identifier"}
    assert "rownames" not in result["features"]
    # The schema records the rule, and the fitted encoder applies it: 50 values + other.
    assert result["encodings"] == {"carrier": "one_hot", "origin": "one_hot",
                                   "tailnum": ONE_HOT_TOP_K}
    assert "50 most frequent values" in result["tailnum_note"]
    assert result["tailnum_categories_seen"] > 3_900  # every tail number was seen ...
    assert result["top_k_columns"] == [TOP_K_CATEGORIES + 1]  # ... and encoded in 51
    # 5 numerics + 16 carriers + 3 origins + 51: bounded whatever the number of tails.
    assert result["preprocessed_width"] == 5 + 16 + 3 + TOP_K_CATEGORIES + 1
    # Unseen tail numbers are answered, and the model learned something.
    assert result["unseen_proba_finite"]
    assert result["held_out_accuracy"] > 0.75
