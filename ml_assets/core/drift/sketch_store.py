"""Drift sketches kept as files: a production day's or a batch shard's sketch written
atomically beside its data, read back, and the champion's reference profile they are
built against read from its MLflow run."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import pandas as pd

from ml_assets.core.drift.check import judged_answers
from ml_assets.core.drift.profile import ReferenceProfile
from ml_assets.core.drift.sketch import DriftSketch, sketch_basis, sketch_frame

PROFILE_ARTIFACT = "reference_profile/profile.npz"
SUFFIX = ".sketch.npz"


@dataclass(frozen=True)
class SketchBasis:
    """The profile a sketch is built against and the model version whose answers its
    prediction columns hold (`judged_answers`)."""

    profile: ReferenceProfile
    version: str | None

    @property
    def digest(self) -> str:
        return sketch_basis(self.profile)

    def sketch(self, rows: pd.DataFrame) -> DriftSketch:
        """The sketch drift scoring reads for `rows`: features of every row, model
        outputs of the rows this version answered as champion."""
        outputs = [c for c in dict.fromkeys((*self.profile.predictions, "variant",
                                             "model_version"))
                   if c in rows.columns]  # the answers only, not a copy of the features
        return sketch_frame(self.profile, rows, judged_answers(rows[outputs], self.version))


@lru_cache(maxsize=8)
def run_profile(tracking_uri: str, run_id: str) -> ReferenceProfile:
    """The reference profile stored with MLflow run `run_id` (raises when it has none)."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROFILE_ARTIFACT,
                                                tracking_uri=tracking_uri)
    return ReferenceProfile.from_bytes(Path(local).read_bytes())


class Sketch(Protocol):
    """A sketch kept as a file: a drift sketch, a score sketch, a day's score sketches."""

    def to_bytes(self) -> bytes: ...


def write_sketch(path: Path, sketch: Sketch) -> Path:
    """`sketch` at `path`, whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(sketch.to_bytes())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_day_sketch(folder: Path, name: str, sketch: Sketch) -> Path:
    """A day's sketch as `folder`/`name`.sketch.npz, the folder's other sketches removed
    (a rebuilt day's older sketch: its materialization is superseded; a reader that
    still names it finds no file and loads the day's rows instead)."""
    path = write_sketch(folder / f"{name}{SUFFIX}", sketch)
    for other in folder.glob(f"*{SUFFIX}"):
        if other != path:
            other.unlink(missing_ok=True)
    return path


def read_sketch(path: str | Path) -> DriftSketch:
    return DriftSketch.from_bytes(Path(path).read_bytes())
