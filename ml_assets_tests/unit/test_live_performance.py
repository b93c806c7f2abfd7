"""Live performance per model version and variant (ml_assets/core/modeling/live_performance.py):
a canary day is never pooled into one accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_assets.core.modeling.live_performance import (
    champion_version,
    live_report,
    per_version_markdown,
)


def _day(parts: list[tuple[str, str, int, float]], seed: int = 0) -> tuple[pd.DataFrame,
                                                                           pd.DataFrame]:
    """Rows answered by (version, variant), `n` each, right with probability `p`; and
    their labels."""
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    for version, variant, n, p in parts:
        truth = rng.choice(["a", "b"], size=n)
        right = rng.random(n) < p
        predicted = np.where(right, truth, np.where(truth == "a", "b", "a"))
        ids = [f"{version}-{variant}-{i}-{len(frames)}" for i in range(n)]
        proba_a = np.where(predicted == "a", 0.8, 0.2)
        frames.append(pd.DataFrame({"request_id": ids, "model_version": version,
                                    "variant": variant, "prediction": predicted,
                                    "proba_a": proba_a, "proba_b": 1 - proba_a}))
        labels.append(pd.DataFrame({"request_id": ids, "label": truth}))
    return pd.concat(frames, ignore_index=True), pd.concat(labels, ignore_index=True)


def test_a_canary_day_has_one_row_per_version_and_variant():
    rows, labels = _day([("1", "champion", 200, 0.95), ("2", "canary", 100, 0.6),
                         ("3", "champion", 150, 0.9)])
    report = live_report(rows, labels)
    table = {(r["model_version"], r["variant"]): r for r in report.per_version}
    assert set(table) == {("1", "champion"), ("2", "canary"), ("3", "champion")}
    for (version, variant), row in table.items():
        part = rows[(rows["model_version"] == version) & (rows["variant"] == variant)]
        expected = float(np.mean(part["prediction"].to_numpy() == labels.set_index(
            "request_id").loc[part["request_id"], "label"].to_numpy()))
        assert row["labelled_rows"] == len(part)
        assert row["accuracy"] == pytest.approx(expected)
    # The headline: the champion as the day ended (version 3), never the pool.
    headline = report.headline
    assert headline["champion_version"] == "3" and headline["labelled_rows"] == 150
    assert headline["accuracy"] == pytest.approx(table[("3", "champion")]["accuracy"])
    pooled = float(np.mean(rows["prediction"].to_numpy() == labels["label"].to_numpy()))
    assert abs(headline["accuracy"] - pooled) > 0.02
    assert headline["all_labelled_rows"] == 450
    assert [(r["model_version"], r["variant"]) for r in report.per_version] == [
        ("1", "champion"), ("3", "champion"), ("2", "canary")]
    assert report.as_value()["per_version"] == report.per_version
    assert "canary" in per_version_markdown(report.per_version)


def test_rows_without_a_variant_are_the_champions_and_no_labels_is_said():
    rows, labels = _day([("4", "champion", 50, 0.8)])
    rows = rows.drop(columns="variant")  # batch or landing rows: scored by the champion
    report = live_report(rows, labels.head(20))
    assert report.headline["champion_version"] == "4"
    assert report.headline["labelled_rows"] == 20
    assert champion_version(rows) == "4"
    empty = live_report(rows, labels.iloc[0:0])
    assert empty.headline == {"labelled_rows": 0} and empty.per_version == []
    assert per_version_markdown([]) == "no labelled rows"


def test_a_regressor_per_version_with_labels_that_are_no_number():
    rows = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "model_version": ["1", "1", "2", "2"],
                         "variant": ["champion", "champion", "canary", "canary"],
                         "prediction": [1.0, 2.0, 3.0, 5.0]})
    labels = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "label": ["1", "4", "x", "4"]})
    report = live_report(rows, labels)
    champion, canary = report.per_version
    assert champion["rmse"] == pytest.approx(np.sqrt(2.0)) and champion["labelled_rows"] == 2
    assert canary["unusable_labels"] == 1 and canary["labelled_rows"] == 1
    assert canary["mae"] == pytest.approx(1.0)
    assert report.headline["task"] == "regression" and report.headline["champion_version"] == "1"
