"""Single-cell gene expression as episodic tasks: cell types assigned to meta-splits, cells as examples."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaclinic.data import single_cell
from metaclinic.data.datamodule import EpisodicDataModule, default_data_root
from metaclinic.data.molecules import did_you_mean
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.problems import Problems
from metaclinic.errors import DataError, MissingDataError

log = logging.getLogger(__name__)


class CellEpisodes(EpisodicDataModule):
    """N-way K-shot tasks over the cell types of AnnData ``.h5ad`` files; a cell is a vector of genes.

    The classes are the values of ``obs[label_key]`` (cell types), and the meta-splits list them by their
    exact values, as MedMNIST's configs list classes: meta-test types are never seen in meta-training, the
    setting of MARS (Brbić et al., Nature Methods 17, 2020). With several files, **a class is a cell type by
    name across the files**: the cells of ``"CD14+ Monocyte"`` in every file are one class, so a second
    experiment adds cells to the types it shares with the first (name types apart in ``obs`` to keep them
    apart). Episodes therefore may mix cells of several files within a class; that is what a type measured
    in two experiments is. A type in no split is left out (logged), as are cells without a label (counted).

    Files are read as :mod:`metaclinic.data.single_cell` describes: ``X`` or ``layers[layer]``, dense or
    sparse, values as stored; genes matched by name to ``genes``, or to the ``var_names`` of
    ``gene_reference``, or of the first file, in that order. An example is a float32 ``(genes,)`` vector, and
    the gene list is saved in every checkpoint, so ``metaclinic.adapt`` reads a lab's ``.h5ad`` files alike.

    Every class needs ``n_shot + n_query`` cells, in every split (an error names the types that are smaller
    and their sizes): the rarest type of a split bounds K + Q.

    Args:
        files: one or more ``.h5ad`` files; relative paths start at ``root``.
        meta_train: cell types to meta-train on (values of ``obs[label_key]``).
        meta_val: cell types to validate on (``[]``: no validation; the last checkpoint is evaluated).
        meta_test: cell types to report on.
        label_key: the ``obs`` column of cell types.
        layer: read ``layers[layer]`` instead of ``X`` (e.g. ``counts``).
        genes: the genes (``var_names``) to read, in this order; default those of ``gene_reference``.
        gene_reference: an ``.h5ad`` file whose ``var_names`` are the genes (default the first of ``files``);
            not with ``genes``.
        root: folder that relative paths start from; default ``$METACLINIC_DATA_DIR``, else ``./data``.
        **kwargs: episode settings of :class:`EpisodicDataModule` (n_way, n_shot, n_query, ...).
    """

    def __init__(
        self,
        files: str | list[str],
        meta_train: list[str],
        meta_val: list[str],
        meta_test: list[str],
        label_key: str = "bulk_labels",
        layer: str | None = None,
        genes: list[str] | None = None,
        gene_reference: str | None = None,
        root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        files = [files] if isinstance(files, str) else list(files)
        problems = Problems()
        if not files:
            problems.add("data.files lists no .h5ad file")
        if len(set(files)) != len(files):
            problems.add(f"data.files lists a file more than once: {files}")
        if genes is not None and gene_reference is not None:
            problems.add("give data.genes or data.gene_reference, not both (the genes and their order)")
        if genes is not None:
            twice = sorted({g for g in genes if genes.count(g) > 1})
            if not genes or twice:
                problems.add(f"data.genes must name distinct genes; {single_cell.named(twice)} occur twice")
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        problems.check_meta_splits(self.selectors, "cell type", "meta-splits must not share a class")
        problems.raise_if_any()
        self.root = Path(root) if root else default_data_root()
        self.files = [self.root / f for f in files]
        self.gene_reference = self.root / gene_reference if gene_reference else None
        self.label_key, self.layer = label_key, layer
        self._genes: list[str] | None = list(genes) if genes is not None else None

    # -- what the DataModule provides ------------------------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        """The genes of every example, in order (read from the reference file's var_names once)."""
        if self._genes is None:
            self._genes = single_cell.gene_names(self.gene_reference or self.files[0])
            if not self._genes:
                raise DataError(f"{self.gene_reference or self.files[0]}: var_names is empty (no genes)")
        return self._genes

    @property
    def example_shape(self) -> tuple[int]:
        return (len(self.genes),)

    def prepare_data(self) -> None:
        """Raises, naming every missing file, before any file is read."""
        missing = [str(p) for p in [*self.files, self.gene_reference] if p is not None and not p.is_file()]
        if missing:
            raise MissingDataError(
                f"no such .h5ad file(s): {', '.join(missing)}; point data.init_args.root (or "
                "METACLINIC_DATA_DIR) at the folder that holds them"
            )

    def build_pools(self) -> dict[str, ClassPool]:
        self.prepare_data()
        read = [single_cell.read_cells(p, self.genes, self.label_key, self.layer) for p in self.files]
        values = np.concatenate([cells.values for cells in read])
        labels = np.concatenate([cells.labels for cells in read])  # type: ignore[misc]
        for cells in read:
            log.info(
                "%s: %d cells, %d genes read from %s", Path(cells.source).name, len(cells), len(self.genes),
                "X" if self.layer is None else f"layers[{self.layer!r}]",
            )  # fmt: skip
        unlabelled = sum(label is None for label in labels)
        if unlabelled:
            log.warning(
                "%d cell(s) without obs[%r] belong to no class and are left out", unlabelled, self.label_key
            )
        counts = Counter(label for label in labels if label is not None)
        problems = Problems()
        for split, chosen in self.selectors.items():
            for name in chosen:
                if name not in counts:
                    present = ", ".join(f"{t!r} ({n})" for t, n in sorted(counts.items()))
                    problems.add(
                        f"data.{split}: no cell type {name!r}{did_you_mean(name, list(counts))} in "
                        f"obs[{self.label_key!r}] of {', '.join(p.name for p in self.files)}; its values "
                        f"(cells) are {present}"
                    )
        problems.raise_if_any()
        chosen_types = {name for chosen in self.selectors.values() for name in chosen}
        unused = sorted(set(counts) - chosen_types)
        if unused:
            log.info(
                "cell types in no meta-split (left out): %s", ", ".join(f"{t} ({counts[t]})" for t in unused)
            )
        examples = torch.from_numpy(values)
        domain = "+".join(p.stem for p in self.files)
        return {
            split: ClassPool(
                examples,
                [torch.from_numpy(np.flatnonzero(labels == name)) for name in chosen],
                [ClassInfo(name, name, domain) for name in chosen],
            )
            for split, chosen in self.selectors.items()
        }

    def _check_pool(self, split: str, pool: ClassPool) -> None:
        """Every split, meta-train too, refuses a cell type too small for an episode, naming its size."""
        needed = self.n_shot + self.n_query
        short = [
            f"{c.key!r} ({n} cells)"
            for c, n in zip(pool.classes, pool.class_sizes(), strict=True)
            if n < needed
        ]
        if short:
            raise DataError(
                f"{split}: {len(short)} cell type(s) have fewer than n_shot + n_query = {self.n_shot} + "
                f"{self.n_query} = {needed} cells: {', '.join(short)}. The rarest type of a split bounds "
                f"n_shot + n_query (here to {min(pool.class_sizes())}): lower n_shot or n_query, or move "
                f"these types out of {split}"
            )
        super()._check_pool(split, pool)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.trainer is not None and self.pools is not None and self.pools["meta_val"].num_classes == 0:
            # No validation types is the configuration: Lightning would still ask for loaders, and warn.
            self.trainer.limit_val_batches = 0

    # -- a lab's cells (metaclinic.adapt) --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The genes (names, in order) and where the values come from, saved in every checkpoint."""
        return {"cells": {"genes": self.genes, "layer": self.layer, "label_key": self.label_key}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run must read the genes it was trained on."""
        saved = state.get("cells")
        if saved and saved["genes"] != self.genes:
            raise DataError(
                f"the checkpoint was trained on {len(saved['genes'])} genes, this configuration reads "
                f"{len(self.genes)} (or in another order); use the run's genes (config.yaml)"
            )

    def saved_input_shape(self, state: dict[str, Any], source: str) -> tuple[int, ...]:
        """The number of the checkpoint's genes (the training files are not read)."""
        saved = state.get("cells")
        return (len(saved["genes"]),) if saved else tuple(self.example_shape)

    def case_reader(
        self, state: dict[str, Any], label_column: str | None = None, id_column: str | None = None
    ) -> single_cell.CellCases:
        """Reads a lab's ``.h5ad`` files with the checkpoint's genes: ``--label_column`` names the support
        file's ``obs`` column of cell types (default the training ``label_key``), ``--id_column`` an ``obs``
        column copied into ``predictions.csv``."""
        saved = state.get("cells")
        if saved is None:
            raise DataError("the checkpoint holds no gene list; was it written by metaclinic.fit?")
        return single_cell.CellCases(
            list(saved["genes"]), label_column or saved["label_key"], saved["layer"], id_column
        )
