"""MedMNIST images as episodic tasks: classes of several datasets assigned to meta-splits by the config."""

from __future__ import annotations

from pathlib import Path

import torch

from metaclinic.data import medmnist
from metaclinic.data.datamodule import SPLITS, EpisodicDataModule, default_data_root
from metaclinic.data.image_folder import images_to_unit_range
from metaclinic.data.pool import ClassPool
from metaclinic.errors import DataError

DEFAULT_IMAGE_SPLITS = {"meta_train": ["train"], "meta_val": ["val"], "meta_test": ["test"]}


def parse_selector(selector: str, split: str) -> tuple[str, list[int]]:
    """``"bloodmnist"`` (every class), ``"bloodmnist:3"`` or ``"bloodmnist:0-4"`` -> (dataset, labels)."""
    name, _, labels = selector.partition(":")
    num_labels = len(medmnist.dataset_info(name).labels)
    if not labels:
        return name, list(range(num_labels))
    try:
        first, _, last = labels.partition("-")
        chosen = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise DataError(
            f"data.{split}: cannot read {selector!r}; write 'dataset', 'dataset:3' or 'dataset:0-4'"
        ) from None
    if not chosen or chosen[0] < 0 or chosen[-1] >= num_labels:
        raise DataError(f"data.{split}: {selector!r} names labels outside 0..{num_labels - 1} of {name}")
    return name, chosen


class MedMNISTEpisodes(EpisodicDataModule):
    """N-way K-shot tasks over MedMNIST v2 (28x28) classes; every (dataset, label) pair is one class.

    Each meta-split is a list of class selectors: a dataset name takes all its classes (``"organamnist"``),
    ``"bloodmnist:3"`` one class and ``"bloodmnist:0-4"`` a range. Splitting by whole datasets gives a
    cross-domain benchmark, splitting by classes a within-domain one. ``image_splits`` says which official
    image splits each meta-split draws from; by default meta-train uses the official ``train`` images,
    meta-val ``val`` and meta-test ``test``. Grayscale datasets are repeated to three channels when they are
    mixed with RGB ones.

    Args:
        meta_train: class selectors of the meta-training classes.
        meta_val: class selectors of the meta-validation classes.
        meta_test: class selectors of the meta-test classes.
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
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        medmnist.file_name("", size)  # raises for a size MedMNIST does not have
        self.size = size
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        self.classes = {
            split: [parse_selector(s, split) for s in sel] for split, sel in self.selectors.items()
        }
        self.unlabelled_classes = [parse_selector(s, "unlabelled") for s in unlabelled or []]
        self.unlabelled_image_splits = list(unlabelled_image_splits or ["train"])
        unknown = set(image_splits or {}) - set(SPLITS)
        if unknown:
            raise DataError(f"data.image_splits: unknown key(s) {sorted(unknown)}; expected {list(SPLITS)}")
        self.image_splits = {**DEFAULT_IMAGE_SPLITS, **(image_splits or {})}
        self.root = Path(root) if root else default_data_root() / "medmnist"
        self.download = download
        self.check_unlabelled_images()
        named = [*(c for chosen in self.classes.values() for c in chosen), *self.unlabelled_classes]
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
        for split, chosen in self.classes.items():
            labels_of: dict[str, list[int]] = {}
            for name, labels in chosen:
                labels_of.setdefault(name, []).extend(labels)
            pools[split] = ClassPool.concat(
                [
                    medmnist.load_pool(
                        paths[name], name, labels, self.image_splits[split], self.channels, self.size
                    )
                    for name, labels in labels_of.items()
                ]
            )
        return pools

    def check_unlabelled_images(self) -> None:
        """Unlabelled images must be other images than those any meta-split draws of the same class."""
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
