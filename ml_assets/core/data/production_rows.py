"""Production rows as evidence: kept only when the registered model (and dataset lineage)
being trained or monitored answered them, joined with late labels read file by file (an
unreadable file is left out and named, never the end of the evidence).

Pure pandas: the prediction log, the registry and the folders are read by the callers
(ml_assets/resources/production.py, ml_assets/core/registry/lineage.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ml_assets.core.data.datasets import load_tabular_files

LABEL_COLUMNS = ("request_id", "label")
# At most this many characters of a reader's error in the sentence naming a file.
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class SkippedFile:
    """A labels or landing file left out of the evidence, and why."""

    path: str
    reason: str

    def sentence(self) -> str:
        return f"{self.path}: {self.reason}"


def skipped_sentences(skipped: Iterable[SkippedFile]) -> list[str]:
    return [file.sentence() for file in skipped]


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        text = f"not UTF-8 text ({text})"
    return text[:MAX_REASON_CHARS]


@dataclass(frozen=True)
class Lineage:
    """The rows a model may learn from and be judged on: those answered by `model_name`
    in one of `versions` (the versions trained on `dataset`). `other_versions` says, per
    version of the same registered model outside the lineage, why (another dataset, or
    none recorded)."""

    model_name: str
    dataset: str
    versions: frozenset[str] = frozenset()
    other_versions: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        versions = ", ".join(sorted(self.versions, key=_version_order)) or "none yet"
        return f"{self.model_name!r} on dataset {self.dataset!r} (versions: {versions})"


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


@dataclass(frozen=True)
class ScopedRows:
    """The rows of one lineage, and the count of rows left out per reason."""

    rows: pd.DataFrame
    excluded: dict[str, int]

    @property
    def excluded_rows(self) -> int:
        return sum(self.excluded.values())


def scope_rows(frame: pd.DataFrame, lineage: Lineage) -> ScopedRows:
    """`frame`'s rows answered by the lineage (columns `model_name`, `model_version`),
    in their order and with their attrs. Rows of another registered model, of a version
    outside the lineage, or with no model recorded are left out and counted by reason."""
    if not len(frame):
        return ScopedRows(frame, {})
    attrs = dict(frame.attrs)
    if "model_name" not in frame or "model_version" not in frame:
        return ScopedRows(frame.iloc[0:0], {"no model name or version recorded": len(frame)})
    names = frame["model_name"].astype(str).to_numpy()
    versions = frame["model_version"].astype(str).to_numpy()
    ours = names == lineage.model_name
    admitted = ours & pd.Series(versions).isin(lineage.versions).to_numpy()
    excluded: dict[str, int] = {}
    for name, count in pd.Series(names[~ours]).value_counts().items():
        excluded[f"answered by another registered model ({name!r})"] = int(count)
    outside = ours & ~admitted
    for version, count in pd.Series(versions[outside]).value_counts().items():
        why = lineage.other_versions.get(str(version), "not a registered version")
        excluded[f"version {version} of {lineage.model_name!r} ({why})"] = int(count)
    kept = frame[admitted].reset_index(drop=True)
    kept.attrs.update(attrs)
    return ScopedRows(kept, excluded)


@dataclass(frozen=True)
class LabelFiles:
    """Every readable late label (request_id, label; later files win on duplicates), and
    the files left out with the reason."""

    labels: pd.DataFrame
    skipped: list[SkippedFile]
    files: int


def read_label_files(paths: Iterable[Path]) -> LabelFiles:
    """Read labels files one by one (sorted by name by the caller): a file that cannot
    be read as UTF-8 CSV, or has no request_id and label columns, is skipped and named;
    the others still count."""
    frames, skipped, files = [], [], 0
    for path in paths:
        files += 1
        try:
            frame = pd.read_csv(path, dtype=str, encoding="utf-8")
        except (OSError, ValueError, pd.errors.ParserError) as exc:  # decode errors too
            skipped.append(SkippedFile(str(path), f"cannot be read as CSV: {_reason(exc)}"))
            continue
        missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
        if missing:
            found = ", ".join(map(str, list(frame.columns)[:5])) or "none"
            skipped.append(SkippedFile(str(path), f"has no {' and '.join(missing)} column "
                                       f"(columns found: {found[:120]}); a labels file "
                                       "holds request_id,label"))
            continue
        frames.append(frame[list(LABEL_COLUMNS)])
    if not frames:
        return LabelFiles(pd.DataFrame(columns=list(LABEL_COLUMNS)), skipped, files)
    labels = pd.concat(frames, ignore_index=True).dropna(subset=["request_id"])
    return LabelFiles(labels.drop_duplicates("request_id", keep="last")
                      .reset_index(drop=True), skipped, files)


def labelled_rows(logged: pd.DataFrame, labels: pd.DataFrame, columns: list[str],
                  target: str) -> pd.DataFrame:
    """Logged rows whose label has arrived, as training rows: `columns` (features from
    the log, the label as `target`), in that order."""
    if not len(logged) or not len(labels):
        return pd.DataFrame(columns=columns)
    joined = logged.merge(labels, on="request_id", how="inner", suffixes=("", "_label"))
    label = "label_label" if "label_label" in joined else "label"
    features = [c for c in columns if c != target]
    return joined.reindex(columns=features).assign(
        **{target: joined[label].to_numpy()})[columns]


def read_landing_files(paths: Iterable[Path], target: str) -> tuple[pd.DataFrame,
                                                                   list[SkippedFile]]:
    """A day's labelled drops read file by file (as training reads files): a file that
    cannot be read, has no `target` column, or whose columns differ from the first
    readable file's is skipped and named; the others are concatenated."""
    frames: list[pd.DataFrame] = []
    skipped: list[SkippedFile] = []
    first: Path | None = None
    for path in paths:
        try:
            frame = load_tabular_files(path, target)
        except (OSError, ValueError) as exc:  # DataSourceError, decode and parser errors
            skipped.append(SkippedFile(str(path), f"cannot be used: {_reason(exc)}"))
            continue
        if frames and set(frame.columns) != set(frames[0].columns):
            missing = sorted(set(frames[0].columns) - set(frame.columns))[:5]
            extra = sorted(set(frame.columns) - set(frames[0].columns))[:5]
            skipped.append(SkippedFile(str(path), f"its columns differ from {first}'s "
                                       f"(missing {missing}, extra {extra})"))
            continue
        first = first or Path(path)
        frames.append(frame[list(frames[0].columns)] if frames else frame)
    if not frames:
        return pd.DataFrame(), skipped
    return pd.concat(frames, ignore_index=True), skipped
