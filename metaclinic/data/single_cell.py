"""Single-cell gene expression as a source of classes: AnnData ``.h5ad`` files, cells as examples, genes as
features, the values of an ``obs`` column (cell types) as classes.

A file is read with ``anndata`` (Virshup et al., "anndata: Access and store annotated data matrices",
JOSS 9(101), 2024). The expression matrix is ``X``, or ``layers[layer]`` when a layer is named; it may be
dense or scipy-sparse and of any numeric type, and is kept as stored (a file that is already normalised or
scaled, as ``pbmc68k_reduced`` is, needs nothing more), as float32.

Genes are matched **by name** (``var_names``), never by position: the genes of a run are a configured list,
or those of a reference file, in that order, and every other file is read in the reference's order, so that
files whose genes are ordered differently (or that have more genes) line up. A file that lacks some of the
genes is an error naming the first few and their count; so are a gene name that occurs twice in a file
(which column would it be?), NaN or infinite values (naming the file, a cell and a gene, never a value), an
``obs`` column that is not there (listing those there are) and a file that ``anndata`` cannot read.

Few-shot cell-type classification, with cell types unseen in training at test, is the setting of MARS:
Brbić, Zitnik, Wang, Pisco, Altman, Darmanis and Leskovec, "MARS: discovering novel cell types across
heterogeneous single-cell experiments", Nature Methods 17, 2020.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from metaclinic.data.cases import Cases, SupportSet, _sorted_by_class
from metaclinic.data.molecules import did_you_mean
from metaclinic.errors import DataError, MissingDataError

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)

MAX_NAMED = 5  # genes, cells or columns named in one message, then their count


@dataclass
class CellSet:
    """The cells of one file, as read: ``values (cells, genes)`` float32 in the requested gene order,
    ``labels (cells,)`` the ``obs`` column's values as text (``None`` where missing; ``None`` for the whole
    set when no label column was read) and ``cell_names`` the file's ``obs_names``."""

    values: np.ndarray
    labels: np.ndarray | None
    cell_names: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.values)


def named(items: Sequence[str]) -> str:
    """``'A', 'B', 'C' and 2 more``: the first few of a list for a message."""
    shown = ", ".join(repr(str(item)) for item in items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


# -- files ---------------------------------------------------------------------------------------------------
def read_anndata(path: str | Path, backed: bool = False) -> anndata.AnnData:
    """The file as an AnnData object; ``backed`` opens it without reading the matrices (for its genes)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such .h5ad file")
    try:
        import anndata
    except ImportError:
        raise DataError(
            "single-cell files need anndata: pip install anndata (a metaclinic dependency)"
        ) from None
    try:
        with warnings.catch_warnings():  # anndata's notes on files of older layouts: nothing to act on here
            warnings.filterwarnings("ignore", category=FutureWarning, module="anndata")
            warnings.filterwarnings("ignore", category=anndata.OldFormatWarning)
            return anndata.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError, TypeError) as error:  # h5py's and anndata's ways to say "not this"
        raise DataError(
            f"{path}: not a readable AnnData .h5ad file ({type(error).__name__}: {error})"
        ) from None


def gene_names(path: str | Path) -> list[str]:
    """The file's ``var_names``, read without its matrices."""
    data = read_anndata(path, backed=True)
    try:
        return [str(name) for name in data.var_names]
    finally:
        data.file.close()


def gene_columns(file_genes: Sequence[str], genes: Sequence[str], source: str) -> np.ndarray:
    """The column of each of ``genes`` in a file whose ``var_names`` are ``file_genes``."""
    position: dict[str, int] = {}
    repeated: set[str] = set()
    for i, name in enumerate(file_genes):
        if name in position:
            repeated.add(name)
        else:
            position[name] = i
    missing = [g for g in genes if g not in position]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} of the {len(genes)} genes are not in its var_names: {named(missing)}; "
            "genes are matched by name, and every file must have all of them (give data.init_args.genes, or "
            "a gene_reference file, with the genes every file has)"
        )
    ambiguous = [g for g in genes if g in repeated]
    if ambiguous:
        raise DataError(
            f"{source}: the gene name(s) {named(ambiguous)} occur more than once in var_names, so which "
            "column is meant is unclear; make them unique (AnnData.var_names_make_unique()) or leave them "
            "out of genes"
        )
    return np.array([position[g] for g in genes], dtype=np.int64)


def read_cells(
    path: str | Path, genes: Sequence[str], label_key: str | None = None, layer: str | None = None
) -> CellSet:
    """The expression of ``genes`` (by name, in that order) of every cell of ``path``, and ``obs[label_key]``.

    ``layer``: read ``layers[layer]`` instead of ``X``. ``label_key=None`` reads no labels.
    """
    return cells_of(read_anndata(path), str(path), genes, label_key, layer)


def cells_of(
    data: anndata.AnnData, source: str, genes: Sequence[str], label_key: str | None, layer: str | None
) -> CellSet:
    """:func:`read_cells` of a file already open as ``data``."""
    labels = None if label_key is None else cell_labels(data, label_key, source)
    columns = gene_columns([str(g) for g in data.var_names], genes, source)
    values = expression(data, layer, source, columns)
    bad = ~np.isfinite(values)
    if bad.any():
        cell, gene = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{source}: {int(bad.sum())} expression value(s) are NaN or infinite (or too large for float32), "
            f"the first of cell {str(data.obs_names[cell])!r} (obs row {cell}) and gene {genes[gene]!r}; "
            "expression values must be finite"
        )
    return CellSet(values, labels, np.array([str(n) for n in data.obs_names], dtype=object), source)


def expression(data: anndata.AnnData, layer: str | None, source: str, columns: np.ndarray) -> np.ndarray:
    """``X`` (or ``layers[layer]``) at ``columns`` as a dense float32 ``(cells, len(columns))`` array."""
    if layer is not None:
        if layer not in data.layers:
            raise DataError(
                f"{source}: no layer {layer!r}; its layers are {list(data.layers)} (data.init_args.layer: "
                "null reads X)"
            )
        matrix, where = data.layers[layer], f"layers[{layer!r}]"
    else:
        matrix, where = data.X, "X"
    if matrix is None:
        raise DataError(f"{source}: {where} is empty (None); name a layer that holds the expression values")
    dtype = matrix.dtype
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise DataError(f"{source}: {where} holds {dtype} values; expression values are numbers")
    if sparse.issparse(matrix):
        chosen = sparse.csr_matrix(matrix)[:, columns].toarray()
    else:
        chosen = np.asarray(matrix)[:, columns]
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, reported as such
        return chosen.astype(np.float32)


def cell_labels(data: anndata.AnnData, label_key: str, source: str) -> np.ndarray:
    """``obs[label_key]`` as text (integral numbers without ``.0``), ``None`` where missing."""
    columns = [str(c) for c in data.obs.columns]
    if label_key not in data.obs.columns:
        raise DataError(
            f"{source}: no obs column {label_key!r}{did_you_mean(label_key, columns)}; its obs columns are "
            f"{columns} (set data.init_args.label_key)"
        )
    return np.array([_text(value) for value in data.obs[label_key].tolist()], dtype=object)


def _text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # cluster ids written as floats: "3", as the same ids written as integers
    return str(value)


# -- a lab's cells (metaclinic.adapt) ------------------------------------------------------------------------
class CellCases:
    """Reads ``.h5ad`` files of cells for a model meta-trained on the expression of ``genes``.

    The support file's classes are the values of ``obs[label_key]`` (sorted); every support cell needs one.
    Cells to predict need no label; when their file has the label column, its values are copied into
    ``predictions.csv`` (column ``label``) and play no part in the prediction. ``predictions.csv`` names
    each cell by its ``obs_names`` (column ``cell``) and, with ``id_column``, that ``obs`` column. Genes are
    matched by name and read as in meta-training, so a file may order its genes differently or have more.
    """

    def __init__(
        self, genes: list[str], label_key: str, layer: str | None = None, id_column: str | None = None
    ) -> None:
        self.genes, self.label_key, self.layer, self.id_column = genes, label_key, layer, id_column

    def read_support(self, path: str | Path) -> SupportSet:
        cells = read_cells(path, self.genes, self.label_key, self.layer)
        assert cells.labels is not None
        unlabelled = [
            str(n) for n, label in zip(cells.cell_names, cells.labels, strict=True) if label is None
        ]
        if unlabelled:
            raise DataError(
                f"{path}: {len(unlabelled)} support cell(s) have no obs[{self.label_key!r}] value, e.g. "
                f"{named(unlabelled)}; every support cell needs its cell type"
            )
        return _sorted_by_class(torch.from_numpy(cells.values), list(cells.labels), str(path))

    def read_cases(self, path: str | Path) -> Cases:
        data = read_anndata(path)
        obs = data.obs
        if self.id_column is not None and self.id_column not in obs.columns:
            columns = [str(c) for c in obs.columns]
            raise DataError(
                f"{path}: no obs column {self.id_column!r}{did_you_mean(self.id_column, columns)} "
                f"(--id_column); its obs columns are {columns}"
            )
        labelled = self.label_key in obs.columns
        cells = cells_of(data, str(path), self.genes, self.label_key if labelled else None, self.layer)
        ids = pd.DataFrame({"cell": cells.cell_names})
        if self.id_column is not None:
            ids[self.id_column] = obs[self.id_column].to_numpy()
        if cells.labels is not None:
            ids["label"] = pd.array(list(cells.labels), dtype="string")
        return Cases(torch.from_numpy(cells.values), ids, str(path))

    def describe(self) -> dict[str, Any]:
        where = "X" if self.layer is None else f"layers[{self.layer!r}]"
        return {
            "kind": "cells",
            "genes": self.genes,
            "layer": self.layer,
            "label_key": self.label_key,
            "encoding": (
                f"a cell's expression values in {where} of an AnnData file, as stored (no normalisation), "
                "for the genes in the order of genes, matched by name to var_names; float32, shape (genes,)"
            ),
        }
