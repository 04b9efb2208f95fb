"""Time series (e.g. ECG) as episodic tasks: classes of several data sets assigned to meta-splits."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaclinic.data import timeseries
from metaclinic.data.datamodule import EpisodicDataModule, default_data_root
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.errors import DataError, MissingDataError

log = logging.getLogger(__name__)

DEFAULT_FOLDER = "ucr_ecg"  # under $METACLINIC_DATA_DIR, as MedMNIST's files are under medmnist/
LABELS = re.compile(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?")  # "3", "1-5", "-1", "-3--1"


def parse_selector(selector: str, split: str) -> tuple[str, list[int] | None]:
    """``"ECG5000"`` (every class), ``"ECG5000:3"``, ``"ECG5000:1-5"`` or ``"ECG200:-1,1"`` -> (data set,
    labels; ``None`` for every label of the data set).

    MedMNIST's selectors, with comma-separated lists because labels of the archive can be negative or skip
    values. Ranges include both ends and name every integer between them; which of them the data set has is
    checked when it is read (:meth:`TimeSeriesEpisodes.build_pools`).
    """
    name, colon, labels = selector.partition(":")
    usage = "write 'dataset', 'dataset:3', 'dataset:1-5' or 'dataset:-1,1'"
    if not name.strip():
        raise DataError(f"data.{split}: {selector!r} names no data set; {usage}")
    if not colon:
        return name, None
    chosen: list[int] = []
    for item in labels.split(","):
        match = LABELS.fullmatch(item)
        if match is None:
            raise DataError(f"data.{split}: cannot read {selector!r}; {usage}")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise DataError(f"data.{split}: {selector!r}: the range {item.strip()!r} is empty")
        chosen += range(first, last + 1)
    if len(set(chosen)) != len(chosen):
        raise DataError(f"data.{split}: {selector!r} names a label twice")
    return name, chosen


class TimeSeriesEpisodes(EpisodicDataModule):
    """N-way K-shot tasks over time-series classes; every (data set, label) pair is one class.

    Each meta-split is a list of class selectors, as for MedMNIST: a data set name takes all its labels
    (``"ECG200"``), ``"ECG5000:3"`` one, ``"ECG5000:1-3"`` a range and ``"ECG200:-1,1"`` a list (labels are
    the integers in the files, which may be negative or skip values; a selector naming a label the data set
    does not have is an error listing the labels it has). Data sets are read as
    :mod:`metaclinic.data.timeseries` describes: the UCR archive's ``<name>_TRAIN.tsv`` and
    ``<name>_TEST.tsv`` pooled, or NumPy arrays; every series is resampled to ``length`` values and
    z-normalised, so data sets of different lengths (and rates) mix. An example is a ``(channels, length)``
    float32 tensor.

    With ``same_dataset_episodes`` (the default) all classes of an episode come from one data set, so that a
    task is a question of one recording setup ("normal or infarction in ECG200"), not "which archive is this
    from", which the series' length and scale would answer; each data set of a split then needs ``n_way``
    classes, and the report breaks the meta-test results down by data set.

    Args:
        meta_train: class selectors of the meta-training classes.
        meta_val: class selectors of the meta-validation classes (``[]``: no validation).
        meta_test: class selectors of the meta-test classes.
        length: values per series after resampling (the model's input length).
        root: folder with the data sets' files; defaults to ``$METACLINIC_DATA_DIR/ucr_ecg``
            (``./data/ucr_ecg`` when that variable is unset).
        channels: channels per series (1 for the UCR archive's univariate files); every data set must have
            them.
        z_normalise: z-normalise every series after resampling (the archive's convention); ``False`` keeps
            the amplitudes, e.g. of arrays in physical units.
        same_dataset_episodes: draw the classes of every episode from a single data set.
        positive_labels: the clinically positive label of a data set (``{"ECG200": -1}``: its myocardial
            infarctions): the positive class of its binary episodes, for which the report gives sensitivity
            and specificity. A data set not named here takes the class whose key sorts last
            (``"ECG200:1"`` of ``"ECG200:-1"``), which need not be the diseased one.
        **kwargs: episode settings of :class:`EpisodicDataModule` (n_way, n_shot, n_query, ...).
    """

    def __init__(
        self,
        meta_train: list[str],
        meta_val: list[str],
        meta_test: list[str],
        length: int,
        root: str | None = None,
        channels: int = 1,
        z_normalise: bool = True,
        same_dataset_episodes: bool = True,
        positive_labels: dict[str, int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if length < 2:
            raise DataError(f"data.length must be at least 2 (values per series), got {length}")
        if channels < 1:
            raise DataError(f"data.channels must be at least 1, got {channels}")
        self.length, self.channels, self.z_normalise = length, channels, z_normalise
        self.same_dataset_episodes = same_dataset_episodes
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        self.classes = {
            split: [parse_selector(s, split) for s in sel] for split, sel in self.selectors.items()
        }
        self.root = Path(root) if root else default_data_root() / DEFAULT_FOLDER
        self.datasets = sorted({name for chosen in self.classes.values() for name, _ in chosen})
        self.positive_labels = dict(positive_labels or {})
        unknown = sorted(set(self.positive_labels) - set(self.datasets))
        if unknown:
            raise DataError(
                f"data.positive_labels names {', '.join(unknown)}, which no meta-split selects; the data "
                f"sets are {', '.join(self.datasets)}"
            )
        for name, label in self.positive_labels.items():
            if isinstance(label, bool) or not isinstance(label, int):
                raise DataError(
                    f"data.positive_labels.{name}: {label!r} is not a label of the file (an integer, e.g. -1)"
                )

    @property
    def example_shape(self) -> tuple[int, int]:
        return (self.channels, self.length)

    def prepare_data(self) -> None:
        """Raises, naming every missing file and where it is expected, before any file is read."""
        missing = []
        for name in self.datasets:
            try:
                timeseries.data_set_files(name, self.root)
            except MissingDataError as error:
                missing.append(str(error))
        if missing:
            raise MissingDataError("\n".join(missing))

    def build_pools(self) -> dict[str, ClassPool]:
        read = {name: self._read(name) for name in self.datasets}  # once, also when several splits use it
        return {split: self._pool(split, chosen, read) for split, chosen in self.classes.items()}

    def _read(self, name: str) -> tuple[torch.Tensor, np.ndarray]:
        """The data set's model inputs ``(N, channels, length)`` and integer labels."""
        series = timeseries.read_data_set(name, self.root)
        if series.values.shape[1] != self.channels:
            raise DataError(
                f"{series.source}: series of {series.values.shape[1]} channel(s), but data.channels is "
                f"{self.channels}"
            )
        assert series.labels is not None
        labels, counts = np.unique(series.labels, return_counts=True)
        positive = self.positive_labels.get(name)
        if positive is not None and positive not in labels:
            raise DataError(
                f"data.positive_labels.{name}: {series.source} has no label {positive}; its labels are "
                f"{', '.join(map(str, labels.tolist()))}"
            )
        log.info(
            "%s: %d series of %d values, resampled to %d; classes %s",
            name, len(series), series.values.shape[-1], self.length,
            ", ".join(f"{name}:{label} ({count})" for label, count in zip(labels, counts, strict=True)),
        )  # fmt: skip
        return timeseries.to_examples(series.values, self.length, self.z_normalise), series.labels

    def _pool(
        self,
        split: str,
        chosen: list[tuple[str, list[int] | None]],
        read: dict[str, tuple[torch.Tensor, np.ndarray]],
    ) -> ClassPool:
        examples, indices, classes = [], [], []
        offset = 0
        for name, labels in chosen:
            x, y = read[name]
            present = np.unique(y).tolist()
            missing = [label for label in labels or [] if label not in present]
            if missing:
                raise DataError(
                    f"data.{split}: {name} has no label {', '.join(map(str, missing))}; its labels are "
                    f"{', '.join(map(str, present))} (select them as {name}:{','.join(map(str, present))})"
                )
            for label in present if labels is None else labels:
                positive = self.positive_labels.get(name) == label
                info = ClassInfo(f"{name}:{label}", f"label {label}", name, positive=positive)
                if any(c.key == info.key for c in classes):
                    raise DataError(f"data.{split}: class {info.key} is selected twice")
                rows = torch.from_numpy(np.flatnonzero(y == label))
                examples.append(x[rows])
                indices.append(torch.arange(offset, offset + len(rows)))
                classes.append(info)
                offset += len(rows)
        stacked = torch.cat(examples) if examples else torch.empty(0, *self.example_shape)
        return ClassPool(stacked, indices, classes, same_domain_episodes=self.same_dataset_episodes)

    def _check_pool(self, split: str, pool: ClassPool) -> None:
        """Also meta-train refuses a class too small for an episode (rather than leave it out), and with
        same-dataset episodes every data set of a split must have ``n_way`` classes (else its classes would
        never be drawn)."""
        if pool.num_classes > 0:
            needed = self.n_shot + self.n_query
            pool.check_enough_examples(needed, split, f"n_shot + n_query = {self.n_shot} + {self.n_query}")
        if self.same_dataset_episodes:
            for name, ids in pool.domains().items():
                if len(ids) < self.n_way:
                    keys = [pool.classes[i].key for i in ids]
                    raise DataError(
                        f"{split}: data set {name} has {len(ids)} class(es) {keys}, fewer than n_way="
                        f"{self.n_way}, and episodes draw their classes from one data set "
                        "(same_dataset_episodes); add classes of it or move it to another split"
                    )
        super()._check_pool(split, pool)

    # -- a clinic's series (metaclinic.adapt) ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """How series become model inputs, saved in every checkpoint so that adapt reads new series alike."""
        return {"series": {"channels": self.channels, "length": self.length, "z_normalise": self.z_normalise}}

    def saved_input_shape(self, state: dict[str, Any], source: str) -> tuple[int, ...]:
        """The checkpoint's ``(channels, length)`` (the configured one for checkpoints without it)."""
        saved = state.get("series")
        return (saved["channels"], saved["length"]) if saved else tuple(self.example_shape)

    def case_reader(
        self, state: dict[str, Any], label_column: str | None = None, id_column: str | None = None
    ) -> timeseries.SeriesCases:
        """Reads support and prediction files of series as the checkpoint's training read its series."""
        for option, value in (("--label_column", label_column), ("--id_column", id_column)):
            if value is not None:
                raise DataError(
                    f"{option} is for table models; {type(self).__name__} reads UCR-format files (the label "
                    "in the first column) or .npz files (x, y)"
                )
        saved = state.get("series") or {}
        channels, length = self.saved_input_shape(state, "the checkpoint")
        normalise = saved.get("z_normalise", self.z_normalise)
        if (channels, length, normalise) != (self.channels, self.length, self.z_normalise):
            log.warning(
                "the checkpoint was meta-trained on %d-channel series of %d values (z_normalise: %s); the "
                "config says %d, %d (%s): new series are read as the checkpoint was trained",
                channels, length, normalise, self.channels, self.length, self.z_normalise,
            )  # fmt: skip
        return timeseries.SeriesCases(channels, length, normalise)
