"""Live performance: one day's production rows joined with their late labels and judged
per model version and variant (a canary day has a row for the champion's version and
one for the canary's), with the champion's own numbers as the headline.

The headline is the champion as the day ended: the rows answered as `champion` by the
version of the day's last champion answer (rows come in the log's order; batch and
landing rows, scored by the champion, after). A day with a promotion shows the outgoing
champion in its own per-version row, never pooled with the new one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml_assets.core.modeling.metrics import classification_metrics
from ml_assets.core.modeling.tasks import regression_metrics

CHAMPION = "champion"  # ml_assets.core.rollout.plan.CHAMPION: rows with no variant too


def join_labels(rows: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """`rows` whose request_id has a late label, the label in `label` (a late label wins
    over a landing row's own)."""
    if not len(rows) or "request_id" not in rows or not len(labels):
        return pd.DataFrame()
    scored = rows.merge(labels[["request_id", "label"]], on="request_id", how="inner",
                        suffixes=("", "_true"))
    if "label_true" in scored:
        scored["label"] = scored.pop("label_true")
    return scored


def metrics_of(scored: pd.DataFrame) -> tuple[dict[str, float], dict[str, Any]]:
    """The metrics of labelled rows and what else they say (`extra`: the task, labels
    that are no number). Numeric predictions are a regressor's: its labels, text in the
    files, are read as numbers and a label that is none is left out and counted."""
    if pd.api.types.is_float_dtype(scored["prediction"]):
        y_num = pd.to_numeric(scored["label"], errors="coerce").to_numpy(dtype=float)
        y_hat = scored["prediction"].to_numpy(dtype=float)
        usable = np.isfinite(y_num) & np.isfinite(y_hat)
        extra: dict[str, Any] = {"task": "regression", "unusable_labels": int((~usable).sum()),
                                 "labelled_rows": int(usable.sum())}
        if not usable.any():
            return {}, extra
        metrics = regression_metrics(y_num[usable], y_hat[usable])
    else:
        proba_columns = [c for c in scored.columns if str(c).startswith("proba_")]
        classes = [str(c).removeprefix("proba_") for c in proba_columns]
        y_true = scored["label"].astype(str).to_numpy()
        y_pred = scored["prediction"].astype(str).to_numpy()
        proba = scored[proba_columns].to_numpy(float) if proba_columns else np.empty((0, 0))
        extra = {"labelled_rows": len(scored)}
        if (proba_columns and set(np.unique(y_true)) <= set(classes)
                and np.isfinite(proba).all()):
            metrics = classification_metrics(y_true, y_pred, proba, classes)
        else:
            metrics = {"accuracy": float(np.mean(y_true == y_pred))}
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}, extra


@dataclass(frozen=True)
class LiveReport:
    """The champion's headline (`labelled_rows` and its metrics), one row per (version,
    variant), and the rows of the day."""

    headline: dict[str, Any]
    per_version: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0

    def as_value(self) -> dict[str, Any]:
        return {**self.headline, "per_version": self.per_version}


def _variants(rows: pd.DataFrame) -> pd.Series:
    if "variant" not in rows:
        return pd.Series(CHAMPION, index=rows.index, dtype=object)
    return rows["variant"].where(rows["variant"].notna(), CHAMPION).astype(str)


def champion_version(rows: pd.DataFrame) -> str | None:
    """The version of the day's last champion answer (None: no champion answered)."""
    if not len(rows) or "model_version" not in rows:
        return None
    champion = rows[(_variants(rows) == CHAMPION).to_numpy()]
    versions = champion["model_version"].dropna()
    return str(versions.iloc[-1]) if len(versions) else None


def _order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def live_report(rows: pd.DataFrame, labels: pd.DataFrame, day_rows: int | None = None,
                champion: str | None = None) -> LiveReport:
    """One day's live performance: per (model version, variant), and the champion's as
    the headline (see the module's docstring). When `rows` holds only some of the day's
    rows (batch rows read back only where labelled): `day_rows`, the day's rows, and
    `champion`, the version of its last champion answer."""
    total = len(rows) if day_rows is None else day_rows
    scored = join_labels(rows, labels)
    if not len(scored):
        return LiveReport({"labelled_rows": 0}, [], total)
    scored = scored.assign(
        model_version=(scored["model_version"].astype(str) if "model_version" in scored
                       else "unknown"),
        variant=_variants(scored).to_numpy())
    per_version = []
    for (version, variant), group in scored.groupby(["model_version", "variant"], sort=False):
        metrics, extra = metrics_of(group)
        per_version.append({"model_version": str(version), "variant": str(variant),
                            **extra, **metrics})
    per_version.sort(key=lambda r: (r["variant"] != CHAMPION, _order(r["model_version"]),
                                    r["variant"]))
    current = champion if champion is not None else champion_version(rows)
    headline: dict[str, Any] = {"labelled_rows": 0}
    for row in per_version:
        if row["variant"] == CHAMPION and row["model_version"] == current:
            headline = {k: v for k, v in row.items() if k not in ("variant",)}
            headline["champion_version"] = headline.pop("model_version")
    headline["all_labelled_rows"] = int(sum(r["labelled_rows"] for r in per_version))
    return LiveReport(headline, per_version, total)


def per_version_markdown(per_version: list[dict[str, Any]]) -> str:
    """The per-(version, variant) rows as a markdown table (metrics to 4 digits)."""
    if not per_version:
        return "no labelled rows"
    return pd.DataFrame(per_version).to_markdown(index=False, floatfmt=".4g")
