"""Pandera schemas: declared for known datasets, inferred and versioned for user data.

The schema is the single source of truth for the feature columns: validation
checks, the MLflow signature and (later) the API request model derive from it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, SyntheticSpec
from ml_assets.core.data.encodings import ENCODING_KEY, ENCODINGS

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
        lines = [
            f"Schema for dataset {self.dataset!r}, version {version}.",
            "Inferred from the first data seen. Edit a copy saved as the next",
            f"version (v{version + 1}.yaml) to tighten or loosen checks; the highest wins.",
            "Columns with a metadata role are validated but not given to the model:",
        ]
        excluded = excluded_columns(schema, target="")
        lines += [f"  {name}: {role} - {column_note(schema.columns[name]) or ''}".rstrip(" -")
                  for name, role in excluded.items()] or ["  (none)"]
        if "datetime" in excluded.values():
            lines += ["Datetime columns are never features: a raw timestamp does not",
                      "generalise to future rows. Add derived columns (month, weekday)",
                      "to the data if they carry signal."]
        header = "".join(f"# {line}\n" for line in lines)
        # Whole or not at all, and never over a file another run wrote meanwhile: the
        # text goes to a temporary file, then is linked in place (FileExistsError if
        # v<N>.yaml appeared in between; the caller reads that one instead).
        temporary = self.directory / f".v{version}.{os.getpid()}.{id(schema)}.tmp"
        text = header + schema_yaml(schema)
        temporary.write_text(text)
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create instead
            with open(path, "x") as handle:
                handle.write(text)
        finally:
            temporary.unlink(missing_ok=True)
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


def schema_reference(schema_file: str | Path | None) -> tuple[str, str | None]:
    """How messages name the schema ("schema v1 (<path>)") and the edit that changes it
    ("copy v1.yaml to v2.yaml"); no edit for declared schemas."""
    if schema_file is None:
        return "the declared schema", None
    path = Path(schema_file)
    match = _VERSION_FILE.match(path.name)
    if not match:
        return f"schema {path}", None
    version = int(match.group(1))
    return (f"schema v{version} ({path})",
            f"copy v{version}.yaml to v{version + 1}.yaml and")


def _rows_and_values(cases: pd.DataFrame, limit: int = 5) -> str:
    rows = [str(int(i) + 1) for i in cases["index"].dropna().head(limit)
            if str(i).lstrip("-").isdigit()]
    values = [repr(str(v)) for v in cases["failure_case"].head(limit)]
    where = f" in data rows {', '.join(rows)}" if rows else ""
    return f"{where} ({', '.join(values)})" if values else where


def _sentence(column: str, check: str, cases: pd.DataFrame, label: str,
              edit: str | None) -> str:
    n = len(cases)
    if check == "column_in_schema":
        fix = f"{edit} add column {column!r}" if edit else "add it to the schema"
        return (f"column {column!r} is in the data but not in {label}: {fix}, or drop it "
                "from the data.")
    if check == "column_in_dataframe":
        fix = f"{edit} remove column {column!r}" if edit else "remove it from the schema"
        return (f"column {column!r} is in {label} but not in the data: {fix}, or add it "
                "back to the data.")
    change = f"or {edit} change the column" if edit else "or change the schema"
    if check.startswith(("coerce_dtype", "dtype", "whole_number")):
        wanted = check[check.find("(") + 1:check.rfind(")")].strip("'") or "its dtype"
        return (f"column {column!r} has {n} value(s) that cannot be read as {wanted}"
                f"{_rows_and_values(cases)}: fix those values (leave a cell empty for a "
                f"missing value), {change}'s dtype in {label}.")
    if check == "not_nullable":
        rows = ", ".join(str(int(i) + 1) for i in cases["index"].dropna().head(5)
                         if str(i).lstrip("-").isdigit())
        return (f"column {column!r} is empty in {n} row(s) (data rows {rows}) but "
                f"{label} does not allow missing values: fill them in, "
                f"{change} to nullable: true.")
    if check.startswith("isin"):
        return (f"column {column!r} has {n} value(s) outside the allowed values of {label}"
                f"{_rows_and_values(cases)}: fix the data, or if they are valid "
                f"{edit or 'change the schema and'} add them to the column's isin list.")
    return (f"column {column!r} fails check {check} of {label} for {n} value(s)"
            f"{_rows_and_values(cases)}: fix the data, {change}'s check.")


def _not_whole_numbers(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Failure cases for integer columns holding fractions (pandas would truncate them)."""
    found = []
    for name, column in schema.columns.items():
        dtype = str(column.dtype).lower()
        if (name in frame.columns and dtype.startswith(("int", "uint"))
                and pd.api.types.is_float_dtype(frame[name])):
            values = frame[name]
            bad = values[values.notna() & (values != values.round())]
            found += [{"column": str(name), "check": f"whole_number({column.dtype})",
                       "failure_case": v, "index": i} for i, v in bad.items()]
    return pd.DataFrame(found, columns=["column", "check", "failure_case", "index"])


def validate_frame(frame: pd.DataFrame, schema: pa.DataFrameSchema, sample_size: int = 20,
                   schema_file: str | Path | None = None
                   ) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate lazily (all errors at once). Returns the coerced frame when valid, the
    input frame otherwise, and a report whose message has one plain sentence per failing
    column and check: what is wrong, where (rows, values) and the one step to fix it."""
    fractions = _not_whole_numbers(frame, schema)
    try:
        validated = schema.validate(frame, lazy=True)
        cases = fractions
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.copy()
        # Schema-level failures (missing or unexpected column) name the column in
        # failure_case; report them under that column.
        schema_level = cases["check"].astype(str).str.contains(
            "column_in_dataframe|column_in_schema")
        cases["column"] = cases["column"].astype(object).where(
            ~schema_level, cases["failure_case"]).astype(str)
        cases = cases[["column", "check", "failure_case", "index"]]
        if len(fractions):
            cases = pd.concat([cases, fractions], ignore_index=True)
    if len(cases):
        cases["check"] = cases["check"].astype(str)
        cases["column"] = cases["column"].astype(str)
        columns = sorted(set(cases["column"].dropna()) - {"None", "nan"})
        checks = sorted(set(cases["check"]))
        label, edit = schema_reference(schema_file)
        sentences = [_sentence(column, check, group, label, edit)
                     for (column, check), group in cases.groupby(["column", "check"],
                                                                 sort=True)]
        sample = cases[["column", "check", "failure_case", "index"]].head(sample_size)
        sample = sample.astype(str)
        return frame, ValidationReport(False, len(frame), columns, checks, sample,
                                       len(cases), " ".join(sentences))
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


def not_features(schema: pa.DataFrameSchema, target: str) -> dict[str, str]:
    """Column -> the sentence saying why it is validated but not given to the model."""
    return {name: column_note(schema.columns[name]) or f"role {role}: not a feature"
            for name, role in excluded_columns(schema, target).items()}


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


MAX_SCHEMA_CHARS = 10_000_000
MAX_NOTE_CHARS = 1_000


def _column_metadata(name, found) -> dict[str, str]:
    """A column's `metadata` from a schema file: only `role` (a known role), `note` (a
    short text) and `encoding` (a known categorical encoding); anything else is refused,
    never passed on."""
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise ValueError(f"column {name!r}: metadata must be a mapping of role, note and "
                         "encoding")
    unknown = sorted(str(k) for k in found if k not in (ROLE_KEY, NOTE_KEY, ENCODING_KEY))
    if unknown:
        raise ValueError(f"column {name!r}: metadata may hold only {ROLE_KEY!r}, "
                         f"{NOTE_KEY!r} and {ENCODING_KEY!r}, not {', '.join(unknown)}")
    encoding = found.get(ENCODING_KEY)
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"column {name!r}: encoding must be one of {', '.join(ENCODINGS)}, "
                         f"not {str(encoding)[:50]!r}")
    role = found.get(ROLE_KEY, FEATURE_ROLE)
    if role not in (FEATURE_ROLE, *EXCLUDED_ROLES):
        raise ValueError(f"column {name!r}: role must be one of "
                         f"{', '.join((FEATURE_ROLE, *EXCLUDED_ROLES))}, not {str(role)[:50]!r}")
    note = found.get(NOTE_KEY)
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        raise ValueError(f"column {name!r}: note must be text of at most {MAX_NOTE_CHARS} "
                         "characters")
    return {k: v for k, v in ((ROLE_KEY, role), (NOTE_KEY, note), (ENCODING_KEY, encoding))
            if v is not None}


def schema_from_yaml(text: str) -> pa.DataFrameSchema:
    """The schema written by `schema_yaml`, from its text only. pandera's own `from_yaml`
    first tries the string as a file path, so text from a model artifact could make it
    read any file on the host; this parses the text (yaml.safe_load) and nothing else."""
    import yaml
    from pandera.io.pandas_io import deserialize_schema

    if not isinstance(text, str):
        raise ValueError(f"a feature schema must be YAML text, not {type(text).__name__}")
    if len(text) > MAX_SCHEMA_CHARS:
        raise ValueError(f"the feature schema is {len(text)} characters long; at most "
                         f"{MAX_SCHEMA_CHARS} are read")
    # Aliases let a few hundred bytes stand for gigabytes once anything walks the
    # document ("billion laughs"); schema_yaml never writes them, so none is accepted.
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError("the feature schema uses YAML aliases (*name), which a schema "
                             "never needs; write the values out")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError("the feature schema is not a YAML mapping")
    metadata = {}
    for name, column in (document.get("columns") or {}).items():
        if isinstance(column, dict) and "metadata" in column:
            metadata[name] = _column_metadata(name, column.pop("metadata"))
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
        dtype = str(column.dtype).lower()
        if dtype.startswith(("float", "int", "uint")):
            kinds[name] = "numeric"
        elif dtype in ("bool", "boolean"):
            kinds[name] = "boolean"
        else:
            kinds[name] = "categorical"
    return kinds


def feature_encodings(schema: pa.DataFrameSchema, target: str) -> dict[str, str]:
    """Categorical feature -> the encoding its schema column records (`encodings`); a
    column without a record is left out (the preprocessor applies the rule to it)."""
    return {name: str(schema.columns[name].metadata[ENCODING_KEY])
            for name, kind in feature_columns(schema, target).items()
            if kind == "categorical" and ENCODING_KEY in (schema.columns[name].metadata or {})}


def model_signature(schema: pa.DataFrameSchema, target: str, output_example=None):
    """The MLflow signature, derived from the schema (inputs) and a prediction sample
    (output): the schema is the one source of truth for feature names and types."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    kinds = {"numeric": "double", "boolean": "boolean", "categorical": "string"}
    def spec_type(name: str, kind: str) -> str:
        # Non-null numpy integers stay long (pyfunc will not cast int64 to double);
        # nullable Int64 columns reach the model as float64 with NaN.
        dtype = str(schema.columns[name].dtype)
        return "long" if kind == "numeric" and dtype.startswith(("int", "uint")) else kinds[kind]

    inputs = Schema([
        ColSpec(spec_type(name, kind), name, required=not schema.columns[name].nullable)
        for name, kind in feature_columns(schema, target).items()])
    outputs = None
    if output_example is not None:
        from mlflow.types.utils import _infer_schema

        outputs = _infer_schema(output_example)
    return ModelSignature(inputs=inputs, outputs=outputs)
