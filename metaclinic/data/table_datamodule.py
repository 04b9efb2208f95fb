"""Patient tables as episodic tasks: over diagnoses, within hospitals, or over several diseases."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from metaclinic.data.datamodule import SPLITS, EpisodicDataModule, default_data_root
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.table import Table, TableSpec, read_table
from metaclinic.errors import DataError

log = logging.getLogger(__name__)

TaskMode = Literal["class", "site", "label"]
Classes = dict[str, list[tuple[ClassInfo, np.ndarray]]]  # split -> (class, its rows)
DEFAULT_FRACTIONS = {"meta_train": 0.6, "meta_val": 0.2, "meta_test": 0.2}


class TableEpisodes(EpisodicDataModule):
    """N-way K-shot tasks from a table of patient features (CSV, TSV, Parquet, headerless UCI files).

    ``task_mode`` says what a task is and what the meta-splits list:

    - ``class``: N-way K-shot over the values of ``label_column``, as for images; the splits list label
      values.
    - ``site``: one hospital's diagnosis task; the splits list sites (values of ``site_column``) and every
      episode draws its K shots per class and its queries within one site.
    - ``label``: one binary label column (a disease) is one task; the splits list label columns, and the
      patients are divided between the splits (``patient_fractions``) so none is seen in two of them.

    Features are imputed (with missing-value indicators), standardised and one-hot encoded by a
    :class:`TablePreprocessor` fitted on meta-train rows only; it is saved in checkpoints and restored from
    them, so evaluation and adaptation use exactly the transform training used. With ``patient_column``,
    an episode never holds one patient in both its support and query sets, and no patient's rows may fall
    in two meta-splits. In ``site`` mode, a meta-train site with fewer than ``n_shot + n_query`` patients of
    a class is left out of meta-training episodes (with a warning) rather than failing the run.

    Args:
        table: the file(s) and what their columns mean (see :class:`TableSpec`).
        meta_train: label values, sites or label columns (by ``task_mode``) to meta-train on.
        meta_val: those to validate on; may be empty (no validation, e.g. leave-one-hospital-out).
        meta_test: those to report on.
        task_mode: ``class``, ``site`` or ``label``.
        root: folder that relative table paths start from; default ``$METACLINIC_DATA_DIR``, else ``./data``.
        missing_indicators: add a 0/1 feature for every column with missing meta-train cells.
        patient_fractions: ``label`` mode: the share of patients in each meta-split.
        split_seed: ``label`` mode: seed of the division of patients between the splits.
        **kwargs: episode settings of :class:`EpisodicDataModule` (n_way, n_shot, n_query, ...).
    """

    def __init__(
        self,
        table: TableSpec,
        meta_train: list[str],
        meta_val: list[str],
        meta_test: list[str],
        task_mode: TaskMode = "class",
        root: str | None = None,
        missing_indicators: bool = True,
        patient_fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task_mode not in ("class", "site", "label"):
            raise DataError(f"data.task_mode must be 'class', 'site' or 'label', got {task_mode!r}")
        if task_mode == "site" and table.site_name is None:
            raise DataError("task_mode 'site' needs table.site_column (or a {site: file} table.path)")
        if task_mode != "label" and len(table.label_columns) != 1:
            raise DataError(f"task_mode {task_mode!r} takes one label_column, got {table.label_columns}")
        fractions = {**DEFAULT_FRACTIONS, **(patient_fractions or {})}
        if set(fractions) != set(SPLITS) or any(f < 0 for f in fractions.values()):
            raise DataError(f"data.patient_fractions: expected non-negative shares of {list(SPLITS)}")
        self.spec, self.task_mode, self.missing_indicators = table, task_mode, missing_indicators
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        self.root = Path(root) if root else default_data_root()
        self.patient_fractions, self.split_seed = fractions, split_seed
        self.preprocessor: TablePreprocessor | None = None
        self._table: Table | None = None
        self._classes: Classes | None = None
        self._patients: np.ndarray | None = None
        self._columns: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

    # -- what the DataModule provides ------------------------------------------------------------------------
    @property
    def example_shape(self) -> tuple[int]:
        self._load()
        assert self.preprocessor is not None
        return (self.preprocessor.width,)

    @property
    def feature_names(self) -> list[str]:
        self._load()
        assert self.preprocessor is not None
        return self.preprocessor.feature_names

    def build_pools(self) -> dict[str, ClassPool]:
        self._load()
        assert self._classes is not None and self.preprocessor is not None
        features = self._features(self.preprocessor)
        groups = None if self._patients is None else torch.from_numpy(self._patients)
        return {
            split: ClassPool(
                features,
                [torch.from_numpy(rows) for _, rows in classes],
                [info for info, _ in classes],
                groups=groups,
                same_domain_episodes=self.task_mode != "class",
            )
            for split, classes in self._classes.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """The fitted preprocessing, saved in every checkpoint (plain numbers and strings)."""
        return {"preprocessor": self.preprocessor.state_dict()} if self.preprocessor else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint's preprocessing and re-encodes the examples with it."""
        if "preprocessor" not in state:
            return
        self._load()
        self.preprocessor = TablePreprocessor.from_state_dict(state["preprocessor"])
        if self.pools is not None:
            features = self._features(self.preprocessor)
            for pool in self.pools.values():
                pool.examples = features

    # -- reading and splitting the table ---------------------------------------------------------------------
    def _load(self) -> None:
        if self._table is not None:
            return
        table = read_table(self.spec, self.root)
        self._patients = self._patient_ids(table)
        classes = {"class": self._class_tasks, "site": self._site_tasks, "label": self._label_tasks}[
            self.task_mode
        ](table)
        split_of_row = np.full(len(table), -1)
        for i, split in enumerate(SPLITS):
            for _, rows in classes[split]:
                split_of_row[rows] = i
        if self.task_mode != "label":
            self._check_patients_in_one_split(table, split_of_row)
        train_rows = np.flatnonzero(split_of_row == 0)
        numeric, categorical = self._feature_columns(table)
        if self.preprocessor is None:
            self.preprocessor = TablePreprocessor.fit(
                numeric, categorical, train_rows, self.missing_indicators
            )
        self._table, self._classes, self._columns = table, classes, (numeric, categorical)
        self._report_missingness(table, numeric, categorical, split_of_row)

    def _feature_columns(self, table: Table) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        spec = self.spec
        reserved = {*spec.label_columns, spec.site_name, spec.patient_column}
        names = spec.feature_columns or [c for c in table.cells if c not in reserved]
        leaking = [c for c in names if c in reserved]
        if leaking:
            raise DataError(f"feature_columns must not include label, site or patient columns: {leaking}")
        for name in spec.categorical_columns:
            if name not in names:
                raise DataError(f"categorical column {name!r} is not one of the feature columns {names}")
        numeric = {c: table.numbers(c) for c in names if c not in spec.categorical_columns}
        categorical = {c: table.categories(c) for c in names if c in spec.categorical_columns}
        return numeric, categorical

    def _features(self, preprocessor: TablePreprocessor) -> torch.Tensor:
        """Every row of the table encoded by ``preprocessor``: ``(rows, width)`` float32."""
        assert self._columns is not None
        return torch.from_numpy(preprocessor.transform(*self._columns))

    def _labels(self, table: Table, column: str, required: bool) -> np.ndarray:
        """The label of every row as text (``None`` = missing), binarised with ``positive_above``."""
        labels = table.labels(column, self.spec.positive_above)
        missing = np.flatnonzero([v is None for v in labels])
        if required and missing.size:
            raise DataError(
                f"label column {column!r} is missing in {missing.size} row(s): "
                f"{table.rows_message(missing)}; every row needs a label in {self.task_mode!r} task mode"
            )
        distinct = sorted({v for v in labels if v is not None})
        if len(distinct) < 2:
            raise DataError(
                f"label column {column!r} has a single value {distinct}; a diagnosis task needs two or more"
            )
        return labels

    def _choose(self, split: str, available: list[str], what: str) -> list[str]:
        unknown = [s for s in self.selectors[split] if s not in available]
        if unknown:
            raise DataError(f"data.{split}: unknown {what} {unknown}; the table has {available}")
        return list(self.selectors[split])

    def _log_unused(self, available: list[str], what: str) -> None:
        used = {s for chosen in self.selectors.values() for s in chosen}
        unused = [a for a in available if a not in used]
        if unused:
            log.info("%d %s of the table are in no meta-split: %s", len(unused), what, unused)

    def _class_tasks(self, table: Table) -> Classes:
        column = self.spec.label_columns[0]
        labels = self._labels(table, column, required=True)
        values = sorted(set(labels))
        self._log_unused(values, f"values of {column!r}")
        return {
            split: [
                (ClassInfo(v, f"{column}={v}", column, label=v), np.flatnonzero(labels == v))
                for v in self._choose(split, values, f"value(s) of {column!r}")
            ]
            for split in SPLITS
        }

    def _site_tasks(self, table: Table) -> Classes:
        column, site_column = self.spec.label_columns[0], self.spec.site_name
        assert site_column is not None
        labels = self._labels(table, column, required=True)
        sites = table.column(site_column)
        missing = np.flatnonzero([s is None for s in sites])
        if missing.size:
            raise DataError(f"site column {site_column!r} is missing in {table.rows_message(missing)}")
        values, available = sorted(set(labels)), sorted(set(sites))
        self._log_unused(available, f"sites ({site_column!r})")
        return {
            split: [
                (
                    ClassInfo(f"{site}/{v}", f"{site}: {column}={v}", site, label=v),
                    np.flatnonzero((sites == site) & (labels == v)),
                )
                for site in self._choose(split, available, "site(s)")
                for v in values
            ]
            for split in SPLITS
        }

    def _label_tasks(self, table: Table) -> Classes:
        columns = self.spec.label_columns
        labels = {c: self._labels(table, c, required=False) for c in columns}
        for column, values in labels.items():
            distinct = sorted({v for v in values if v is not None})
            if len(distinct) != 2:
                raise DataError(
                    f"label column {column!r} must be binary in 'label' task mode; it has {len(distinct)} "
                    "values (set table.positive_above to binarise it)"
                )
        self._log_unused(columns, "label columns")
        split_of_row = self._divide_patients(len(table))
        classes: Classes = {}
        for i, split in enumerate(SPLITS):
            classes[split] = []
            for column in self._choose(split, columns, "label column(s)"):
                values = labels[column]
                unlabelled = int(np.sum([v is None for v in values[split_of_row == i]]))
                if unlabelled:
                    log.info("%s: %d rows have no %r label and sit out its tasks", split, unlabelled, column)
                for v in sorted({v for v in values if v is not None}):
                    rows = np.flatnonzero((values == v) & (split_of_row == i))
                    classes[split].append((ClassInfo(f"{column}={v}", f"{column}={v}", column), rows))
        return classes

    def _divide_patients(self, num_rows: int) -> np.ndarray:
        """``label`` mode: the meta-split of every row, dividing whole patients by ``patient_fractions``."""
        units = self._patients if self._patients is not None else np.arange(num_rows)
        shares = np.array(
            [self.patient_fractions[s] if self.selectors[s] else 0.0 for s in SPLITS], dtype=np.float64
        )
        if shares.sum() <= 0:
            raise DataError("data.patient_fractions gives no patients to the meta-splits in use")
        patients = np.unique(units)
        np.random.default_rng(self.split_seed).shuffle(patients)
        bounds = np.round(np.cumsum(shares / shares.sum()) * len(patients)).astype(int)
        split_of_patient = np.searchsorted(bounds, np.arange(len(patients)), side="right")
        lookup = dict(zip(patients.tolist(), split_of_patient.tolist(), strict=True))
        return np.array([lookup[u] for u in units.tolist()])

    def _patient_ids(self, table: Table) -> np.ndarray | None:
        column = self.spec.patient_column
        if column is None:
            return None
        ids = table.column(column)
        missing = np.flatnonzero([v is None for v in ids])
        if missing.size:
            raise DataError(f"patient column {column!r} is missing in {table.rows_message(missing)}")
        return np.unique(ids.astype(str), return_inverse=True)[1].astype(np.int64)

    def _check_patients_in_one_split(self, table: Table, split_of_row: np.ndarray) -> None:
        if self._patients is None:
            return
        used = split_of_row >= 0
        pairs = np.unique(np.stack([self._patients[used], split_of_row[used]], axis=1), axis=0)
        patients, counts = np.unique(pairs[:, 0], return_counts=True)
        crossing = patients[counts > 1]
        if crossing.size:
            rows = np.flatnonzero(np.isin(self._patients, crossing) & used)
            raise DataError(
                f"{crossing.size} patient(s) of column {self.spec.patient_column!r} have rows in more than "
                f"one meta-split (e.g. {table.rows_message(rows)}); a patient must stay in one split. "
                "Assign their rows' labels or sites to a single split."
            )

    def _report_missingness(
        self,
        table: Table,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        split_of_row: np.ndarray,
    ) -> None:
        """Logs counts only (no values): columns missing for a whole site, unseen categories."""
        assert self.preprocessor is not None
        site_column = self.spec.site_name
        for i, split in enumerate(SPLITS):
            rows = np.flatnonzero(split_of_row == i)
            unseen = self.preprocessor.unseen_categories(categorical, rows)
            for column, count in unseen.items():
                log.warning(
                    "%s: %d rows have a %r value that meta-train never showed; it encodes as all zeros",
                    split, count, column,
                )  # fmt: skip
            if site_column is None:
                continue
            sites = table.column(site_column)
            for site in sorted({sites[r] for r in rows}):
                site_rows = rows[sites[rows] == site]
                empty = [c for c, v in numeric.items() if np.isnan(v[site_rows]).all()]
                empty += [c for c, v in categorical.items() if all(x is None for x in v[site_rows])]
                if empty:
                    log.info(
                        "%s: site %s has no values of %s; they are imputed and flagged as missing",
                        split, site, empty,
                    )  # fmt: skip
