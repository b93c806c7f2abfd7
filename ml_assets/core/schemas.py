"""Pandera schemas: declared for known datasets, inferred and versioned for user data.

The schema is the single source of truth for the feature columns: validation
checks, the MLflow signature and (later) the API request model derive from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from ml_assets.core.datasets import BREAST_CANCER_TARGET, SyntheticSpec

# Features of the breast cancer data that are ratios or normalised shape
# measures and so must lie in [0, 1]; every feature is non-negative.
_UNIT_INTERVAL = ("smoothness", "concave points", "symmetry",
                  "fractal dimension")


def breast_cancer_schema(feature_names: list[str]) -> pa.DataFrameSchema:
    """The declared schema of scikit-learn's breast cancer data."""
    columns = {}
    for name in feature_names:
        checks = [pa.Check.ge(0)]
        if any(name.endswith(word) for word in _UNIT_INTERVAL):
            checks.append(pa.Check.le(1))
        columns[name] = pa.Column(float, checks=checks, nullable=False, coerce=True)
    columns[BREAST_CANCER_TARGET] = pa.Column(
        str, checks=pa.Check.isin(["malignant", "benign"]), nullable=False
    )
    return pa.DataFrameSchema(columns, strict=True, name="breast_cancer", ordered=False)


def synthetic_schema(spec: SyntheticSpec) -> pa.DataFrameSchema:
    """The declared schema of the synthetic generator's output for `spec`."""
    nullable = spec.missing_fraction > 0
    columns = {name: pa.Column(float, nullable=nullable, coerce=True)
               for name in spec.numeric_columns}
    for name in spec.categorical_columns:
        columns[name] = pa.Column(str, checks=pa.Check.isin(spec.category_names),
                                  nullable=nullable)
    columns[spec.target] = pa.Column(str, checks=pa.Check.isin(spec.class_names),
                                     nullable=False)
    return pa.DataFrameSchema(columns, strict=True, name="synthetic", ordered=False)


def infer_schema(frame: pd.DataFrame, target: str, name: str = "inferred",
                 max_categories: int = 50) -> pa.DataFrameSchema:
    """Infer a schema a person can read and edit.

    Numeric columns get their dtype and non-negativity when every observed value
    is non-negative; nullability follows what was observed (edit the file to
    allow missing values later). String columns with few distinct values, and
    the target, get an `isin` check of the observed values.
    """
    columns: dict[str, pa.Column] = {}
    for column in frame.columns:
        series = frame[column]
        nullable = bool(series.isna().any()) and column != target
        if column != target and pd.api.types.is_bool_dtype(series):
            columns[column] = pa.Column(bool, nullable=nullable, coerce=True)
        elif column != target and pd.api.types.is_numeric_dtype(series):
            checks = [pa.Check.ge(0)] if series.min(skipna=True) >= 0 else []
            columns[column] = pa.Column(float, checks=checks, nullable=nullable, coerce=True)
        else:
            values = series.dropna().astype(str).unique()
            checks = []
            if column == target or len(values) <= max_categories:
                checks.append(pa.Check.isin(sorted(values.tolist())))
            columns[column] = pa.Column(str, checks=checks, nullable=nullable, coerce=True)
    return pa.DataFrameSchema(columns, strict=True, name=name, ordered=False)


_VERSION_FILE = re.compile(r"^v(\d+)\.yaml$")


@dataclass
class SchemaStore:
    """Versioned schema files under `root/<dataset>/v<N>.yaml`.

    The highest version wins. To change a schema, copy the latest file to the
    next version and edit it; old versions stay as a record.
    """

    root: Path
    dataset: str
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.dataset

    def versions(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> tuple[int, pa.DataFrameSchema] | None:
        versions = self.versions()
        if not versions:
            return None
        version = versions[-1]
        path = self.directory / f"v{version}.yaml"
        try:
            return version, schema_from_yaml(path.read_text())
        except Exception as exc:  # noqa: BLE001 - a hand-edited file may be broken
            raise ValueError(f"schema file {path} cannot be read: {exc}") from exc

    def write(self, schema: pa.DataFrameSchema) -> tuple[int, Path]:
        versions = self.versions()
        version = (versions[-1] + 1) if versions else 1
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"v{version}.yaml"
        header = (
            f"# Schema for dataset {self.dataset!r}, version {version}.\n"
            "# Inferred from the first data seen. Edit a copy saved as the next\n"
            "# version (v<N+1>.yaml) to tighten or loosen checks; the highest wins.\n"
        )
        path.write_text(header + schema_yaml(schema))
        return version, path


@dataclass(frozen=True)
class ValidationReport:
    """What a validation found, in a form that fits asset-check metadata."""

    passed: bool
    n_rows: int
    failing_columns: list[str]
    failing_checks: list[str]
    failure_sample: pd.DataFrame
    n_failures: int
    message: str


def validate_frame(frame: pd.DataFrame, schema: pa.DataFrameSchema,
                   sample_size: int = 20) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate lazily (all errors at once). Returns the coerced frame when valid,
    the input frame otherwise, and a report that names every failing column/check."""
    try:
        validated = schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.copy()
        # Schema-level failures (missing or unexpected column) name the column in
        # failure_case; report them under that column.
        schema_level = cases["check"].astype(str).str.contains(
            "column_in_dataframe|column_in_schema")
        cases["column"] = cases["column"].astype(object).where(
            ~schema_level, cases["failure_case"]).astype(str)
        columns = sorted(set(cases["column"].dropna().astype(str)) - {"None", "nan"})
        checks = sorted(set(cases["check"].astype(str)))
        sample = cases[["column", "check", "failure_case", "index"]].head(sample_size)
        sample = sample.astype(str)
        message = (f"{len(cases)} validation failure(s) in column(s) {', '.join(columns) or '-'}: "
                   f"checks {', '.join(checks)}")
        return frame, ValidationReport(False, len(frame), columns, checks, sample,
                                       len(cases), message)
    except pa.errors.SchemaError as exc:  # pragma: no cover - lazy mode raises SchemaErrors
        return frame, ValidationReport(False, len(frame), [], [str(exc)], pd.DataFrame(), 1,
                                       str(exc))
    empty = pd.DataFrame(columns=["column", "check", "failure_case", "index"])
    return validated, ValidationReport(True, len(frame), [], [], empty, 0,
                                       f"{len(frame)} rows passed {len(schema.columns)} columns")


# A column's role rides in its `metadata` (pandera keeps metadata in memory but does not
# write it to YAML; `schema_yaml` and `schema_from_yaml` carry it). Columns without a
# role are features. Every other role is validated but never given to the model.
ROLE_KEY = "role"
NOTE_KEY = "note"
FEATURE_ROLE = "feature"
EXCLUDED_ROLES = ("identifier", "constant", "datetime", "free_text")


def column_role(column: pa.Column) -> str:
    """"feature", or why the column is validated but not used as a feature
    (one of EXCLUDED_ROLES)."""
    role = (column.metadata or {}).get(ROLE_KEY, FEATURE_ROLE)
    return str(role)


def column_note(column: pa.Column) -> str | None:
    """The sentence inference wrote about the column (why it is excluded or flagged)."""
    note = (column.metadata or {}).get(NOTE_KEY)
    return None if note is None else str(note)


def excluded_columns(schema: pa.DataFrameSchema, target: str) -> dict[str, str]:
    """Column -> role, for every non-target column that is not a feature."""
    return {str(name): column_role(column) for name, column in schema.columns.items()
            if name != target and column_role(column) != FEATURE_ROLE}


def schema_yaml(schema: pa.DataFrameSchema) -> str:
    """The schema as YAML text, each column's `metadata` (its role and note) included."""
    import yaml
    from pandera.io.pandas_io import serialize_schema

    document = serialize_schema(schema)
    for name, column in schema.columns.items():
        if column.metadata:
            document["columns"][name]["metadata"] = {
                str(k): (v if isinstance(v, (str, int, float, bool)) else str(v))
                for k, v in column.metadata.items()}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def schema_from_yaml(text: str) -> pa.DataFrameSchema:
    """The schema written by `schema_yaml`, from its text only. pandera's own `from_yaml`
    first tries the string as a file path, so text from a model artifact could make it
    read any file on the host; this parses the text (yaml.safe_load) and nothing else."""
    import yaml
    from pandera.io.pandas_io import deserialize_schema

    if not isinstance(text, str):
        raise ValueError(f"a feature schema must be YAML text, not {type(text).__name__}")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError("the feature schema is not a YAML mapping")
    metadata = {}
    for name, column in (document.get("columns") or {}).items():
        if isinstance(column, dict) and "metadata" in column:
            found = column.pop("metadata")
            if found is not None and not isinstance(found, dict):
                raise ValueError(f"column {name!r}: metadata must be a mapping")
            metadata[name] = found or {}
    schema = deserialize_schema(document)
    if metadata:
        schema = schema.update_columns({name: {"metadata": value}
                                        for name, value in metadata.items()})
    return schema


def feature_columns(schema: pa.DataFrameSchema, target: str) -> dict[str, str]:
    """Feature name -> kind ("numeric", "categorical" or "boolean"), in schema order;
    columns whose role is not "feature" (identifiers, constants, datetimes, free text) are
    left out."""
    kinds = {}
    for name, column in schema.columns.items():
        if name == target or column_role(column) != FEATURE_ROLE:
            continue
        dtype = str(column.dtype)
        if dtype.startswith(("float", "int", "uint")):
            kinds[name] = "numeric"
        elif dtype == "bool":
            kinds[name] = "boolean"
        else:
            kinds[name] = "categorical"
    return kinds


def model_signature(schema: pa.DataFrameSchema, target: str, output_example=None):
    """The MLflow signature, derived from the schema (inputs) and a prediction sample
    (output): the schema is the one source of truth for feature names and types."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    kinds = {"numeric": "double", "boolean": "boolean", "categorical": "string"}
    inputs = Schema([
        ColSpec(kinds[kind], name, required=not schema.columns[name].nullable)
        for name, kind in feature_columns(schema, target).items()])
    outputs = None
    if output_example is not None:
        from mlflow.types.utils import _infer_schema

        outputs = _infer_schema(output_example)
    return ModelSignature(inputs=inputs, outputs=outputs)
