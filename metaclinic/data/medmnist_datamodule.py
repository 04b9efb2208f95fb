"""MedMNIST images as episodic tasks: classes of several datasets, or findings of a multi-label one, assigned
to meta-splits by the config."""

from __future__ import annotations

from pathlib import Path

import torch

from metaclinic.data import medmnist
from metaclinic.data.datamodule import SPLITS, EpisodicDataModule, default_data_root
from metaclinic.data.image_folder import images_to_unit_range
from metaclinic.data.pool import ClassPool
from metaclinic.errors import DataError

DEFAULT_IMAGE_SPLITS = {"meta_train": ["train"], "meta_val": ["val"], "meta_test": ["test"]}
FINDING = "finding="  # "chestmnist:finding=3": one finding of a multi-label dataset as a binary task family


def _label_range(text: str, selector: str, split: str, usage: str, count: int, what: str) -> list[int]:
    """``"3"`` or ``"0-4"`` -> the labels it names, each checked to be in ``0..count - 1``."""
    try:
        first, _, last = text.partition("-")
        chosen = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise DataError(f"data.{split}: cannot read {selector!r}; write {usage}") from None
    if not chosen or chosen[0] < 0 or chosen[-1] >= count:
        raise DataError(f"data.{split}: {selector!r} names {what} outside 0..{count - 1}")
    return chosen


def parse_selector(selector: str, split: str) -> tuple[str, list[int]]:
    """``"bloodmnist"`` (every class), ``"bloodmnist:3"`` or ``"bloodmnist:0-4"`` -> (dataset, labels)."""
    name, _, labels = selector.partition(":")
    num_labels = len(medmnist.dataset_info(name).labels)
    if not labels:
        return name, list(range(num_labels))
    if labels.startswith(FINDING):
        raise DataError(
            f"data.{split}: {selector!r} selects a finding, which only meta_train, meta_val and meta_test "
            f"take; write {name!r} or '{name}:3'"
        )
    usage = "'dataset', 'dataset:3' or 'dataset:0-4' (or 'chestmnist:finding=3' for one finding)"
    return name, _label_range(labels, selector, split, usage, num_labels, f"labels of {name}")


def parse_finding_selector(selector: str, split: str) -> tuple[str, list[int]] | None:
    """``"chestmnist:finding=3"`` or ``"chestmnist:finding=0-9"`` -> (dataset, findings); ``None`` for a
    selector of classes."""
    name, _, rest = selector.partition(":")
    if not rest.startswith(FINDING):
        return None
    info = medmnist.dataset_info(name)
    if not info.multi_label:
        multi = sorted(n for n, i in medmnist.MEDMNIST_2D.items() if i.multi_label)
        raise DataError(
            f"data.{split}: {selector!r}: {name} has one label per image; 'finding=' selects a finding of a "
            f"multi-label dataset ({', '.join(multi)}); write '{name}:3' for a class"
        )
    usage = "'chestmnist:finding=3' or 'chestmnist:finding=0-9'"
    count = len(info.labels)
    return name, _label_range(rest[len(FINDING) :], selector, split, usage, count, f"findings of {name}")


class MedMNISTEpisodes(EpisodicDataModule):
    """N-way K-shot tasks over MedMNIST v2 (28x28) classes; every (dataset, label) pair is one class.

    Each meta-split is a list of class selectors: a dataset name takes all its classes (``"organamnist"``),
    ``"bloodmnist:3"`` one class and ``"bloodmnist:0-4"`` a range. Splitting by whole datasets gives a
    cross-domain benchmark, splitting by classes a within-domain one. ``image_splits`` says which official
    image splits each meta-split draws from; by default meta-train uses the official ``train`` images,
    meta-val ``val`` and meta-test ``test``. Grayscale datasets are repeated to three channels when they are
    mixed with RGB ones.

    **Findings of a multi-label dataset** (ChestMNIST's 14) are task families: ``"chestmnist:finding=3"``
    (or ``"chestmnist:finding=0-9"``, one family per finding) gives two classes per finding, every image
    without it (negative: label 0 for that finding, whatever the others) and every image with it (positive,
    the positive class of the episode's sensitivity and specificity). Episodes are then 2-way and draw both
    classes from one finding ("finding 3 or not"), and the report breaks meta-test down by finding. Since an
    image carries all findings, meta-splits must differ in findings *and* images: a finding may be in one
    meta-split only (in either form, ``chestmnist:3`` included), and meta-splits using one multi-label file
    must draw from different official image splits (the default ones do), else set-up stops.

    Args:
        meta_train: class (or finding) selectors of the meta-training classes.
        meta_val: class (or finding) selectors of the meta-validation classes.
        meta_test: class (or finding) selectors of the meta-test classes.
        root: folder with the official ``<name>.npz`` files; defaults to ``$METACLINIC_DATA_DIR/medmnist``
            (``./data/medmnist`` when that variable is unset).
        image_splits: official image splits per meta-split, e.g. ``{"meta_test": ["val", "test"]}``.
        download: fetch missing official files (needs a connection to zenodo.org).
        unlabelled: class selectors whose images are served without labels during training
            (``data.unlabelled_batch_size`` per meta-batch), e.g. the meta-test classes' ``train`` images: the
            unlabelled cases a hospital has of its new task. Never the meta-test episodes' own images: an
            image split that a meta-split of the same class draws from is refused.
        unlabelled_image_splits: official image splits the unlabelled images come from.
        size: image size in pixels: 28 (MedMNIST v2, ``<name>.npz``) or 64, 128, 224 (MedMNIST+,
            ``<name>_<size>.npz``).
        ordinal: the meta-test classes are grades of one scale (RetinaMNIST's 0-4, the only ordinal dataset
            of MedMNIST): the report adds, per episode, the quadratic-weighted kappa and the mean absolute
            grade error of the predictions mapped back to grades. Every meta-test class must come from one
            ordinal dataset.
        **kwargs: episode settings of :class:`EpisodicDataModule` (n_way, n_shot, n_query, ...).
    """

    def __init__(
        self,
        meta_train: list[str],
        meta_val: list[str],
        meta_test: list[str],
        root: str | None = None,
        image_splits: dict[str, list[str]] | None = None,
        download: bool = False,
        size: int = 28,
        unlabelled: list[str] | None = None,
        unlabelled_image_splits: list[str] | None = None,
        ordinal: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        medmnist.file_name("", size)  # raises for a size MedMNIST does not have
        self.size = size
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        self.findings = {
            split: [f for f in (parse_finding_selector(s, split) for s in sel) if f is not None]
            for split, sel in self.selectors.items()
        }
        self.classes = {
            split: [parse_selector(s, split) for s in sel if parse_finding_selector(s, split) is None]
            for split, sel in self.selectors.items()
        }
        self.unlabelled_classes = [parse_selector(s, "unlabelled") for s in unlabelled or []]
        self.unlabelled_image_splits = list(unlabelled_image_splits or ["train"])
        unknown = set(image_splits or {}) - set(SPLITS)
        if unknown:
            raise DataError(f"data.image_splits: unknown key(s) {sorted(unknown)}; expected {list(SPLITS)}")
        self.image_splits = {**DEFAULT_IMAGE_SPLITS, **(image_splits or {})}
        self.root = Path(root) if root else default_data_root() / "medmnist"
        self.download = download
        self.ordinal = ordinal
        self.check_findings()
        self.check_ordinal()
        self.check_unlabelled_images()
        named = [
            *(c for chosen in [*self.classes.values(), *self.findings.values()] for c in chosen),
            *self.unlabelled_classes,
        ]
        self.datasets = sorted({name for name, _ in named})
        self.channels = max(medmnist.dataset_info(name).channels for name in self.datasets)

    @property
    def example_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def prepare_data(self) -> None:
        medmnist.locate(self.datasets, self.root, self.download, self.size)

    def build_pools(self) -> dict[str, ClassPool]:
        paths = medmnist.locate(self.datasets, self.root, allow_download=False, size=self.size)
        pools = {}
        for split in SPLITS:
            args = (self.image_splits[split], self.channels, self.size)
            parts = [
                medmnist.load_pool(paths[name], name, labels, *args, graded=self._graded(name))
                for name, labels in _by_dataset(self.classes[split]).items()
            ]
            parts += [
                medmnist.load_finding_pool(paths[name], name, findings, *args)
                for name, findings in _by_dataset(self.findings[split]).items()
            ]
            pool = ClassPool.concat(parts)
            if self.findings[split]:  # an episode is one finding (a domain), positive against negative
                pool = ClassPool(pool.examples, pool.class_indices, pool.classes, same_domain_episodes=True)
            pools[split] = pool
        return pools

    def _graded(self, name: str) -> bool:
        return self.ordinal and medmnist.dataset_info(name).ordinal

    def check_findings(self) -> None:
        """Finding tasks are 2-way, and a finding and its images belong to one meta-split only."""
        if not any(self.findings.values()):
            return
        if self.n_way != 2:
            raise DataError(
                f"data.n_way must be 2 with finding selectors (a finding's positive and negative images), "
                f"got {self.n_way}"
            )
        owner: dict[tuple[str, int], tuple[str, str]] = {}  # (dataset, finding) -> (split, as selected)
        for split in SPLITS:
            forms = []  # (dataset, finding, the selector that names it) of every multi-label selection
            for selector in self.selectors[split]:
                name, findings = parse_finding_selector(selector, split) or parse_selector(selector, split)
                if medmnist.dataset_info(name).multi_label:
                    forms += [(name, finding, selector) for finding in findings]
            for name, finding, form in forms:
                what = f"{name} finding {finding} ({medmnist.dataset_info(name).labels[finding]})"
                if (name, finding) in owner and owner[name, finding][0] == split:
                    raise DataError(
                        f"data.{split} selects {what} twice ({owner[name, finding][1]!r}, {form!r})"
                    )
                if (name, finding) in owner:
                    first, as_first = owner[name, finding]
                    raise DataError(
                        f"{what} is in both data.{first} (as {as_first!r}) and data.{split} (as {form!r}); "
                        "a finding must be in one meta-split only (a meta-test finding seen in training is "
                        "no few-shot task)"
                    )
                owner[name, finding] = (split, form)
        for name in sorted({name for chosen in self.findings.values() for name, _ in chosen}):
            using = [s for s in SPLITS if any(n == name for n, _ in [*self.classes[s], *self.findings[s]])]
            for i, first in enumerate(using):
                for second in using[i + 1 :]:
                    shared = sorted(set(self.image_splits[first]) & set(self.image_splits[second]))
                    if shared:
                        raise DataError(
                            f"data.image_splits: {first} and {second} both draw {name} images from the "
                            f"official {shared[0]!r} split; an image of a multi-label dataset carries every "
                            "finding, so it would be in both meta-splits (under another finding). Give them "
                            "different image splits (the default: meta_train train, meta_val val, meta_test "
                            "test)"
                        )

    def check_ordinal(self) -> None:
        """``ordinal`` needs meta-test classes that are grades of one ordinal dataset."""
        if not self.ordinal:
            return
        test = sorted({name for name, _ in [*self.classes["meta_test"], *self.findings["meta_test"]]})
        ordinal = sorted(name for name, info in medmnist.MEDMNIST_2D.items() if info.ordinal)
        if len(test) != 1 or self.findings["meta_test"] or not medmnist.dataset_info(test[0]).ordinal:
            raise DataError(
                "data.ordinal: the meta-test classes must be grades of one ordinal dataset "
                f"({', '.join(ordinal)}), e.g. meta_test: [retinamnist]; they come from {test or 'none'}"
            )

    def check_unlabelled_images(self) -> None:
        """Unlabelled images must be other images than those any meta-split draws of the same class (of the
        same file, for a multi-label file used as findings: its images belong to every finding)."""
        for name, labels in self.unlabelled_classes:
            for split, chosen in self.classes.items():
                shared = sorted(set(self.unlabelled_image_splits) & set(self.image_splits[split]))
                for other, other_labels in chosen:
                    both = sorted(set(labels) & set(other_labels)) if other == name else []
                    if both and shared:
                        raise DataError(
                            f"data.unlabelled: {name}:{both[0]} images of the {shared[0]!r} split are also "
                            f"{split} images; take the unlabelled images from another split "
                            "(data.unlabelled_image_splits)"
                        )
                if shared and any(other == name for other, _ in self.findings[split]):
                    raise DataError(
                        f"data.unlabelled: {name} images of the {shared[0]!r} split are also {split} images "
                        f"(of its findings); take the unlabelled images from another split "
                        "(data.unlabelled_image_splits)"
                    )

    def names_unlabelled_examples(self) -> bool:
        return bool(self.unlabelled_classes)

    def unlabelled_examples(self) -> torch.Tensor | None:
        if not self.unlabelled_classes:
            return None
        paths = medmnist.locate(self.datasets, self.root, allow_download=False, size=self.size)
        pools = [
            medmnist.load_pool(
                paths[name], name, labels, self.unlabelled_image_splits, self.channels, self.size
            )
            for name, labels in self.unlabelled_classes
        ]
        return torch.cat([pool.examples for pool in pools])

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return images_to_unit_range(x)


def _by_dataset(chosen: list[tuple[str, list[int]]]) -> dict[str, list[int]]:
    """Selections of one meta-split grouped by dataset (each file is read once per meta-split)."""
    grouped: dict[str, list[int]] = {}
    for name, labels in chosen:
        grouped.setdefault(name, []).extend(labels)
    return grouped
