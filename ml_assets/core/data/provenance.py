"""What a model was made from: data fingerprint, code version, library versions."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

TRACKED_LIBRARIES = ("scikit-learn", "pandas", "numpy", "scipy", "pandera", "mlflow", "dagster",
                     "skops")


def frame_fingerprint(frame: pd.DataFrame | pd.Series) -> str:
    """SHA-256 over column names, dtypes and values (row order matters).

    Uses pandas' vectorised row hashing, so 1M rows hash in well under a second."""
    digest = hashlib.sha256()
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest.update(rows.tobytes())
    return digest.hexdigest()


def code_version(path: str | Path | None = None) -> str:
    """The git commit of the checkout holding this code ("+dirty" when modified),
    else the installed package version."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=5).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "ml-assets==" + metadata.version("ml-assets")
        except metadata.PackageNotFoundError:
            return "unknown"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
