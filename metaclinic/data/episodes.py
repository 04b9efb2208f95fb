"""Seeded episode sampling over a :class:`ClassPool`.

Episode ``i`` of a stream is a pure function of ``(seed, stream, i)``. That one property gives fixed
evaluation sets (the same episodes for every algorithm), exact resumption (a checkpoint only needs the
index of the next meta-batch) and rank-aware sampling (each rank computes its share of the indices).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from metaclinic.data.pool import ClassPool
from metaclinic.data.task import Task
from metaclinic.errors import DataError


class EpisodeDataset(Dataset):
    """Maps an episode index to an N-way K-shot task drawn from ``pool``.

    Classes are drawn without replacement and given local labels in the order drawn, so label ids carry
    no information across episodes. Support and query examples of a class never overlap.
    """

    def __init__(
        self,
        pool: ClassPool,
        n_way: int,
        n_shot: int,
        n_query: int,
        seed: int,
        stream: int,
        num_episodes: int | None = None,
    ) -> None:
        if pool.num_classes < n_way:
            raise DataError(
                f"{n_way}-way episodes need at least {n_way} classes; the pool has {pool.num_classes}"
            )
        pool.check_enough_examples(n_shot + n_query, split=f"stream {stream}", what=f"{n_shot}+{n_query}")
        self.pool, self.n_way, self.n_shot, self.n_query = pool, n_way, n_shot, n_query
        self.seed, self.stream, self.num_episodes = seed, stream, num_episodes
        self._sizes = np.array(pool.class_sizes())

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("an unbounded episode stream has no length; index it with a sampler")
        return self.num_episodes

    def __getitem__(self, episode: int) -> tuple[Task, int]:
        rng = np.random.default_rng([self.seed, self.stream, episode])
        classes = rng.choice(self.pool.num_classes, size=self.n_way, replace=False)
        per_class = self.n_shot + self.n_query
        picks = np.stack([rng.choice(self._sizes[c], size=per_class, replace=False) for c in classes])
        rows = torch.stack(
            [self.pool.class_indices[c][torch.from_numpy(p)] for c, p in zip(classes, picks, strict=True)]
        )
        support, query = rows[:, : self.n_shot].reshape(-1), rows[:, self.n_shot :].reshape(-1)
        labels = torch.arange(self.n_way)
        task = Task(
            support_x=self.pool.examples[support],
            support_y=labels.repeat_interleave(self.n_shot),
            query_x=self.pool.examples[query],
            query_y=labels.repeat_interleave(self.n_query),
            classes=torch.from_numpy(classes).long(),
        )
        return task, episode


class MetaBatchSampler(Sampler[list[int]]):
    """Yields the episode indices of one meta-batch at a time, and can resume where training stopped.

    Global meta-batch ``g`` holds episodes ``g*B .. g*B+B-1`` (``B = meta_batch_size``); rank ``r`` of
    ``world_size`` takes its contiguous share, so all ranks together draw exactly the episodes one
    process would. An epoch is ``meta_batches_per_epoch`` consecutive meta-batches.

    The position saved in checkpoints is what the model has *consumed* (``mark_consumed``), not what the
    loader has prefetched; restoring it continues with the next unseen meta-batch.
    """

    def __init__(
        self,
        meta_batch_size: int,
        meta_batches_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        fingerprint: str = "",
    ) -> None:
        if meta_batch_size % world_size:
            raise DataError(
                f"meta_batch_size={meta_batch_size} must be divisible by the {world_size} processes"
            )
        self.meta_batch_size, self.meta_batches_per_epoch = meta_batch_size, meta_batches_per_epoch
        self.rank, self.world_size, self.fingerprint = rank, world_size, fingerprint
        self._next = 0
        self._consumed = 0

    def __len__(self) -> int:
        return self.meta_batches_per_epoch

    def episodes(self, meta_batch: int) -> list[int]:
        local = self.meta_batch_size // self.world_size
        start = meta_batch * self.meta_batch_size + self.rank * local
        return list(range(start, start + local))

    def __iter__(self) -> Iterator[list[int]]:
        start = self._next
        stop = (start // self.meta_batches_per_epoch + 1) * self.meta_batches_per_epoch
        for meta_batch in range(start, stop):
            self._next = meta_batch + 1
            yield self.episodes(meta_batch)

    def mark_consumed(self, meta_batch: int) -> None:
        self._consumed = meta_batch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"next_meta_batch": self._consumed, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise RuntimeError(
                "The checkpoint was trained on a different data split (split fingerprint "
                f"{state.get('fingerprint')!r}, this configuration gives {self.fingerprint!r}). "
                "Resume with the data configuration the run was started with, or start a new run."
            )
        self._next = self._consumed = int(state["next_meta_batch"])


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader whose position Lightning stores in checkpoints (it implements ``state_dict``)."""

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)
