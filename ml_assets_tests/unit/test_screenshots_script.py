"""scripts/screenshots.py's refusals and URLs (the screenshots themselves need Chromium:
`python scripts/screenshots.py`, README "What you will see"), and the per-feature table
drift_scores draws on the asset page."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib

from ml_assets.drift import metadata_table

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts/screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_what_is_missing_is_named_with_the_way_to_get_it(tmp_path):
    missing = str(tmp_path / "no-chromium")
    problem = _script().check_browser(missing)
    if importlib.util.find_spec("playwright") is None:  # CI: no extra installed
        assert problem is not None and '".[screenshots]"' in problem, problem
    else:
        assert problem is not None and missing in problem and "--chromium" in problem, problem


def test_lineage_opens_with_every_group_of_the_code_location_expanded():
    from ml_assets.definitions import defs

    groups = {spec.group_name for spec in defs.resolve_all_asset_specs()}
    path = _script().lineage_path()
    assert path.startswith("/asset-groups?expanded=")
    assert set(path.split("=", 1)[1].split(",")) == {f"global@global:{g}" for g in groups}


def test_playwright_is_an_optional_extra_not_a_dev_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["screenshots"] == ["playwright==1.65.2"]
    assert not any("playwright" in d for d in project["dependencies"])
    assert not any("playwright" in d for d in project["optional-dependencies"]["dev"])


def test_the_metadata_table_keeps_types_rounds_and_empties_what_is_not_finite():
    frame = pd.DataFrame({"feature": ["a", "b"], "drifted": np.array([True, False]),
                          "n_cur": np.array([3, 4], dtype=np.int64),
                          "p_value": [0.0123456789, math.nan]})
    table = metadata_table(frame).value
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("feature", "string"), ("drifted", "bool"), ("n_cur", "int"), ("p_value", "float")]
    assert [r.data for r in table.records] == [
        {"feature": "a", "drifted": True, "n_cur": 3, "p_value": 0.01235},
        {"feature": "b", "drifted": False, "n_cur": 4, "p_value": None}]
