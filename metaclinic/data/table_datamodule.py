"""Patient tables as episodic tasks: over diagnoses, within hospitals or one cohort, or over diseases."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from metaclinic.data.cases import TableCases
from metaclinic.data.column_roles import ColumnRoles, infer_roles
from metaclinic.data.datamodule import SPLITS, EpisodicDataModule, default_data_root
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.problems import Problems
from metaclinic.data.table import Table, TableSpec, read_table
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError

log = logging.getLogger(__name__)

TaskMode = Literal["class", "site", "label", "cohort"]
TASK_MODES = ("class", "site", "label", "cohort")
Classes = dict[str, list[tuple[ClassInfo, np.ndarray]]]  # split -> (class, its rows)
DEFAULT_FRACTIONS = {"meta_train": 0.6, "meta_val": 0.2, "meta_test": 0.2}
COHORT_HINT = (
    "For one outcome column, use task_mode: cohort (its patients are divided between the meta-splits; "
    "README: 'Which task mode for my table')"
)
OVERLAP_HINTS = {  # why the splits of a mode cannot share an entry, and what to do instead
    "class": f": class mode meta-tests on label values that meta-train never showed. {COHORT_HINT}",
    "label": f": label mode meta-tests on label columns (diseases) meta-train never showed. {COHORT_HINT}",
}


class TableEpisodes(EpisodicDataModule):
    """N-way K-shot tasks from a table of patient features (CSV, TSV, Parquet, headerless UCI files).

    ``task_mode`` says what a task is and what the meta-splits list:

    - ``class``: N-way K-shot over the values of ``label_column``, as for images; the splits list label
      values.
    - ``site``: one hospital's diagnosis task; the splits list sites (values of ``site_column``) and every
      episode draws its K shots per class and its queries within one site.
    - ``label``: one binary label column (a disease) is one task; the splits list label columns, and the
      patients are divided between the splits (``patient_fractions``) so none is seen in two of them.
    - ``cohort``: one table, one outcome: the patients are divided between the splits
      (``patient_fractions``) and every split's tasks are the same diagnosis (the splits list the values of
      ``label_column`` to use, the same in each), drawn from that split's patients only.

    Features are imputed (with missing-value indicators), standardised and one-hot encoded by a
    :class:`TablePreprocessor` fitted on meta-train rows only; it is saved in checkpoints and restored from
    them, so evaluation and adaptation use exactly the transform training used. With ``meta_train: []``
    (an evaluation-only run, for methods with nothing to meta-train) no statistic can be fitted without
    using the evaluated patients, so numeric features are imputed and standardised within each episode
    from its support set alone. Which columns are features,
    and how they are encoded, is inferred and logged (:mod:`metaclinic.data.column_roles`). Every problem
    of the table is reported in one error before anything is fitted.

    With ``patient_column``, an episode never holds one patient in both its support and query sets, and no
    patient's rows may fall in two meta-splits. In ``site`` mode, a meta-train site with fewer than
    ``n_shot + n_query`` patients of a class is left out of meta-training episodes (with a warning) rather
    than failing the run; ``min_class_size`` drops (or ``merge_rare_into`` merges) rare classes of any split.

    Args:
        table: the file(s) and what their columns mean (see :class:`TableSpec`).
        meta_train: label values, sites or label columns (by ``task_mode``) to meta-train on; empty: an
            evaluation-only run.
        meta_val: those to validate on; may be empty (no validation, e.g. leave-one-hospital-out).
        meta_test: those to report on.
        task_mode: ``class``, ``site``, ``label`` or ``cohort``.
        root: folder that relative table paths start from; default ``$METACLINIC_DATA_DIR``, else ``./data``.
        missing_indicators: add a 0/1 feature for every column with missing meta-train cells.
        patient_fractions: ``label`` and ``cohort`` modes: the share of patients in each meta-split (those
            of an empty split go to the others).
        split_seed: ``label`` and ``cohort`` modes: seed of the division of patients between the splits.
        min_class_size: classes (a label value, in a site or split) with fewer patients than this are
            dropped, with a warning naming them, instead of failing set-up; ``None``: keep every class.
        merge_rare_into: with ``min_class_size``, merge the rare classes of a site or split into one class
            of this name (e.g. ``other``) instead of dropping them; dropped if still too small.
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
        min_class_size: int | None = None,
        merge_rare_into: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        problems = Problems()
        if task_mode not in TASK_MODES:
            problems.add(f"data.task_mode must be one of {list(TASK_MODES)}, got {task_mode!r}")
        if task_mode == "site" and table.site_name is None:
            problems.add("task_mode 'site' needs table.site_column (or a {site: file} table.path)")
        if task_mode != "label" and len(table.label_columns) != 1:
            problems.add(f"task_mode {task_mode!r} takes one label_column, got {table.label_columns}")
        fractions = {**DEFAULT_FRACTIONS, **(patient_fractions or {})}
        if set(fractions) != set(SPLITS) or any(f < 0 for f in fractions.values()):
            problems.add(f"data.patient_fractions: expected non-negative shares of {list(SPLITS)}")
        if merge_rare_into is not None and (min_class_size is None or task_mode == "label"):
            problems.add(
                "data.merge_rare_into needs data.min_class_size (the size below which a class is rare), and "
                "does not apply to task_mode 'label' (its classes are the two values of a binary column)"
            )
        for message in table.config_problems():
            problems.add(message)
        problems.raise_if_any()
        self.spec, self.task_mode, self.missing_indicators = table, task_mode, missing_indicators
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        self.root = Path(root) if root else default_data_root()
        self.patient_fractions, self.split_seed = fractions, split_seed
        self.min_class_size, self.merge_rare_into = min_class_size, merge_rare_into
        self.preprocessor: TablePreprocessor | None = None
        self.roles: ColumnRoles | None = None
        self._table: Table | None = None
        self._classes: Classes | None = None
        self._patients: np.ndarray | None = None
        self._columns: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

    @property
    def evaluation_only(self) -> bool:
        """No meta-train split: only methods with nothing to meta-train can be scored."""
        return not self.selectors["meta_train"]

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

    def raw_columns(self, split: str = "meta_train") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The feature columns of ``split``'s rows before preprocessing: numeric (float, NaN = missing) and
        categorical (text, ``None`` = missing), by column. What a federated site summarises
        (:mod:`metaclinic.federated.statistics`) so that every site encodes its features alike."""
        self._load()
        assert self._classes is not None and self._columns is not None
        parts = [rows for _, rows in self._classes[split]]
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        numeric, categorical = self._columns
        return {c: v[rows] for c, v in numeric.items()}, {c: v[rows] for c, v in categorical.items()}

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

    def saved_input_shape(self, state: dict[str, Any], source: str) -> tuple[int, ...]:
        """The encoded width of the checkpoint's preprocessing (the table itself is not read)."""
        return (self._saved_preprocessor(state, source).width,)

    def case_reader(
        self, state: dict[str, Any], label_column: str | None = None, id_column: str | None = None
    ) -> TableCases:
        """Reads support and prediction tables with this table's settings and the checkpoint's encoding."""
        preprocessor = self._saved_preprocessor(state, "the checkpoint")
        return TableCases(self.spec, preprocessor, label_column, id_column)

    @staticmethod
    def _saved_preprocessor(state: dict[str, Any], source: str) -> TablePreprocessor:
        if "preprocessor" not in state:
            raise DataError(f"{source} holds no table preprocessing; was it written by metaclinic.fit?")
        return TablePreprocessor.from_state_dict(state["preprocessor"])

    # -- evaluation-only runs and empty splits ---------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.trainer is not None and self.pools is not None and self.pools["meta_val"].num_classes == 0:
            # Without validation episodes, Lightning would still ask for them and warn that the empty list
            # of loaders "across ranks is zero"; no validation batch is the configuration, not an accident.
            self.trainer.limit_val_batches = 0

    def _check_pool(self, split: str, pool: ClassPool) -> None:
        if split == "meta_train" and self.evaluation_only:
            log.info("meta_train: empty, an evaluation-only run (for methods with nothing to meta-train)")
            return
        super()._check_pool(split, pool)

    def train_dataloader(self) -> DataLoader:
        if self.evaluation_only:
            model = type(self.trainer.lightning_module).__name__ if self.trainer is not None else "the model"
            raise DataError(
                f"data.meta_train is empty (an evaluation-only run), but {model} is meta-trained; evaluate "
                "a method with nothing to meta-train (--model=metaclinic.baselines.SupportLogisticRegression "
                "or NearestCentroid), or give meta_train its label values, sites or label columns"
            )
        return super().train_dataloader()

    def supervised_data(self, split: str = "meta_train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if self.pools is not None and self.pools[split].num_classes == 0:
            raise DataError(
                f"data.{split} is empty, but a supervised baseline (e.g. PooledLogisticRegression) is "
                f"trained on its patients; give {split} label values, sites or label columns"
            )
        return super().supervised_data(split)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, TaskBatch) and self.preprocessor is not None and self.preprocessor.per_episode:
            batch.support_x, batch.query_x = self.preprocessor.standardise_episodes(
                batch.support_x, batch.query_x
            )
        return batch

    # -- reading and splitting the table ---------------------------------------------------------------------
    def _load(self) -> None:
        if self._table is not None:
            return
        table = self._drop_rows_missing(read_table(self.spec, self.root))
        problems, classes = Problems(), None
        with problems.collect():
            self._patients = self._patient_ids(table)
        builders = {
            "class": self._class_tasks, "site": self._site_tasks, "label": self._label_tasks,
            "cohort": self._cohort_tasks,
        }  # fmt: skip
        with problems.collect():
            classes = builders[self.task_mode](table, problems)
        roles = infer_roles(table, self.spec, problems)
        problems.raise_if_any()  # every problem of the table at once, before anything derived is reported
        assert classes is not None
        classes = self._without_rare_classes(classes)
        split_of_row = np.full(len(table), -1)
        for i, split in enumerate(SPLITS):
            for _, rows in classes[split]:
                split_of_row[rows] = i
        if self.task_mode not in ("label", "cohort"):  # those modes divide patients themselves
            self._check_patients_in_one_split(table, split_of_row)
        log.info("table columns: %s", roles.describe())
        numeric = {c: table.numbers(c) for c in roles.numeric}
        categorical = {c: table.categories(c) for c in roles.categorical}
        if self.preprocessor is None:
            self.preprocessor = (
                TablePreprocessor.for_episodes(numeric, categorical, self.missing_indicators)
                if self.evaluation_only
                else TablePreprocessor.fit(
                    numeric, categorical, np.flatnonzero(split_of_row == 0), self.missing_indicators
                )
            )
        self._table, self._classes, self._columns, self.roles = table, classes, (numeric, categorical), roles
        self._report_missingness(table, numeric, categorical, split_of_row)

    def _drop_rows_missing(self, table: Table) -> Table:
        """``table`` without the rows whose site or label ``drop_rows_missing`` names is missing (counted)."""
        spec, drop, reasons = self.spec, np.zeros(len(table), dtype=bool), []
        columns = {"label": spec.label_columns, "site": [spec.site_name]}
        for role in spec.drop_rows_missing:
            for column in columns[role]:
                missing = np.array([v is None for v in table.column(column)], dtype=bool)
                if missing.any():
                    reasons.append(f"{int(missing.sum())} without a {role} ({column!r})")
                drop |= missing
        if not drop.any():
            return table
        log.info(
            "drop_rows_missing: %d of %d rows dropped (%s); %d remain",
            int(drop.sum()), len(table), ", ".join(reasons), int((~drop).sum()),
        )  # fmt: skip
        if drop.all():
            raise DataError(f"drop_rows_missing {spec.drop_rows_missing} drops every row of {table.files}")
        return table.subset(np.flatnonzero(~drop))

    def _features(self, preprocessor: TablePreprocessor) -> torch.Tensor:
        """Every row of the table encoded by ``preprocessor``: ``(rows, width)`` float32."""
        assert self._columns is not None
        return torch.from_numpy(preprocessor.transform(*self._columns))

    def _labels(self, table: Table, column: str, required: bool, problems: Problems) -> np.ndarray | None:
        """The label of every row as text (``None`` = missing), binarised as the table spec says.

        Problems go to ``problems``; ``None`` when the labels cannot be used.
        """
        labels = None
        with problems.collect():
            labels = table.labels(column, self.spec)
        if labels is None:
            return None
        usable = True
        missing = np.flatnonzero([v is None for v in labels])
        if required and missing.size:
            problems.add(
                f"label column {column!r} is missing in {missing.size} row(s): "
                f"{table.rows_message(missing)}; every row needs a label in {self.task_mode!r} task mode (or "
                "set table.drop_rows_missing: [label])"
            )
            usable = False
        distinct = sorted({v for v in labels if v is not None})
        if len(distinct) < 2:
            problems.add(
                f"label column {column!r} has a single value {distinct}; a diagnosis task needs two or more"
            )
            usable = False
        return labels if usable else None

    def _check_selectors(self, available: list[str], what: str, problems: Problems, shared: bool) -> None:
        """Unknown entries of the meta-splits, and (unless ``shared``) entries in two splits, as problems."""
        for split in SPLITS:
            unknown = [s for s in self.selectors[split] if s not in available]
            if unknown:
                problems.add(f"data.{split}: unknown {what} {unknown}; the table has {available}")
        if shared:
            return
        for i, first in enumerate(SPLITS):
            for second in SPLITS[i + 1 :]:
                both = [s for s in self.selectors[first] if s in self.selectors[second]]
                if both:
                    problems.add(
                        f"data.{first} and data.{second} both list {what} {both}; meta-splits must be "
                        f"disjoint{OVERLAP_HINTS.get(self.task_mode, '')}"
                    )
        used = {s for chosen in self.selectors.values() for s in chosen}
        unused = [a for a in available if a not in used]
        if unused:
            log.info("%d %s of the table are in no meta-split: %s", len(unused), what, unused)

    def _class_info(self, split: str, domain: str, value: str) -> ClassInfo:
        """The class of label ``value`` in ``domain`` (a site, the label column) of ``split``."""
        column = self.spec.label_columns[0]
        if self.task_mode == "site":
            return ClassInfo(f"{domain}/{value}", f"{domain}: {column}={value}", domain, label=value)
        if self.task_mode == "cohort":  # the same outcome in every split: the key says whose patients
            return ClassInfo(f"{split}/{value}", f"{column}={value}", domain, label=value)
        if self.task_mode == "label":
            return ClassInfo(f"{domain}={value}", f"{domain}={value}", domain)
        return ClassInfo(value, f"{column}={value}", domain, label=value)

    def _label_values(
        self, table: Table, problems: Problems, shared: bool
    ) -> tuple[str, np.ndarray, list[str]] | None:
        """The label column, its value per row and its distinct values, checked against the selectors."""
        column = self.spec.label_columns[0]
        labels = self._labels(table, column, required=True, problems=problems)
        if labels is None:
            return None
        values = sorted(set(labels))
        self._check_selectors(values, f"value(s) of {column!r}", problems, shared=shared)
        return column, labels, values

    def _class_tasks(self, table: Table, problems: Problems) -> Classes | None:
        found = self._label_values(table, problems, shared=False)
        if found is None:
            return None
        column, labels, values = found
        for split in SPLITS:
            chosen = self.selectors[split]
            if chosen and len(chosen) < self.n_way:
                hint = f" {COHORT_HINT}." if len(values) < 2 * self.n_way else ""
                problems.add(
                    f"data.{split} lists {len(chosen)} value(s) of {column!r} ({chosen}), fewer than "
                    f"n_way={self.n_way}: a class-mode task draws n_way label values of one split.{hint}"
                )
        return {
            split: [
                (self._class_info(split, column, v), np.flatnonzero(labels == v))
                for v in self.selectors[split]
                if v in values
            ]
            for split in SPLITS
        }

    def _site_tasks(self, table: Table, problems: Problems) -> Classes | None:
        column, site_column = self.spec.label_columns[0], self.spec.site_name
        assert site_column is not None
        labels = self._labels(table, column, required=True, problems=problems)
        sites = table.column(site_column)
        missing = np.flatnonzero([s is None for s in sites])
        if missing.size:
            problems.add(
                f"site column {site_column!r} is missing in {table.rows_message(missing)} (set "
                "table.drop_rows_missing: [site] to drop those rows, or column_missing_values_only to say "
                "which cells of the column mean missing)"
            )
            return None
        available = sorted(set(sites))
        self._check_selectors(available, "site(s)", problems, shared=False)
        if labels is None:
            return None
        values = sorted(set(labels))
        return {
            split: [
                (self._class_info(split, site, v), np.flatnonzero((sites == site) & (labels == v)))
                for site in self.selectors[split]
                if site in available
                for v in values
            ]
            for split in SPLITS
        }

    def _label_tasks(self, table: Table, problems: Problems) -> Classes | None:
        columns = self.spec.label_columns
        labels = {c: self._labels(table, c, required=False, problems=problems) for c in columns}
        for column, values in labels.items():
            if values is None:
                continue
            distinct = sorted({v for v in values if v is not None})
            if len(distinct) != 2:
                problems.add(
                    f"label column {column!r} must be binary in 'label' task mode; it has {len(distinct)} "
                    "values (set table.positive_above, positive_values or negative_values to binarise it)"
                )
        self._check_selectors(columns, "label column(s)", problems, shared=False)
        if any(v is None for v in labels.values()):
            return None
        split_of_row = self._divide_patients(len(table))
        classes: Classes = {}
        for i, split in enumerate(SPLITS):
            classes[split] = []
            for column in self.selectors[split]:
                if column not in labels:
                    continue
                values = labels[column]
                unlabelled = int(np.sum([v is None for v in values[split_of_row == i]]))
                if unlabelled:
                    log.info("%s: %d rows have no %r label and sit out its tasks", split, unlabelled, column)
                for v in sorted({v for v in values if v is not None}):
                    rows = np.flatnonzero((values == v) & (split_of_row == i))
                    classes[split].append((self._class_info(split, column, v), rows))
        return classes

    def _cohort_tasks(self, table: Table, problems: Problems) -> Classes | None:
        """One outcome, patients divided between the splits: each split's classes are its own patients'."""
        found = self._label_values(table, problems, shared=True)
        if found is None:
            return None
        column, labels, values = found
        split_of_row = self._divide_patients(len(table))
        return {
            split: [
                (self._class_info(split, column, v), np.flatnonzero((labels == v) & (split_of_row == i)))
                for v in self.selectors[split]
                if v in values
            ]
            for i, split in enumerate(SPLITS)
        }

    def _without_rare_classes(self, classes: Classes) -> Classes:
        """Classes with fewer than ``min_class_size`` patients dropped, or merged per domain (logged)."""
        if self.min_class_size is None:
            return classes
        kept: Classes = {}
        for split, entries in classes.items():
            kept[split], merged, dropped = [], {}, []
            for info, rows in entries:
                if self._units(rows) >= self.min_class_size:
                    kept[split].append((info, rows))
                elif self.merge_rare_into is not None:
                    merged.setdefault(info.domain, []).append((info, rows))
                else:
                    dropped.append(f"{info.key} ({self._units(rows)})")
            notes = []
            for domain, rare in merged.items():
                rows = np.concatenate([r for _, r in rare])
                info = self._class_info(split, domain, self.merge_rare_into)
                same = [i for i, (k, _) in enumerate(kept[split]) if k.key == info.key]
                if same:  # the table has a class of that name already: the rare ones join it
                    i = same[0]
                    kept[split][i] = (kept[split][i][0], np.sort(np.concatenate([kept[split][i][1], rows])))
                elif self._units(rows) >= self.min_class_size:
                    kept[split].append((info, np.sort(rows)))
                else:
                    dropped.append(f"{info.key} ({self._units(rows)}, after merging)")
                notes.append(f"{', '.join(k.key for k, _ in rare)} merged into {info.key}")
            if notes or dropped:
                log.warning(
                    "%s: classes with fewer than min_class_size=%d patients: %s%s",
                    split, self.min_class_size, "; ".join(notes),
                    f"{'; ' if notes else ''}dropped: {', '.join(dropped)}" if dropped else "",
                )  # fmt: skip
        return kept

    def _units(self, rows: np.ndarray) -> int:
        """Patients (rows when there is no patient column) among ``rows``."""
        return len(rows) if self._patients is None else len(np.unique(self._patients[rows]))

    def _divide_patients(self, num_rows: int) -> np.ndarray:
        """``label``/``cohort`` modes: the meta-split of every row, whole patients divided by fractions."""
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
