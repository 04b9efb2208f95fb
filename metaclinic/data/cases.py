"""Cases a new clinic brings (labelled support cases, cases to predict), read as the model's training data.

:class:`TableCases` reads tables with the training table's settings and the checkpoint's preprocessing;
:class:`ImageCases` reads image folders at the model's size and channels. Both raise :class:`DataError`
naming the file and what was expected when the input does not match the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metaclinic.data.image_folder import (
    IMAGE_EXTENSIONS,
    decode_image,
    list_image_files,
    read_image,
    truncated_images_fail,
)
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.table import Table, TableSpec, read_header, read_table
from metaclinic.errors import DataError

log = logging.getLogger("metaclinic")

MAX_LISTED = 20  # unreadable files named in one message
# Pillow modes with one colour band (alpha aside): readable by a grayscale model as they are.
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


@dataclass
class SupportSet:
    """Labelled cases: model inputs ``x``, labels ``y`` indexing ``classes`` (sorted names), their source."""

    x: Tensor
    y: Tensor
    classes: list[str]
    source: str

    def counts(self) -> dict[str, int]:
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}


@dataclass
class Cases:
    """Cases to predict: model inputs ``x`` and the columns that identify them in ``predictions.csv``."""

    x: Tensor
    ids: pd.DataFrame
    source: str


class CaseReader(Protocol):
    """Reads a clinic's cases in the format a model was trained on (a data module's ``case_reader``)."""

    def read_support(self, path: str | Path) -> SupportSet: ...

    def read_cases(self, path: str | Path) -> Cases: ...

    def describe(self) -> dict[str, Any]:
        """How to make the adapted model's inputs (``adapted_model.json``); no patient values."""
        ...


def _sorted_by_class(
    x: Tensor, labels: list[str], source: str, expected: list[str] | None = None
) -> SupportSet:
    """A support set ordered by class (as episodes are), with class ``i`` the ``i``-th sorted name."""
    classes = expected or sorted(set(labels))
    empty = [c for c in classes if c not in labels]
    if empty:
        raise DataError(f"{source}: the support set has no case of class(es) {empty}; every class needs one")
    y = torch.tensor([classes.index(label) for label in labels], dtype=torch.long)
    order = torch.argsort(y, stable=True)
    return SupportSet(x[order], y[order], classes, source)


class TableCases:
    """Reads support and prediction tables as the model's training table was read, and encodes them.

    Files are read with the training table's settings (header or ``column_names``, delimiter, missing-value
    markers) and encoded with the checkpoint's preprocessing (meta-train medians, means, standard deviations
    and categories; never refitted on the new cases). A headerless prediction file may leave out the label
    column. The support set's classes are the values of the label column (``0``/``1`` when the training
    config binarised it with ``positive_above``, ``positive_values`` or ``negative_values``).

    Args:
        spec: the training table's :class:`TableSpec`.
        preprocessor: the fitted preprocessing from the checkpoint.
        label_column: the support set's class column; default the training config's (single) label column.
        id_column: a column that identifies each predicted case in ``predictions.csv``; default the
            training config's patient column when the file has it. Row numbers are always written.
    """

    def __init__(
        self,
        spec: TableSpec,
        preprocessor: TablePreprocessor,
        label_column: str | None = None,
        id_column: str | None = None,
    ) -> None:
        if label_column is None:
            if len(spec.label_columns) != 1:
                raise DataError(
                    f"the model was meta-trained on the label columns {spec.label_columns}; say which one "
                    "holds the support set's classes with --label_column"
                )
            label_column = spec.label_columns[0]
        features = [*preprocessor.numeric, *preprocessor.categorical]
        if id_column in features or (id_column is not None and id_column == label_column):
            raise DataError(
                f"--id_column {id_column!r} is a model input or the label; predictions.csv identifies cases "
                "by row number and an identifier column only, never by patient features"
            )
        self.spec, self.preprocessor = spec, preprocessor
        self.label_column, self.id_column, self.features = label_column, id_column, features

    def read_support(self, path: str | Path) -> SupportSet:
        table, x = self._read(Path(path), labelled=True)
        labels = table.labels(self.label_column, self.spec)
        unlabelled = np.flatnonzero([v is None for v in labels])
        if unlabelled.size:
            raise DataError(
                f"label column {self.label_column!r} is missing in {unlabelled.size} support row(s): "
                f"{table.rows_message(unlabelled)}; every support case needs a label"
            )
        expected = ["0", "1"] if self.spec.binarised else None
        return _sorted_by_class(x, labels.tolist(), str(path), expected)

    def read_cases(self, path: str | Path) -> Cases:
        table, x = self._read(Path(path), labelled=False)
        ids = {"row": table.row_in_file}
        id_column = self.id_column
        if id_column is None and self.spec.patient_column in table.cells:
            id_column = self.spec.patient_column
        if id_column is not None:
            ids[id_column] = table.column(id_column)
        return Cases(x, pd.DataFrame(ids), str(path))

    def describe(self) -> dict[str, Any]:
        """How to make the exported model's inputs from a table (for ``adapted_model.json``)."""
        spec = self.spec
        return {
            "kind": "table",
            "feature_names": self.preprocessor.feature_names,
            "columns": {"numeric": self.preprocessor.numeric, "categorical": self.preprocessor.categorical},
            "label_column": self.label_column,
            "positive_above": spec.positive_above,
            "positive_values": spec.positive_values,
            "negative_values": spec.negative_values,
            "missing_values": spec.missing_values,
            "column_missing_values": spec.column_missing_values,
            "column_missing_values_only": spec.column_missing_values_only,
            "preprocessor": self.preprocessor.state_dict(),
            "encoding": (
                "numeric column c at position i: (value, or medians[i] when missing, - means[i]) / stds[i]; "
                "'c:missing' (columns in numeric_indicators or categorical_indicators): 1 when the cell is "
                "missing, else 0; 'c=v': 1 when the cell of categorical column c is v, else 0 (numbers "
                "written canonically: '4.0' is '4'). Features in the order of feature_names, float32."
            ),
        }

    def _read(self, file: Path, labelled: bool) -> tuple[Table, Tensor]:
        if not file.is_file():
            raise DataError(f"{file}: no such table file")
        spec = self.spec
        names, columns = self._columns(file, labelled)
        required = [*self.features, *([self.label_column] if labelled else [])]
        if self.id_column is not None and not labelled:
            required.append(self.id_column)
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(
                f"{file}: missing column(s) {missing}; the model's inputs are the columns {self.features}"
                + (f" and the support set needs the label column {self.label_column!r}" if labelled else "")
            )
        local = dataclasses.replace(
            spec,
            path=str(file.resolve()),
            label_column=[],
            feature_columns=None,
            categorical_columns=[],
            site_column=None,
            patient_column=None,
            column_names=names,
            column_missing_values={c: v for c, v in spec.column_missing_values.items() if c in columns},
            column_missing_values_only={
                c: v for c, v in spec.column_missing_values_only.items() if c in columns
            },
            exclude_columns=[],
            drop_rows_missing=[],
        )
        table = read_table(local, file.parent)
        if len(table) == 0:
            raise DataError(f"{file}: the table has no rows")
        numeric = {c: table.numbers(c) for c in self.preprocessor.numeric}
        categorical = {c: table.categories(c) for c in self.preprocessor.categorical}
        for column, count in self.preprocessor.unseen_categories(categorical, np.arange(len(table))).items():
            log.warning(
                "%s: %d row(s) have a %r value that meta-train never showed; it encodes as all zeros",
                file, count, column,
            )  # fmt: skip
        return table, torch.from_numpy(self.preprocessor.transform(numeric, categorical))

    def _columns(self, file: Path, labelled: bool) -> tuple[list[str] | None, list[str]]:
        """The ``column_names`` to read ``file`` with, and the columns it then has."""
        spec = self.spec
        found = read_header(file, spec)
        if spec.column_names is None:
            return None, found
        # Named by the config (e.g. headerless UCI files): the label column may be left out of predictions.
        unlabelled = [c for c in spec.column_names if c not in spec.label_columns]
        for names in (spec.column_names, None if labelled else unlabelled):
            if names is not None and len(names) == len(found):
                return names, names
        expected = f"{len(spec.column_names)} ({spec.column_names})"
        if not labelled:
            expected += f", or {len(unlabelled)} without the label column"
        raise DataError(f"{file}: has {len(found)} columns; the model's table format has {expected}")


class ImageCases:
    """Reads images for a model trained on ``channels`` x ``image_size`` x ``image_size`` images.

    The support set is a folder with one sub-folder of images per class (the folder name is the class);
    the cases to predict are a flat folder of images (or one image file). Images are read as training read
    them (:func:`~metaclinic.data.image_folder.read_image`): resized to the model's size with antialiasing
    and stretched to a square, 16-bit and float images (TIFFs read at full depth with tifffile) scaled by
    their own range, alpha dropped, and the model's ``prepare_inputs`` (uint8 to [-1, 1]) applied.

    Channels: grayscale images are repeated to three channels for an RGB model (as grayscale MedMNIST
    datasets are when mixed with RGB ones); a colour image for a grayscale model is an error, unless its
    three channels are equal (a grayscale image stored as RGB), because converting it would discard what
    the image shows. Any size is converted.
    """

    def __init__(self, channels: int, image_size: int, prepare: Any) -> None:
        self.channels, self.image_size, self.prepare = channels, image_size, prepare

    def read_support(self, path: str | Path) -> SupportSet:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(
                f"{folder}: not a folder; the support set is a folder with one sub-folder per class"
            )
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise DataError(
                f"{folder}: images directly in the support folder belong to no class (e.g. {loose[0]}); put "
                "each class's images in a sub-folder named after the class"
            )
        files = {c: list_image_files(folder / c)[0] for c in classes}
        empty = [str(folder / c) for c, found in files.items() if not found]
        if empty:
            raise DataError(
                f"support class folder(s) without images ({'/'.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}; "
                "every class needs at least one"
            )
        labels = [c for c in classes for _ in files[c]]
        x = self._read([p for c in classes for p in files[c]])
        return _sorted_by_class(x, labels, str(folder), classes)

    def read_cases(self, path: str | Path) -> Cases:
        where = Path(path)
        if where.is_file():
            files, root = [where], where.parent
        elif where.is_dir():
            files, root = _flat_images(where), where
        else:
            raise DataError(f"{where}: no such folder or image file")
        ids = pd.DataFrame({"file": [str(p.relative_to(root)) for p in files]})
        return Cases(self._read(files), ids, str(where))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "channels": self.channels,
            "image_size": self.image_size,
            "encoding": (
                f"{'grayscale' if self.channels == 1 else 'RGB'} image resized (bilinear, stretched) to "
                f"{self.image_size}x{self.image_size}, uint8 pixels p as float32 p / 127.5 - 1, "
                "shape (channels, height, width)"
            ),
        }

    def _read(self, files: list[Path]) -> Tensor:
        images, problems = [], []
        with truncated_images_fail():
            for path in files:
                try:
                    self._check_channels(path)
                    images.append(torch.from_numpy(read_image(path, self.channels, self.image_size)))
                except DataError as error:
                    problems.append(str(error))
                # Pillow raises many types on damaged files; each is reported with its path.
                except Exception as error:
                    problems.append(f"{path}: cannot be read as an image: {type(error).__name__}: {error}")
        if problems:
            listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise DataError(f"{len(problems)} image(s) cannot be used:\n{listed}{more}")
        return self.prepare(torch.stack(images))

    def _check_channels(self, path: Path) -> None:
        if self.channels != 1:
            return
        image = decode_image(path)  # as read_image decodes it: Pillow cannot open float colour TIFFs
        mode = image.mode
        if mode in GRAYSCALE_MODES:
            return
        pixels = np.asarray(image.convert("RGB"))
        if not ((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()):
            raise DataError(
                f"{path}: a colour image (mode {mode}), but the model was meta-trained on grayscale "
                "(1-channel) images; convert it to grayscale first if that is what the model should see"
            )


def _flat_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; other files and sub-folders are left out (logged)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p.name for p in entries if p not in images]
    if not images:
        hint = ""
        if any(p.is_dir() for p in entries):
            hint = " (it has sub-folders: give the folder that holds the images)"
        raise DataError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images to predict{hint}")
    if others:
        log.warning("%s: %d non-image entries are left out, e.g. %s", folder, len(others), others[0])
    return images
