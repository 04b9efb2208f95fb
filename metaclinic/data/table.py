"""Patient tables (CSV, TSV, Parquet, headerless UCI-style files) read into checked columns.

Every cell is read as text first, so that the configured missing-value markers (``?``, empty, ``NA``) are
recognised exactly and a stray token is reported with its file, column and row instead of becoming a NaN.
Byte-order marks, CRLF line endings and quoted fields are handled by the reader. Rows are numbered from 1
after the header, as a spreadsheet shows them below the header line.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from metaclinic.errors import DataError, MissingDataError

PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_LISTED = 5  # offending rows named in one message


@dataclass
class TableSpec:
    """What a config says about a table: where it is, how to read it and what its columns mean.

    Args:
        path: one file, or ``{site: file}`` for one file per site (the site becomes ``site_column``).
            Relative paths are resolved against the data root.
        label_column: the diagnosis column; in ``label`` task mode, the list of binary label columns.
        feature_columns: the model's inputs; ``None`` takes every column that is not a label, site or patient.
        categorical_columns: features one-hot encoded instead of standardised.
        site_column: the hospital (or scanner, country) of each row.
        patient_column: the patient of each row; one patient's rows are kept together.
        header: whether the first line names the columns.
        column_names: names of the columns (required without a header, renames them with one).
        delimiter: field separator; default ``,`` (tab for ``.tsv``).
        missing_values: cell texts that mean "missing" in every column (compared after stripping spaces).
        column_missing_values: extra markers for single columns, e.g. ``{chol: ["0"]}``.
        positive_above: binarise labels: a row is ``1`` when its numeric label is above this, else ``0``.
    """

    path: str | dict[str, str]
    label_column: str | list[str]
    feature_columns: list[str] | None = None
    categorical_columns: list[str] = field(default_factory=list)
    site_column: str | None = None
    patient_column: str | None = None
    header: bool = True
    column_names: list[str] | None = None
    delimiter: str | None = None
    missing_values: list[str] = field(default_factory=lambda: ["", "?", "NA"])
    column_missing_values: dict[str, list[str]] = field(default_factory=dict)
    positive_above: float | None = None

    @property
    def label_columns(self) -> list[str]:
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)

    @property
    def site_name(self) -> str | None:
        """The site column, which a per-site ``path`` mapping creates (named ``site`` by default)."""
        return self.site_column or ("site" if isinstance(self.path, dict) else None)


@dataclass
class Table:
    """Cells as text (``None`` = missing) with, for every row, the file and row it came from."""

    cells: dict[str, np.ndarray]
    files: list[str]
    file_of_row: np.ndarray
    row_in_file: np.ndarray

    def __len__(self) -> int:
        return len(self.file_of_row)

    def where(self, row: int) -> str:
        return f"{self.files[self.file_of_row[row]]}, row {self.row_in_file[row]}"

    def rows_message(self, rows: np.ndarray) -> str:
        """Names the first offending rows (and how many there are), never their values."""
        named = "; ".join(self.where(int(r)) for r in rows[:MAX_LISTED])
        more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
        return f"{named}{more}"

    def column(self, name: str) -> np.ndarray:
        if name not in self.cells:
            raise DataError(f"{self.files[0]}: no column {name!r}; the table has {list(self.cells)}")
        return self.cells[name]

    def categories(self, name: str) -> np.ndarray:
        """A categorical column (or label) whose numeric texts are written one way: ``1.0`` and ``1`` agree.

        Exports from different systems write the same code differently (one hospital's file has ``4.0``
        where another has ``4``); without this they would become different categories or classes.
        """
        return np.array([None if v is None else _canonical(v) for v in self.column(name)], dtype=object)

    def labels(self, name: str, positive_above: float | None) -> np.ndarray:
        """A label column as text (``None`` = missing); with ``positive_above``, "1" above it and "0" else.

        One definition for training (:class:`TableEpisodes`) and adaptation, so both binarise alike.
        """
        if positive_above is None:
            return self.categories(name)
        values = self.numbers(name)
        labels = np.where(values > positive_above, "1", "0").astype(object)
        labels[np.isnan(values)] = None
        return labels

    def numbers(self, name: str) -> np.ndarray:
        """A column as float64 with NaN where the cell is missing; any other non-number is an error."""
        values = np.full(len(self), np.nan)
        bad, non_finite = [], []
        for row, text in enumerate(self.column(name)):
            if text is None:
                continue
            try:
                value = float(text)
            except ValueError:
                bad.append(row)
                continue
            if math.isfinite(value):
                values[row] = value
            else:
                non_finite.append(row)
        if bad:
            raise DataError(
                f"column {name!r} must be numeric, but {len(bad)} cell(s) are not numbers: "
                f"{self.rows_message(np.array(bad))}. Fix them, list the column in categorical_columns, "
                "or add their text to missing_values."
            )
        if non_finite:
            raise DataError(
                f"column {name!r} has {len(non_finite)} NaN/inf cell(s) that no missing-value marker "
                f"covers: {self.rows_message(np.array(non_finite))}. Add their text (e.g. 'NaN') to "
                "missing_values or column_missing_values."
            )
        return values


def read_table(spec: TableSpec, root: Path) -> Table:
    """Reads the file(s) of ``spec``, marks missing cells and checks that the named columns exist."""
    paths = spec.path if isinstance(spec.path, dict) else {None: spec.path}
    frames, files = [], []
    for site, path in paths.items():
        file = Path(path) if Path(path).is_absolute() else root / path
        frame = _read_frame(file, spec)
        if site is not None:
            frame[spec.site_name] = str(site)
        if frames and list(frame.columns) != list(frames[0].columns):
            raise DataError(
                f"{file}: columns {list(frame.columns)} differ from those of {files[0]}: "
                f"{list(frames[0].columns)}"
            )
        frames.append(frame)
        files.append(str(file))
    file_of_row = np.concatenate([np.full(len(f), i) for i, f in enumerate(frames)])
    row_in_file = np.concatenate([np.arange(1, len(f) + 1) for f in frames])
    frame = pd.concat(frames, ignore_index=True)
    for column in spec.column_missing_values:
        if column not in frame.columns:
            raise DataError(f"column_missing_values names {column!r}, which {files[0]} does not have")
    cells = {
        str(column): _mark_missing(
            frame[column].to_numpy(dtype=object),
            set(spec.missing_values) | set(spec.column_missing_values.get(str(column), [])),
        )
        for column in frame.columns
    }
    table = Table(cells, files, file_of_row, row_in_file)
    for name in (*spec.label_columns, *(spec.feature_columns or []), *spec.categorical_columns):
        table.column(name)
    for name in (spec.site_name, spec.patient_column):
        if name is not None:
            table.column(name)
    return table


def read_header(file: Path, spec: TableSpec) -> list[str]:
    """The column names ``file`` itself gives (before ``column_names``), read without its rows."""
    with _unreadable_as_data_error(file):
        if file.suffix.lower() in PARQUET_SUFFIXES:
            names = pq.read_schema(file).names
        else:
            names = pd.read_csv(file, nrows=1, **_csv_options(file, spec)).columns
    return [str(c).strip() for c in names]


def _read_frame(file: Path, spec: TableSpec) -> pd.DataFrame:
    """One file as a frame of stripped strings; Parquet nulls become ``None``."""
    if not file.is_file():
        raise MissingDataError(
            f"table file not found: {file} (relative paths start at data.init_args.root, by default "
            "$METACLINIC_DATA_DIR, else ./data)"
        )
    with _unreadable_as_data_error(file):
        if file.suffix.lower() in PARQUET_SUFFIXES:
            typed = pd.read_parquet(file)
            frame = pd.DataFrame(
                {c: [None if pd.isna(v) else str(v) for v in typed[c]] for c in typed.columns}, dtype=object
            )
        else:
            options = _csv_options(file, spec)
            frame = pd.read_csv(
                file, keep_default_na=False, na_filter=False, skip_blank_lines=True, **options
            )
    if spec.column_names is not None:
        if len(spec.column_names) != frame.shape[1]:
            raise DataError(
                f"{file}: column_names gives {len(spec.column_names)} names, the file has "
                f"{frame.shape[1]} columns"
            )
        frame.columns = spec.column_names
    elif not spec.header:
        raise DataError(f"{file}: a table without header needs column_names")
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise DataError(f"{file}: duplicated column names {duplicated}")
    return frame


def _csv_options(file: Path, spec: TableSpec) -> dict[str, Any]:
    """How ``pandas.read_csv`` reads ``file``: every cell as text, byte-order mark dropped."""
    separator = spec.delimiter or ("\t" if file.suffix.lower() == ".tsv" else ",")
    return {"sep": separator, "header": 0 if spec.header else None, "dtype": str, "encoding": "utf-8-sig"}


@contextlib.contextmanager
def _unreadable_as_data_error(file: Path) -> Iterator[None]:
    try:
        yield
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{file}: cannot be read as a table: {error}") from None


def _canonical(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def _mark_missing(values: np.ndarray, markers: set[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        text = None if value is None else str(value).strip()
        out[i] = None if text is None or text in markers else text
    return out
