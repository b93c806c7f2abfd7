"""Where raw data comes from: a packaged dataset, user files, or a generator."""

from __future__ import annotations

import codecs
import csv
import datetime
import decimal
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BREAST_CANCER_TARGET = "diagnosis"


class DataSourceError(ValueError):
    """Raised when a data source cannot produce a usable frame; the message says why."""


def load_breast_cancer_frame() -> pd.DataFrame:
    """scikit-learn's breast cancer data (569 rows, 30 named numeric features).

    It ships inside scikit-learn, so nothing is downloaded. The target column
    `diagnosis` holds the class names ("malignant"/"benign").
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    names = np.asarray(bunch.target_names)
    frame[BREAST_CANCER_TARGET] = names[frame.pop("target").to_numpy()]
    return frame


_SUFFIXES = (".csv", ".parquet", ".pq")
_DELIMITERS = (",", ";", "\t", "|")
_DATE_LIKE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"
                        r"([T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$")
_DECIMAL_COMMA = re.compile(r"^-?\d+,\d+$")


@dataclass(frozen=True)
class CsvOptions:
    """CSV dialect overrides; an empty field is sniffed from the file."""

    delimiter: str = ""
    decimal: str = ""
    encoding: str = ""


def _delimiter(value: str) -> str:
    # A delimiter given as the two characters backslash-t (or the word tab) means tab.
    return "\t" if value in ("\\t", "tab", "TAB") else value


def _encoding(file: Path, head: bytes) -> str:
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    # Not UTF-8: most such tables come from spreadsheet exports in Windows-1252 (a
    # superset of Latin-1 for text). Take it when every byte decodes to a printable
    # character; a statistical guess between similar 8-bit code pages would silently
    # turn Genève into Genčve.
    try:
        text = head.decode("cp1252")
        if all(ch.isprintable() or ch in "\r\n\t" for ch in text):
            return "cp1252"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(head).best()
    if best is None:
        raise DataSourceError(f"could not tell the text encoding of {file}: save it as UTF-8, "
                              "or set csv_encoding (ML_CSV_ENCODING)")
    return str(best.encoding)


def sniff_csv(file: Path, options: CsvOptions | None = None) -> CsvOptions:
    """The file's delimiter (, ; tab |), decimal mark and encoding, overrides first."""
    options = options or CsvOptions()
    with open(file, "rb") as handle:
        head = handle.read(1 << 16)
    if not head:
        raise DataSourceError(f"{file} is empty (0 bytes): write a header row and data rows "
                              "into it, or remove it")
    if head.startswith(b"PAR1"):
        raise DataSourceError(f"{file} is a Parquet file with a .csv name: rename it to "
                              f"{file.with_suffix('.parquet').name}")
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataSourceError(f"{file} is not a CSV text file (it holds binary data): export "
                              "the table as CSV or Parquet")
    encoding = options.encoding or _encoding(file, head)
    text = head.decode(encoding, errors="ignore")
    lines = [line for line in text.splitlines()[:50] if line.strip()]
    if len(lines) > 2:
        lines = lines[:-1]  # the chunk may cut the last line
    delimiter = _delimiter(options.delimiter)
    if not delimiter:
        def widths(candidate: str) -> list[int]:
            return [len(row) for row in csv.reader(lines, delimiter=candidate)]

        scores = {c: widths(c) for c in _DELIMITERS}
        consistent = [c for c, w in scores.items() if w and min(w) > 1 and len(set(w)) == 1]
        pool = consistent or [c for c, w in scores.items() if w and max(w) > 1]
        delimiter = max(pool, key=lambda c: max(scores[c])) if pool else ","
    decimal = options.decimal
    if not decimal:
        fields = [f.strip() for row in csv.reader(lines[1:], delimiter=delimiter) for f in row]
        decimal = "," if delimiter != "," and any(_DECIMAL_COMMA.match(f) for f in fields) \
            else "."
    return CsvOptions(delimiter=delimiter, decimal=decimal, encoding=encoding)


def _read_csv(file: Path, options: CsvOptions) -> pd.DataFrame:
    dialect = sniff_csv(file, options)
    try:
        return pd.read_csv(file, sep=dialect.delimiter, decimal=dialect.decimal,
                           encoding=dialect.encoding)
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"{file} holds no header row: write the column names on the "
                              "first line") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        shown = {"\t": "tab"}.get(dialect.delimiter, dialect.delimiter)
        reason = str(exc).strip().splitlines()[0]
        raise DataSourceError(
            f"could not read {file} as CSV with delimiter {shown!r} and encoding "
            f"{dialect.encoding} ({reason}): fix the file, or set csv_delimiter / "
            "csv_encoding (ML_CSV_DELIMITER, ML_CSV_ENCODING)") from None


def _read_parquet(file: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; re-raised in words
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise DataSourceError(f"could not read {file} as Parquet ({reason}): export it "
                              "again as Parquet or CSV") from None


def _has_tz(values: pd.Series) -> bool:
    return bool(values.map(lambda v: getattr(v, "tzinfo", None) is not None).any())


def parse_dates(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every non-null value is a year-first date or timestamp
    (2012-01-31, 2012/01/31, 2012-01-31T08:00:00+01:00) become datetime64; others stay
    text. Day-first dates (31/01/2012) are ambiguous and stay text."""
    for column in frame.columns:
        series = frame[column]
        if not (series.dtype == object or pd.api.types.is_string_dtype(series)):
            continue
        values = series.dropna()
        if len(values) and values.map(
                lambda v: isinstance(v, (datetime.date, datetime.datetime))).all():
            # Parquet date32 / Python date objects: dates, not text
            frame[column] = pd.to_datetime(series, utc=_has_tz(values))
            continue
        if len(values) and values.map(lambda v: isinstance(v, decimal.Decimal)).all():
            frame[column] = pd.to_numeric(series).astype("float64")  # Parquet decimals
            continue
        if not len(values) or not values.map(lambda v: isinstance(v, str)).all():
            continue
        text = values.str.strip()
        if not text.str.match(_DATE_LIKE).all():
            continue
        text = text.str.replace(r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})", r"\1-\2-\3",
                                regex=True)
        try:
            parsed = pd.to_datetime(text, format="ISO8601")
            if parsed.dtype == object:  # several UTC offsets: one UTC column
                parsed = pd.to_datetime(text, format="ISO8601", utc=True)
        except (ValueError, TypeError):
            continue
        frame[column] = parsed.reindex(series.index)
    return frame


def _read(file: Path, csv_options: CsvOptions) -> pd.DataFrame:
    if file.suffix.lower() == ".csv":
        frame = _read_csv(file, csv_options)
    else:
        frame = _read_parquet(file)
    return parse_dates(frame)


def _match_columns(files: list[Path], frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Reorder every frame to the first file's column order; different sets are an error."""
    columns = list(frames[0].columns)
    matched = []
    for file, frame in zip(files, frames, strict=True):
        missing = [c for c in columns if c not in frame.columns]
        extra = [c for c in frame.columns if c not in columns]
        if missing or extra:
            parts = ([f"missing {', '.join(repr(c) for c in missing)}"] if missing else []) + (
                [f"extra {', '.join(repr(c) for c in extra)}"] if extra else [])
            raise DataSourceError(
                f"{file} does not have the same columns as {files[0]} ({'; '.join(parts)}): "
                f"give every file in {file.parent} the same columns (their order does not "
                "matter)")
        matched.append(frame[columns])
    return matched


def load_tabular_files(path: str | Path, target: str,
                       csv_options: CsvOptions | None = None) -> pd.DataFrame:
    """Read one CSV/Parquet file, or every such file in a directory (sorted by name).

    CSV dialect and encoding are sniffed unless `csv_options` says otherwise; files in a
    directory are matched by column name. A `source_file` column is not added so that
    the schema stays the user's own.
    """
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"data path {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES)
        if not files:
            raise DataSourceError(f"directory {path} holds no .csv or .parquet files")
    else:
        if path.suffix.lower() not in _SUFFIXES:
            raise DataSourceError(f"{path} is not a .csv or .parquet file")
        files = [path]
    frames = _match_columns(files, [_read(f, csv_options or CsvOptions()) for f in files])
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frame) == 0:
        where = f"every file in {path}" if path.is_dir() else str(path)
        raise DataSourceError(f"{where} has a header but 0 data rows: add rows below the "
                              "header and run again")
    if target not in frame.columns:
        raise DataSourceError(unknown_column_message(target, list(frame.columns), str(path)))
    return frame


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic classification dataset."""

    n_rows: int = 10_000
    n_numeric: int = 20
    n_categorical: int = 0
    n_classes: int = 2
    n_categories: int = 5
    missing_fraction: float = 0.0
    shift: float = 0.0
    class_sep: float = 1.0
    seed: int = 0
    target: str = "label"

    @property
    def numeric_columns(self) -> list[str]:
        return [f"num_{i:02d}" for i in range(self.n_numeric)]

    @property
    def categorical_columns(self) -> list[str]:
        return [f"cat_{i:02d}" for i in range(self.n_categorical)]

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self.n_classes)]

    @property
    def category_names(self) -> list[str]:
        return [f"c{i}" for i in range(self.n_categories)]


def make_synthetic(spec: SyntheticSpec) -> pd.DataFrame:
    """A seeded classification frame: class-dependent Gaussian numerics, categoricals
    whose frequencies depend on the class, optional missing values, and an optional
    covariate shift (`shift` standard deviations added to the first half of the
    numeric columns) for drift demos. Same spec, same frame, bit for bit.
    """
    if spec.n_rows < 1 or spec.n_classes < 2 or spec.n_numeric + spec.n_categorical < 1:
        raise DataSourceError(
            "synthetic data needs n_rows >= 1, n_classes >= 2 and at least one feature"
        )
    rng = np.random.default_rng(spec.seed)
    y = rng.integers(0, spec.n_classes, size=spec.n_rows)
    # Class centroids drawn once; float32 draws keep 1M x 30 cheap in memory.
    centroids = rng.normal(0.0, spec.class_sep, size=(spec.n_classes, spec.n_numeric))
    numeric = rng.standard_normal((spec.n_rows, spec.n_numeric), dtype=np.float32)
    numeric += centroids[y].astype(np.float32)
    if spec.shift:
        numeric[:, : max(1, spec.n_numeric // 2)] += np.float32(spec.shift)
    data: dict[str, np.ndarray] = {
        name: numeric[:, i].astype(np.float64) for i, name in enumerate(spec.numeric_columns)
    }
    categories = np.asarray(spec.category_names, dtype=object)
    for name in spec.categorical_columns:
        # Each class prefers a different category, so categoricals carry signal.
        preferred = rng.integers(0, spec.n_categories, size=spec.n_classes)
        noise = rng.integers(0, spec.n_categories, size=spec.n_rows)
        codes = np.where(rng.random(spec.n_rows) < 0.6, preferred[y], noise)
        data[name] = categories[codes]
    frame = pd.DataFrame(data)
    if spec.missing_fraction > 0:
        feature_names = list(frame.columns)
        mask = rng.random((spec.n_rows, len(feature_names))) < spec.missing_fraction
        for i, name in enumerate(feature_names):
            frame.loc[mask[:, i], name] = np.nan if frame[name].dtype.kind == "f" else None
    frame[spec.target] = np.asarray(spec.class_names, dtype=object)[y]
    return frame


def unknown_column_message(target: str, columns: list, where: str) -> str:
    """The target is not a column: list the columns and suggest the closest name."""
    import difflib

    names = [str(c) for c in columns]
    close = difflib.get_close_matches(str(target), names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"target column {target!r} is not in {where}; its columns are "
            f"{', '.join(repr(n) for n in names)}.{hint} Set the target to one of these "
            "columns.")
