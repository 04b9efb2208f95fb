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

from metaclinic.data.problems import MAX_LISTED, Problems
from metaclinic.errors import DataError, MissingDataError

PARQUET_SUFFIXES = (".parquet", ".pq")
ROLES_TO_DROP = ("site", "label")  # what drop_rows_missing may name


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
        column_missing_values: extra markers for single columns, added to ``missing_values``, e.g.
            ``{chol: ["0"]}``.
        column_missing_values_only: markers for single columns that *replace* ``missing_values`` there, e.g.
            ``{sex: [""]}`` so that a ``?`` in ``sex`` is a value, not a missing cell.
        exclude_columns: columns that are never features (when ``feature_columns`` is ``None``).
        positive_above: binarise numeric labels: a row is ``1`` when its label is above this, else ``0``.
        positive_values: binarise text labels: a row is ``1`` when its label is one of these, else ``0``.
        negative_values: binarise text labels: a row is ``0`` when its label is one of these, else ``1``
            (with ``positive_values`` too, a label in neither list is an error).
        drop_rows_missing: ``site`` and/or ``label``: rows whose site (or label) is missing are dropped,
            with their count logged, instead of stopping set-up.
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
    column_missing_values_only: dict[str, list[str]] = field(default_factory=dict)
    exclude_columns: list[str] = field(default_factory=list)
    positive_above: float | None = None
    positive_values: list[str] | None = None
    negative_values: list[str] | None = None
    drop_rows_missing: list[str] = field(default_factory=list)

    @property
    def label_columns(self) -> list[str]:
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)

    @property
    def site_name(self) -> str | None:
        """The site column, which a per-site ``path`` mapping creates (named ``site`` by default)."""
        return self.site_column or ("site" if isinstance(self.path, dict) else None)

    @property
    def binarised(self) -> bool:
        """Whether labels become ``0``/``1`` (by positive_above, positive_values or negative_values)."""
        text_rule = self.positive_values is not None or self.negative_values is not None
        return self.positive_above is not None or text_rule

    def config_problems(self) -> list[str]:
        """Settings that contradict each other, whatever the table holds."""
        problems = []
        text_rule = self.positive_values is not None or self.negative_values is not None
        if self.positive_above is not None and text_rule:
            problems.append(
                "table.positive_above (numeric labels) and positive_values/negative_values (text labels) "
                "both binarise the label; give one of them"
            )
        unknown = [r for r in self.drop_rows_missing if r not in ROLES_TO_DROP]
        if unknown:
            problems.append(f"table.drop_rows_missing: unknown {unknown}; it takes {list(ROLES_TO_DROP)}")
        if "site" in self.drop_rows_missing and self.site_name is None:
            problems.append("table.drop_rows_missing names 'site', but the table has no site_column")
        both = sorted(set(self.exclude_columns) & set(self.feature_columns or []))
        if both:
            problems.append(f"table.exclude_columns and table.feature_columns both name {both}")
        return problems

    def markers(self, column: str) -> set[str]:
        """The cell texts that mean "missing" in ``column``."""
        base = self.column_missing_values_only.get(column, self.missing_values)
        return set(base) | set(self.column_missing_values.get(column, []))


@dataclass
class Table:
    """Cells as text (``None`` = missing) with, for every row, the file and row it came from."""

    cells: dict[str, np.ndarray]
    files: list[str]
    file_of_row: np.ndarray
    row_in_file: np.ndarray

    def __len__(self) -> int:
        return len(self.file_of_row)

    def subset(self, rows: np.ndarray) -> Table:
        """The table of ``rows`` only, each still named by its file and row."""
        cells = {name: values[rows] for name, values in self.cells.items()}
        return Table(cells, self.files, self.file_of_row[rows], self.row_in_file[rows])

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

    def labels(self, name: str, spec: TableSpec) -> np.ndarray:
        """A label column as text (``None`` = missing), binarised to ``"1"``/``"0"`` as ``spec`` says.

        One definition for training (:class:`TableEpisodes`) and adaptation, so both binarise alike.
        """
        if spec.positive_above is not None:
            values, bad, _ = self.parse_numbers(name)
            if bad.size:
                raise DataError(
                    f"label column {name!r} has {bad.size} text cell(s) ({self.rows_message(bad)}), which "
                    "positive_above (for numeric labels) cannot binarise; say which values are positive with "
                    "table.positive_values, or which are negative with table.negative_values"
                )
            labels = np.where(values > spec.positive_above, "1", "0").astype(object)
            labels[np.isnan(values)] = None
            return labels
        values = self.categories(name)
        if spec.positive_values is None and spec.negative_values is None:
            return values
        positive = {_canonical(v) for v in spec.positive_values or []}
        negative = {_canonical(v) for v in spec.negative_values or []}
        present = np.array([v is not None for v in values])
        is_positive = np.array([v in positive for v in values])
        is_negative = np.array([v in negative for v in values])
        if spec.positive_values is None:
            is_positive = present & ~is_negative
        elif spec.negative_values is None:
            is_negative = present & ~is_positive
        neither = np.flatnonzero(present & ~is_positive & ~is_negative)
        if neither.size:
            raise DataError(
                f"label column {name!r}: {neither.size} row(s) have a value in neither positive_values nor "
                f"negative_values: {self.rows_message(neither)}; add it to one of them"
            )
        labels = np.where(is_positive, "1", "0").astype(object)
        labels[~present] = None
        return labels

    def numbers(self, name: str) -> np.ndarray:
        """A column as float64 with NaN where the cell is missing; any other non-number is an error."""
        values, bad, non_finite = self.parse_numbers(name)
        problem = number_problem(self, name, bad, non_finite)
        if problem:
            raise DataError(problem)
        return values

    def parse_numbers(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A column as float64 (NaN = missing or not a number), the rows that are not numbers and the
        rows that are NaN or infinite although no missing-value marker covers them."""
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
        return values, np.array(bad, dtype=np.int64), np.array(non_finite, dtype=np.int64)


def number_problem(table: Table, name: str, bad: np.ndarray, non_finite: np.ndarray) -> str | None:
    """What is wrong with numeric column ``name`` (rows of text cells, of NaN/inf cells), if anything."""
    if bad.size:
        return (
            f"column {name!r} must be numeric, but {bad.size} cell(s) are not numbers: "
            f"{table.rows_message(bad)}. Fix them, list the column in categorical_columns, "
            "or add their text to missing_values (or column_missing_values)."
        )
    if non_finite.size:
        return (
            f"column {name!r} has {non_finite.size} NaN/inf cell(s) that no missing-value marker "
            f"covers: {table.rows_message(non_finite)}. Add their text (e.g. 'NaN') to "
            "missing_values or column_missing_values."
        )
    return None


def read_table(spec: TableSpec, root: Path) -> Table:
    """Reads the file(s) of ``spec``, marks missing cells and checks that the named columns exist.

    Every problem of every file (missing, empty, unreadable, other columns, unknown column names) is
    reported in one :class:`DataError`.
    """
    paths = spec.path if isinstance(spec.path, dict) else {None: spec.path}
    frames, files, problems, missing_files = [], [], Problems(), []
    for site, path in paths.items():
        file = Path(path) if Path(path).is_absolute() else root / path
        if not file.is_file():
            missing_files.append(str(file))
            continue
        with problems.collect():
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
    if missing_files:
        message = (
            f"table file(s) not found: {', '.join(missing_files)} (relative paths start at "
            "data.init_args.root, by default $METACLINIC_DATA_DIR, else ./data)"
        )
        if not problems:
            raise MissingDataError(message)
        problems.add(message)
    problems.raise_if_any()
    file_of_row = np.concatenate([np.full(len(f), i) for i, f in enumerate(frames)])
    row_in_file = np.concatenate([np.arange(1, len(f) + 1) for f in frames])
    frame = pd.concat(frames, ignore_index=True)
    for option in ("column_missing_values", "column_missing_values_only", "exclude_columns"):
        unknown = [c for c in getattr(spec, option) if c not in frame.columns]
        if unknown:
            problems.add(f"{option} names {unknown}, which {files[0]} does not have")
    cells = {
        str(column): _mark_missing(frame[column].to_numpy(dtype=object), spec.markers(str(column)))
        for column in frame.columns
    }
    table = Table(cells, files, file_of_row, row_in_file)
    named = (*spec.label_columns, *(spec.feature_columns or []), *spec.categorical_columns)
    for name in dict.fromkeys((*named, spec.site_name, spec.patient_column)):
        if name is not None:
            with problems.collect():
                table.column(name)
    problems.raise_if_any()
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
    if file.stat().st_size == 0:
        raise DataError(f"{file}: the file is empty (no header, no data rows)")
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
    if len(frame) == 0:
        raise DataError(f"{file}: no data rows (only a header); every table needs at least one patient")
    return frame


def _csv_options(file: Path, spec: TableSpec) -> dict[str, Any]:
    """How ``pandas.read_csv`` reads ``file``: every cell as text, byte-order mark dropped."""
    separator = spec.delimiter or ("\t" if file.suffix.lower() == ".tsv" else ",")
    return {"sep": separator, "header": 0 if spec.header else None, "dtype": str, "encoding": "utf-8-sig"}


@contextlib.contextmanager
def _unreadable_as_data_error(file: Path) -> Iterator[None]:
    try:
        yield
    except pd.errors.EmptyDataError:
        raise DataError(f"{file}: the file has no columns (empty, or blank lines only)") from None
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
