"""The data-source resource: packaged dataset, user files, or a synthetic generator."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
import pandera.pandas as pa
from dagster import ConfigurableResource
from pydantic import Field

from ml_assets.core.data import datasets, schemas
from ml_assets.core.data.schema_inference import checked_schema
from ml_assets.settings import PlatformSettings


class DataSourceResource(ConfigurableResource):
    """Loads the raw frame and says which schema governs it."""

    kind: Literal["breast_cancer", "files", "synthetic"] = Field(
        default="breast_cancer",
        description="breast_cancer: scikit-learn's packaged dataset; files: a CSV/Parquet "
        "file or a directory of them; synthetic: a seeded generator.")
    path: str = Field(default="", description="File or directory to read when kind=files.")
    target: str = Field(default="", description="Target column (kind=files; default "
                        "'diagnosis' for breast_cancer, 'label' for synthetic).")
    dataset_name: str = Field(default="", description="Name used for the schema file; "
                              "defaults to the file or directory name.")
    schema_dir: str = Field(default=".ml_platform/schemas",
                            description="Where inferred schemas are versioned (v<N>.yaml).")
    csv_delimiter: str = Field(default="", description="CSV delimiter (, ; \\t |); empty: "
                               "sniffed from the file. ML_CSV_DELIMITER.")
    csv_decimal: str = Field(default="", description="CSV decimal mark (. or ,); empty: "
                             "sniffed (a comma when ';'-separated numbers look like 1,5).")
    csv_encoding: str = Field(default="", description="CSV text encoding; empty: UTF-8 "
                              "(with or without BOM), else detected.")
    task: str = Field(default="", description="How a new schema reads the target: auto "
                      "(a numeric target with many distinct or fractional values is a "
                      "regression target: float64), classification, binary, multiclass or "
                      "regression; empty: ML_TASK (auto).")
    n_rows: int = Field(default=10_000, description="synthetic: rows.")
    n_numeric: int = Field(default=20, description="synthetic: numeric features.")
    n_categorical: int = Field(default=0, description="synthetic: categorical features.")
    n_classes: int = Field(default=2, description="synthetic: classes.")
    missing_fraction: float = Field(default=0.0, description="synthetic: share of cells "
                                    "left missing.")
    shift: float = Field(default=0.0, description="synthetic: covariate shift in standard "
                         "deviations, added to half the numeric features.")
    class_sep: float = Field(default=1.0, description="synthetic: spread of class centroids.")
    seed: int = Field(default=0, description="synthetic: generator seed.")

    def spec(self) -> datasets.SyntheticSpec:
        return datasets.SyntheticSpec(
            n_rows=self.n_rows, n_numeric=self.n_numeric, n_categorical=self.n_categorical,
            n_classes=self.n_classes, missing_fraction=self.missing_fraction, shift=self.shift,
            class_sep=self.class_sep, seed=self.seed, target=self.target or "label")

    @property
    def target_column(self) -> str:
        if self.kind == "breast_cancer":
            return datasets.BREAST_CANCER_TARGET
        if self.kind == "synthetic":
            return self.target or "label"
        if not self.target:
            raise datasets.DataSourceError("kind=files needs `target`, the label column's name")
        return self.target

    @property
    def name(self) -> str:
        if self.dataset_name:
            return self.dataset_name
        if self.kind == "files":
            return Path(self.path).stem or "files"
        return self.kind

    def load(self) -> pd.DataFrame:
        if self.kind == "breast_cancer":
            return datasets.load_breast_cancer_frame()
        if self.kind == "synthetic":
            return datasets.make_synthetic(self.spec())
        if not self.path:
            raise datasets.DataSourceError("kind=files needs `path`, a file or directory")
        return datasets.load_tabular_files(self.path, self.target_column, datasets.CsvOptions(
            delimiter=self.csv_delimiter, decimal=self.csv_decimal,
            encoding=self.csv_encoding))

    def schema_for(self, frame: pd.DataFrame) -> tuple[pa.DataFrameSchema, str]:
        """The governing schema and where it came from (declared, or a versioned file,
        inferred from `frame` and written on first use). Inference that cannot give a
        usable schema raises SchemaInferenceError and writes nothing."""
        if self.kind == "breast_cancer":
            features = [c for c in datasets.load_breast_cancer_frame().columns
                        if c != datasets.BREAST_CANCER_TARGET]
            return schemas.breast_cancer_schema(features), "declared: breast_cancer"
        if self.kind == "synthetic":
            return schemas.synthetic_schema(self.spec()), "declared: synthetic generator"
        store = schemas.SchemaStore(Path(self.schema_dir), self.name)
        latest = store.latest()
        if latest is not None:
            version, schema = latest
            return schema, f"file: {store.directory / f'v{version}.yaml'}"
        inferred = checked_schema(frame, self.target_column, name=self.name,
                                  where=self.path or self.name,
                                  task=self.task or PlatformSettings.from_env().task)
        try:
            _, path = store.write(inferred)
        except FileExistsError:  # another run wrote the first version meanwhile: use it
            latest = store.latest()
            if latest is None:
                raise
            version, schema = latest
            return schema, f"file: {store.directory / f'v{version}.yaml'}"
        return inferred, f"inferred and written: {path}"

    def schema_file(self, origin: str) -> str | None:
        """The schema file named in `origin` (as `schema_for` returns it), if any."""
        for prefix in ("file: ", "inferred and written: "):
            if origin.startswith(prefix):
                return origin[len(prefix):]
        return None
