"""A traffic simulator for the prediction API: realistic rows from the dataset,
optionally shifted after a chosen point, with true labels written for later.

Bounded by request count and wall time; talks only to the URL it is given.
"""

from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from ml_assets.core.rollout.plan import CHAMPION, CLIENT_KEY_HEADER


@dataclass
class SimulationResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    shifted: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)
    labels_file: str | None = None
    seconds: float = 0.0
    # Answers per `variant` of the response (champion, canary; "champion" for a service
    # that does not say), and with `client_keys`, the variants each key was answered by
    # (one per key when the assignment is sticky).
    variants: dict[str, int] = field(default_factory=dict)
    key_variants: dict[str, set[str]] = field(default_factory=dict)

    def sticky(self) -> bool:
        """Whether every client key got one variant on all its requests."""
        return all(len(seen) == 1 for seen in self.key_variants.values())


def shift_rows(rows: pd.DataFrame, reference: pd.DataFrame, shift: float,
               share: float = 0.5) -> pd.DataFrame:
    """Add `shift` reference standard deviations to the first `share` of numeric columns
    (clipped at 0 where the reference is non-negative, so the schema still holds)."""
    shifted = rows.copy()
    numeric = [c for c in rows.columns if pd.api.types.is_numeric_dtype(rows[c])]
    for column in numeric[: max(1, int(len(numeric) * share))]:
        moved = shifted[column] + shift * reference[column].std()
        shifted[column] = moved.clip(lower=0) if reference[column].min() >= 0 else moved
    return shifted


def _record(row: pd.Series) -> dict:
    return {k: (None if (isinstance(v, float) and not np.isfinite(v)) else
                v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def simulate(url: str, frame: pd.DataFrame, target: str, requests: int = 200,
             shift_after: int | None = None, shift: float = 0.0, concurrency: int = 4,
             labels_dir: str | Path | None = None, api_key: str | None = None,
             seed: int = 0, max_seconds: float = 300.0,
             client_keys: int = 0) -> SimulationResult:
    """Send `requests` single-row POST /predict calls (rows sampled from `frame`), the
    ones from `shift_after` on shifted by `shift` standard deviations. When
    `labels_dir` is given, the true labels are written there as
    <timestamp>.csv (request_id,label) after the traffic, like labels arriving later.
    `client_keys` N > 0: each request carries `X-Client-Key: client-<k>`, k drawn
    (seeded) from N keys, as clients that keep their rollout variant; 0 sends none."""
    if client_keys < 0:
        raise ValueError(f"client_keys must be >= 0, got {client_keys}")
    rng = np.random.default_rng(seed)
    picks = frame.iloc[rng.integers(0, len(frame), size=requests)].reset_index(drop=True)
    keys = ([f"client-{k}" for k in rng.integers(0, client_keys, size=requests)]
            if client_keys else None)
    features, labels = picks.drop(columns=[target]), picks[target].astype(str)
    if shift_after is not None and shift:
        tail = features.iloc[shift_after:]
        features.iloc[shift_after:] = shift_rows(tail, frame.drop(columns=[target]), shift)
    headers = {"X-API-Key": api_key} if api_key else {}
    result = SimulationResult()
    deadline = time.monotonic() + max_seconds
    started = time.monotonic()
    truth: list[tuple[str, str]] = []

    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0) as client:
        def send(i: int):
            if time.monotonic() > deadline:
                return None
            extra = {CLIENT_KEY_HEADER: keys[i]} if keys is not None else None
            try:
                response = client.post("/predict", json=_record(features.iloc[i]),
                                       headers=extra)
            except httpx.HTTPError:
                return (i, 0, None)
            body = response.json() if response.status_code == 200 else {}
            return (i, response.status_code, body)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for outcome in pool.map(send, range(requests)):
                if outcome is None:
                    continue
                i, status, body = outcome
                result.sent += 1
                result.status_counts[status] = result.status_counts.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    version = str(body.get("model_version"))
                    result.model_versions[version] = result.model_versions.get(version, 0) + 1
                    variant = str(body.get("variant") or CHAMPION)
                    result.variants[variant] = result.variants.get(variant, 0) + 1
                    if keys is not None:
                        result.key_variants.setdefault(keys[i], set()).add(variant)
                    truth.append((body["request_id"], labels.iloc[i]))
                else:
                    result.failed += 1
                if shift_after is not None and shift and i >= shift_after:
                    result.shifted += 1
    result.seconds = time.monotonic() - started
    if labels_dir is not None and truth:
        folder = Path(labels_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = folder / f"labels-{stamp}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "label"])
            writer.writerows(truth)
        result.labels_file = str(path)
    return result
