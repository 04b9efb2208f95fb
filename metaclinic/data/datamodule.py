"""Episodic DataModules: meta-train / meta-val / meta-test class pools turned into task loaders."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from metaclinic.data.episodes import EpisodeDataset, MetaBatchSampler, ResumableLoader
from metaclinic.data.pool import ClassPool
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.models.augmentation import ImageAugmentation

if TYPE_CHECKING:
    from metaclinic.data.cases import CaseReader

log = logging.getLogger(__name__)

SPLITS = ("meta_train", "meta_val", "meta_test")
DATA_DIR_ENV = "METACLINIC_DATA_DIR"


def default_data_root() -> Path:
    """Where data sources look for relative paths: ``$METACLINIC_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def check_disjoint(pools: dict[str, ClassPool]) -> None:
    """Meta-splits must not share a class: a shared class would leak test classes into training."""
    owner: dict[str, str] = {}
    for split, pool in pools.items():
        for info in pool.classes:
            if info.key in owner:
                raise DataError(
                    f"class {info.key} ({info.name}) is in both {owner[info.key]} and {split}; "
                    "meta-splits must be disjoint"
                )
            owner[info.key] = split


class EpisodicDataModule(LightningDataModule):
    """Serves N-way K-shot tasks from three disjoint class pools; subclasses only say how to build them.

    Training episodes form an endless seeded stream cut into epochs of ``meta_batches_per_epoch``
    meta-batches; validation and test use fixed episode sets drawn with ``eval_seed``, identical for every
    algorithm run on the same data configuration.

    Args:
        n_way: classes per episode.
        n_shot: labelled support examples per class.
        n_query: query examples per class, scored after adaptation.
        meta_batch_size: tasks per optimizer step (global, across all processes).
        meta_batches_per_epoch: training meta-batches between two validations.
        val_episodes: size of the fixed meta-validation episode set.
        test_episodes: size of the fixed meta-test episode set (the final report).
        eval_meta_batch_size: tasks per evaluation batch (memory only; results do not depend on it).
        num_workers: DataLoader worker processes building episodes.
        seed: seed of the training episode stream.
        eval_seed: seed of the validation and test episode sets.
        augmentation: random transforms of every meta-training image (support and query), seeded by the
            episode; validation and test images are never augmented. ``None``: no augmentation.
        unlabelled_batch_size: unlabelled images served with every training meta-batch
            (``batch.unlabelled_x``), drawn seeded by the meta-batch from the source's
            ``unlabelled_examples`` (e.g. MedMNIST's ``unlabelled`` selectors); 0: none.
    """

    def __init__(
        self,
        n_way: int = 5,
        n_shot: int = 1,
        n_query: int = 15,
        meta_batch_size: int = 4,
        meta_batches_per_epoch: int = 100,
        val_episodes: int = 100,
        test_episodes: int = 600,
        eval_meta_batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        eval_seed: int = 0,
        augmentation: ImageAugmentation | None = None,
        unlabelled_batch_size: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("n_way", n_way),
            ("n_shot", n_shot),
            ("n_query", n_query),
            ("meta_batch_size", meta_batch_size),
            ("meta_batches_per_epoch", meta_batches_per_epoch),
            ("val_episodes", val_episodes),
            ("test_episodes", test_episodes),
            ("eval_meta_batch_size", eval_meta_batch_size),
        ):
            if value < 1:
                raise DataError(f"data.{name} must be at least 1, got {value}")
        if n_way < 2:
            raise DataError(f"data.n_way must be at least 2, got {n_way}")
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.meta_batch_size, self.meta_batches_per_epoch = meta_batch_size, meta_batches_per_epoch
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.eval_meta_batch_size, self.num_workers = eval_meta_batch_size, num_workers
        self.seed, self.eval_seed = seed, eval_seed
        self.augmentation = augmentation
        self.unlabelled_batch_size = unlabelled_batch_size
        self.unlabelled: torch.Tensor | None = None
        self.pools: dict[str, ClassPool] | None = None
        self._train_sampler: MetaBatchSampler | None = None

    # -- what a source provides ------------------------------------------------------------------------------
    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one model input, known before any data is read (backbones are sized from it)."""
        raise NotImplementedError

    def build_pools(self) -> dict[str, ClassPool]:
        """Returns ``{"meta_train": ..., "meta_val": ..., "meta_test": ...}``."""
        raise NotImplementedError

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Turns stored examples into model inputs on the device (e.g. uint8 images to floats)."""
        return x

    def domain_names(self, split: str) -> list[str] | None:
        """The domains (hospitals, data sets) of ``split``, indexed by its episodes' ``domain`` codes."""
        return None if self.pools is None else list(self.pools[split].domains())

    def saved_input_shape(self, state: dict[str, Any], source: str) -> tuple[int, ...]:
        """The trained model's input shape, from this data's checkpoint state (``state_dict``, read from
        ``source``): adapting a model to a clinic's cases reads no training data. Default: ``example_shape``.
        """
        return tuple(self.example_shape)

    def case_reader(
        self, state: dict[str, Any], label_column: str | None = None, id_column: str | None = None
    ) -> CaseReader:
        """Reads a clinic's labelled and new cases as the model was trained on them (``metaclinic.adapt``).

        The default reads images (a folder of class folders, and images to predict) for models of
        ``(channels, size, size)`` inputs; a data kind of other inputs overrides it.
        """
        from metaclinic.data.cases import ImageCases  # reads with image_folder, which builds on this module

        for option, value in (("--label_column", label_column), ("--id_column", id_column)):
            if value is not None:
                raise DataError(f"{option} is for table models; {type(self).__name__} reads images")
        shape = tuple(self.example_shape)
        if len(shape) == 3 and shape[0] in (1, 3) and shape[1] == shape[2]:
            return ImageCases(shape[0], shape[1], self.prepare_inputs)
        raise DataError(f"{type(self).__name__}: no reader of new cases for inputs of shape {shape}")

    def unlabelled_examples(self) -> torch.Tensor | None:
        """Stored examples without labels for training (e.g. unlabelled images of the target domain)."""
        return None

    def names_unlabelled_examples(self) -> bool:
        """Whether the configuration asks for unlabelled examples (checked before any are loaded)."""
        return False

    def supervised_data(self, split: str = "meta_train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Every example of ``split`` with a class target, for supervised baselines.

        Returns model inputs, targets and their names: targets index the sorted distinct
        :attr:`ClassInfo.target` of the split, so the same diagnosis in several hospitals is one target.
        """
        assert self.pools is not None, "call setup() first"
        pool = self.pools[split]
        names = sorted({c.target for c in pool.classes})
        index = torch.cat(pool.class_indices)
        targets = torch.cat(
            [
                torch.full((len(rows),), names.index(c.target), dtype=torch.long)
                for c, rows in zip(pool.classes, pool.class_indices, strict=True)
            ]
        )
        return self.prepare_inputs(pool.examples[index]), targets, names

    # -- Lightning hooks -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.pools is not None:
            return
        if self.augmentation is not None and len(self.example_shape) != 3:
            raise DataError(
                f"data.augmentation transforms images (channels, height, width), but these examples have "
                f"shape {tuple(self.example_shape)}; remove data.augmentation"
            )
        pools = self.build_pools()
        check_disjoint(pools)
        if self.unlabelled_batch_size == 0 and self.names_unlabelled_examples():
            raise DataError(
                "data.unlabelled names unlabelled examples but data.unlabelled_batch_size is 0, so none "
                "would be served; set unlabelled_batch_size (e.g. 64) or remove data.unlabelled"
            )
        self.unlabelled = self.unlabelled_examples() if self.unlabelled_batch_size > 0 else None
        if self.unlabelled_batch_size > 0 and (self.unlabelled is None or len(self.unlabelled) == 0):
            raise DataError(
                f"data.unlabelled_batch_size={self.unlabelled_batch_size} but this data has no unlabelled "
                "examples; name them (MedMNIST: data.unlabelled) or set unlabelled_batch_size: 0"
            )
        self.pools = pools
        try:
            for split, pool in pools.items():
                self._check_pool(split, pool)
        except DataError:
            self.pools = None
            raise

    def _check_pool(self, split: str, pool: ClassPool) -> None:
        """Raises unless ``split`` can make episodes; meta-val may be empty (no validation then)."""
        if split == "meta_val" and pool.num_classes == 0:
            log.info("meta_val: no classes, so training runs without validation")
            return
        needed, what = self.n_shot + self.n_query, f"n_shot + n_query = {self.n_shot} + {self.n_query}"
        if pool.same_domain_episodes and split == "meta_train":
            short = pool.short_classes(needed)
            if short:  # e.g. a hospital with too few patients of one diagnosis for this many shots
                log.warning(
                    "meta_train: classes with fewer than %d %s (%s) are left out of meta-training episodes; "
                    "they still shape preprocessing and supervised baselines: %s",
                    needed,
                    pool.unit_name,
                    what,
                    ", ".join(short),
                )
        else:
            if pool.num_classes < self.n_way:
                raise DataError(
                    f"{split} has {pool.num_classes} classes, fewer than n_way={self.n_way}: "
                    f"{[c.key for c in pool.classes]}"
                )
            pool.check_enough_examples(needed, split, what)
        self._episodes(split, self.seed)  # raises if no episode can be drawn (e.g. no domain fills one)
        log.info("%s: %d classes, %d examples", split, pool.num_classes, sum(pool.class_sizes()))

    @property
    def split_fingerprint(self) -> str:
        """Identifies the class split (keys and sizes of every class in every meta-split)."""
        assert self.pools is not None, "call setup() first"
        text = "|".join(f"{s}:{self.pools[s].fingerprint()}" for s in SPLITS)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _episodes(self, split: str, seed: int, num_episodes: int | None = None) -> EpisodeDataset:
        assert self.pools is not None, "call setup() first"
        return EpisodeDataset(
            self.pools[split], self.n_way, self.n_shot, self.n_query, seed, SPLITS.index(split), num_episodes
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        if self._train_sampler is None:
            self._train_sampler = MetaBatchSampler(
                self.meta_batch_size, self.meta_batches_per_epoch, rank, world, self.split_fingerprint
            )
        return ResumableLoader(
            self._episodes("meta_train", self.seed),
            batch_sampler=self._train_sampler,
            collate_fn=functools.partial(TaskBatch.collate, meta_batch_size=self.meta_batch_size),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str, num_episodes: int) -> DataLoader:
        """The fixed episodes of ``split``; with several processes each takes every world_size-th one.

        No episode is padded or repeated (as DistributedSampler would do), so the gathered per-episode
        metrics are exactly those of a single process.
        """
        rank, world = self._rank_and_world()
        return DataLoader(
            self._episodes(split, self.eval_seed, num_episodes),
            sampler=range(rank, num_episodes, world),
            batch_size=self.eval_meta_batch_size,
            collate_fn=TaskBatch.collate,
            num_workers=self.num_workers,
        )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def val_dataloader(self) -> DataLoader | list:
        assert self.pools is not None, "call setup() first"
        if self.pools["meta_val"].num_classes == 0:
            return []  # Lightning skips validation
        return self._eval_loader("meta_val", self.val_episodes)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("meta_test", self.test_episodes)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, TaskBatch):
            return batch
        training = self.trainer is not None and self.trainer.training
        if training and self._train_sampler is not None:
            self._train_sampler.mark_consumed(batch.meta_batch_index)
        batch.support_x = self.prepare_inputs(batch.support_x)
        batch.query_x = self.prepare_inputs(batch.query_x)
        if training and self.unlabelled_batch_size > 0 and self.unlabelled is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch.meta_batch_index)
            rows = torch.randint(len(self.unlabelled), (self.unlabelled_batch_size,), generator=generator)
            batch.unlabelled_x = self.prepare_inputs(self.unlabelled[rows].to(batch.support_x.device))
        if training and self.augmentation is not None:
            n_support = batch.support_x.shape[1]
            images = self.augmentation(
                torch.cat([batch.support_x, batch.query_x], 1), self.seed, batch.episode_index
            )
            batch.support_x, batch.query_x = images[:, :n_support], images[:, n_support:]
        return batch
