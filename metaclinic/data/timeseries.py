"""Time series as a source of classes: UCR-archive files and NumPy arrays; every (data set, label) is a class.

A data set ``<name>`` is found in its folder as, in this order:

- the UCR archive's official pair ``<name>_TRAIN.tsv`` and ``<name>_TEST.tsv`` (2018 release:
  tab-separated, no header, one series per row, the integer class label in the first column). Both files
  are pooled, as MedMNIST pools its official image splits: meta-splits are disjoint by class, so the
  archive's train/test split has no role in meta-learning;
- ``<name>.npz`` with arrays ``x`` ``(N, channels, length)`` (or ``(N, length)``: one channel) and ``y``
  ``(N,)`` integer labels;
- ``<name>.npy`` (``x`` as above) with ``<name>_labels.npy`` (``y``).

Labels are kept as the integers written in the file: they may be negative or non-contiguous (ECG200 has
-1 and 1), a class is keyed ``"<name>:<label>"`` (``"ECG200:-1"``) and never renumbered. Labels written
as integral decimals (``1.0000000e+00``, as older archive releases do) read as those integers; any other
label is an error.

Every series is resampled to the configured length by linear interpolation (first and last samples kept:
``torch.nn.functional.interpolate(..., mode="linear", align_corners=True)``), then z-normalised as the UCR
archive normalises its series: minus its mean, divided by its standard deviation with Bessel's correction
(MATLAB's ``zscore``; the archive's own files have sample standard deviation 1 exactly), per channel; a
constant series becomes zeros.

Malformed input raises :class:`DataError` naming the file, the row and the value: rows with another number
of values than the first, labels that are not integers, NaN or infinite values (the archive's
variable-length data sets pad with NaN: resample those series first, or give them as arrays).

Dau et al., "The UCR Time Series Archive", IEEE/CAA Journal of Automatica Sinica 6(6), 2019,
https://www.cs.ucr.edu/~eamonn/time_series_data_2018/.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from metaclinic.data.cases import Cases, SupportSet, _sorted_by_class
from metaclinic.errors import DataError, MissingDataError

log = logging.getLogger(__name__)

ARCHIVE_URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"
UCR_FILES = ("TRAIN", "TEST")
PLACEHOLDERS = ("?", "", "nan")  # what a prediction file may hold instead of a label (case-insensitive)
CONSTANT = 1e-10  # a series whose standard deviation is below this fraction of its mean is constant


@dataclass
class SeriesSet:
    """The series of one file or data set, as read: ``values (N, channels, length)`` float64 and ``labels``
    ``(N,)`` int64 (``None`` for a prediction file without labels; ``known`` says which rows have one),
    ``rows`` where each series is in its file (line numbers of TSV files from 1, indices of arrays from 0)."""

    values: np.ndarray
    labels: np.ndarray | None
    rows: np.ndarray
    source: str
    known: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)


# -- finding and reading files -------------------------------------------------------------------------------
def data_set_files(name: str, root: Path) -> list[Path]:
    """The files of data set ``name`` in ``root`` (see the module docstring for the order they are tried)."""
    ucr = [root / f"{name}_{part}.tsv" for part in UCR_FILES]
    if any(path.is_file() for path in ucr):
        missing = [path for path in ucr if not path.is_file()]
        if missing:
            raise MissingDataError(
                f"{missing[0]}: no such file; the UCR data set {name} is the pair {ucr[0].name} and "
                f"{ucr[1].name}, and both are read"
            )
        return ucr
    if (root / f"{name}.npz").is_file():
        return [root / f"{name}.npz"]
    if (root / f"{name}.npy").is_file():
        labels = root / f"{name}_labels.npy"
        if not labels.is_file():
            raise MissingDataError(f"{labels}: no such file; it holds the labels of the series in {name}.npy")
        return [root / f"{name}.npy", labels]
    raise MissingDataError(
        f"time-series data set {name!r} not found in {root}: expected {ucr[0].name} and {ucr[1].name} (the "
        f"UCR archive's files, {ARCHIVE_URL}), {name}.npz (arrays x and y) or {name}.npy with "
        f"{name}_labels.npy. Point data.init_args.root (or METACLINIC_DATA_DIR, whose ucr_ecg/ sub-folder is "
        "used) at the folder that holds them."
    )


def read_data_set(name: str, root: Path) -> SeriesSet:
    """Every series of data set ``name``, its files pooled in the order of :func:`data_set_files`."""
    files = data_set_files(name, root)
    parts = [read_ucr(path) for path in files] if files[0].suffix == ".tsv" else [read_arrays(*files)]
    lengths = {p.values.shape[-1] for p in parts}
    if len(lengths) > 1:
        raise DataError(
            f"{name}: {files[0].name} has series of {parts[0].values.shape[-1]} values, {files[1].name} of "
            f"{parts[1].values.shape[-1]}; the files of one data set must have series of one length"
        )
    labels = np.concatenate([p.labels for p in parts if p.labels is not None])
    values = np.concatenate([p.values for p in parts])
    return SeriesSet(values, labels, np.concatenate([p.rows for p in parts]), str(root / name))


def read_ucr(path: str | Path, labelled: bool = True) -> SeriesSet:
    """Reads a UCR-format file: tab-separated, no header, the integer label first, then one series' values.

    ``labelled=False`` (files to predict) also accepts a placeholder label (``?``, an empty field or
    ``NaN``): the first column is always the label column, so a series' first value is never taken as one.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file")
    if labelled:
        fast = _read_fast(path)
        if fast is not None:
            return fast
    return _read_rows(path, labelled)


def _read_fast(path: Path) -> SeriesSet | None:
    """The common case, a well-formed labelled file, read by pandas' C parser; ``None`` when anything is
    unusual, and :func:`_read_rows` then reads the file and names what is wrong."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=np.float64, skip_blank_lines=True)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    array = table.to_numpy()
    if array.shape[1] < 2 or not np.isfinite(array).all() or (array[:, 0] != np.round(array[:, 0])).any():
        return None
    if len(array) != len(path.read_text().splitlines()):
        return None  # blank lines (pandas skips them, rows would be misnumbered): the line reader decides
    labels = array[:, 0].astype(np.int64)
    return SeriesSet(array[:, None, 1:].copy(), labels, np.arange(1, len(array) + 1), str(path))


def _read_rows(path: Path, labelled: bool) -> SeriesSet:
    """Reads ``path`` line by line: what :func:`read_ucr` means, with every error naming row and value."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a text file ({error})") from None
    labels: list[int | None] = []
    values: list[np.ndarray] = []
    rows: list[int] = []
    first = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"{path}, row {number}: one field ({line[:40]!r}); a UCR file is tab-separated, the label "
                "then the series' values"
            )
        if not rows:
            first, width = number, len(fields)
        elif len(fields) != width:
            raise DataError(
                f"{path}, row {number}: {len(fields) - 1} values, but row {first} has {width - 1}; every "
                "series of a data set must have the same length (resample them first or write them as arrays)"
            )
        labels.append(_label(fields[0], path, number, labelled))
        values.append(_values(fields, path, number))
        rows.append(number)
    if not rows:
        raise DataError(f"{path}: no series (the file is empty)")
    known = np.array([label is not None for label in labels])
    array = np.stack(values)[:, None, :]
    if labelled:
        return SeriesSet(array, np.array(labels, dtype=np.int64), np.array(rows), str(path))
    filled = np.array([0 if label is None else label for label in labels], dtype=np.int64)
    return SeriesSet(array, filled if known.any() else None, np.array(rows), str(path), known)


def _label(text: str, path: Path, row: int, labelled: bool) -> int | None:
    field = text.strip()
    if not labelled and field.lower() in PLACEHOLDERS:
        return None
    try:
        return int(field)
    except ValueError:
        pass
    number = _number(field)
    if number is not None and math.isfinite(number) and number.is_integer():
        return int(number)
    where = "the class label (an integer)" if labelled else "the label (an integer) or a placeholder: ?"
    raise DataError(f"{path}, row {row}: label {text!r} is not an integer; the first column is {where}")


def _values(fields: list[str], path: Path, row: int) -> np.ndarray:
    try:
        values = np.array(fields[1:], dtype=np.float64)
    except ValueError:
        values = np.array([math.nan if (n := _number(f)) is None else n for f in fields[1:]])
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        column = int(bad[0]) + 1
        text = fields[column]
        number = _number(text)
        kind = "not a number" if number is None else "NaN" if math.isnan(number) else "infinite"
        raise DataError(
            f"{path}, row {row}, value {column} (column {column + 1}): {text!r} is {kind}; series must be "
            "complete (the archive pads variable-length series with NaN: resample those first)"
        )
    return values


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_arrays(path: str | Path, labels_path: str | Path | None = None, labelled: bool = True) -> SeriesSet:
    """Reads ``x`` (and ``y``) from a ``.npz`` file, or ``x`` from a ``.npy`` file and ``y`` from
    ``labels_path``. ``labelled=False`` (files to predict): ``y`` may be absent."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                files = archive.files
                x = archive["x"] if "x" in files else None
                y = archive["y"] if "y" in files else None
            labels_source = path
        else:
            x = np.load(path, allow_pickle=False)
            y = np.load(labels_path, allow_pickle=False) if labels_path is not None else None
            labels_source = Path(labels_path) if labels_path is not None else path
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise DataError(f"{path} is not a readable NumPy file ({error})") from None
    if x is None or (labelled and y is None):
        raise DataError(
            f"{path}: holds {files}; a series file holds x (N, channels, length)"
            + (" and y (N,) integer labels" if labelled else " (and y, labels)")
        )
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(
            f"{path}: x should be numbers of shape (N, channels, length), got {x.dtype} {x.shape}"
        )
    values = x.astype(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, c, t = (int(v) for v in bad[0])
        raise DataError(
            f"{path}: series {i}, channel {c}, value {t} is {values[i, c, t]}; series must be complete"
        )
    rows = np.arange(len(values))
    if y is None:
        return SeriesSet(values, None, rows, str(path))
    return SeriesSet(values, _array_labels(y, len(values), labels_source), rows, str(path))


def _array_labels(y: np.ndarray, count: int, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != count:
        raise DataError(f"{path}: labels should be ({count},), one per series, got {y.shape}")
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if not bad.size:
            return y.astype(np.int64)
        raise DataError(f"{path}: label of series {int(bad[0])} is {y[bad[0]]}, not an integer")
    raise DataError(f"{path}: labels should be integers, got {y.dtype}")


# -- what the model sees -------------------------------------------------------------------------------------
def resample(x: Tensor, length: int) -> Tensor:
    """``(N, channels, L)`` -> ``(N, channels, length)`` by linear interpolation between samples; the first
    and last samples stay where they are (``align_corners=True``), so sample ``i`` of ``L`` moves to the
    position ``i * (length - 1) / (L - 1)``."""
    if x.shape[-1] == length:
        return x
    return F.interpolate(x, size=length, mode="linear", align_corners=True)


def z_normalise(x: Tensor) -> Tensor:
    """Each series (and channel) minus its mean over time, divided by its standard deviation with Bessel's
    correction, as the UCR archive normalises; a constant series (also up to rounding) becomes zeros."""
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True, correction=1)
    constant = std <= CONSTANT * mean.abs()
    return torch.where(constant, 0.0, (x - mean) / torch.where(constant, 1.0, std))


def to_examples(values: np.ndarray, length: int, normalise: bool = True) -> Tensor:
    """Model inputs ``(N, channels, length)`` float32 from read series: resampled, then z-normalised."""
    x = resample(torch.from_numpy(values).to(torch.float64), length)
    return (z_normalise(x) if normalise else x).to(torch.float32).contiguous()


# -- a clinic's cases ----------------------------------------------------------------------------------------
class SeriesCases:
    """Reads a clinic's series for a model meta-trained on ``(channels, length)`` series (metaclinic.adapt).

    The support set is a UCR-format TSV file (the integer label first, then the values), or a ``.npz`` file
    with ``x`` and ``y``; classes are its labels, ordered by value (``-1`` before ``1``). The cases to predict
    are a TSV file of the same layout whose first column is the label or, for series without one, the
    placeholder ``?`` (or an empty field, or ``NaN``): a UCR ``_TEST.tsv`` file can be predicted as it is,
    and a row's first value is never mistaken for a label. A ``.npz`` file with ``x`` works too. Labels given
    with the cases are copied to ``predictions.csv`` (column ``label``) and play no part in the prediction.
    Series are resampled and z-normalised as in meta-training, so they may have any length.
    """

    def __init__(self, channels: int, length: int, normalise: bool = True) -> None:
        self.channels, self.length, self.normalise = channels, length, normalise

    def read_support(self, path: str | Path) -> SupportSet:
        series = self._read(Path(path), labelled=True)
        assert series.labels is not None
        classes = [str(label) for label in sorted(set(series.labels.tolist()))]
        labels = [str(label) for label in series.labels.tolist()]
        return _sorted_by_class(self._examples(series), labels, str(path), classes)

    def read_cases(self, path: str | Path) -> Cases:
        series = self._read(Path(path), labelled=False)
        column = "row" if Path(path).suffix == ".tsv" else "index"
        ids = pd.DataFrame({column: series.rows})
        if series.labels is not None:
            known = np.ones(len(series), dtype=bool) if series.known is None else series.known
            labels = [int(v) if k else pd.NA for v, k in zip(series.labels, known, strict=True)]
            ids["label"] = pd.array(labels, dtype="Int64")
        return Cases(self._examples(series), ids, str(path))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "series",
            "channels": self.channels,
            "length": self.length,
            "z_normalise": self.normalise,
            "encoding": (
                f"each series (channels, L) resampled by linear interpolation to {self.length} values with "
                "its first and last values kept (torch.nn.functional.interpolate, mode='linear', "
                "align_corners=True)"
                + (
                    ", then per channel minus its mean and divided by its standard deviation (ddof=1; a "
                    "constant series becomes zeros)"
                    if self.normalise
                    else ""
                )
                + "; float32, shape (channels, length)"
            ),
        }

    def _read(self, path: Path, labelled: bool) -> SeriesSet:
        if path.suffix == ".tsv":
            series = read_ucr(path, labelled)
        elif path.suffix == ".npz":
            series = read_arrays(path, labelled=labelled)
        else:
            raise DataError(f"{path}: series are read from a UCR-format .tsv file or a .npz file (x, y)")
        if series.values.shape[1] != self.channels:
            raise DataError(
                f"{path}: series of {series.values.shape[1]} channel(s), but the model was meta-trained on "
                f"{self.channels}"
            )
        return series

    def _examples(self, series: SeriesSet) -> Tensor:
        return to_examples(series.values, self.length, self.normalise)
