"""What a fresh interpreter imports: the drift core (ml_assets.core.drift) is plain
Python and scientific libraries, usable without Dagster (its own checks are in
ml_assets_tests/unit/test_drift.py)."""

import subprocess
import sys


def test_core_does_not_import_dagster():
    code = ("import sys, ml_assets.core.drift.scoring; "
            "sys.exit(any(m.split('.')[0] == 'dagster' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
