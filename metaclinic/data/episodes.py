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
    no information across episodes. Support and query examples of a class never overlap. When the pool
    groups examples by patient, an episode draws distinct patients (one example each) and no patient
    appears twice in it; when the pool asks for same-domain episodes, all classes of an episode come from
    one domain, drawn uniformly among the domains that can fill an episode.
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
        needed = n_shot + n_query
        if pool.same_domain_episodes:
            eligible = set(pool.eligible_classes(needed))
            candidates = [[c for c in ids if c in eligible] for ids in pool.domains().values()]
            self._domains = [np.array(ids) for ids in candidates if len(ids) >= n_way]
            if not self._domains:
                raise DataError(
                    f"stream {stream}: no domain has {n_way} classes with {needed} {pool.unit_name} each "
                    f"(n_shot + n_query); too small: {', '.join(pool.short_classes(needed))}"
                )
        else:
            if pool.num_classes < n_way:
                raise DataError(
                    f"{n_way}-way episodes need at least {n_way} classes; the pool has {pool.num_classes}"
                )
            pool.check_enough_examples(needed, split=f"stream {stream}", what=f"{n_shot}+{n_query}")
            self._domains = [np.arange(pool.num_classes)]
        self.pool, self.n_way, self.n_shot, self.n_query = pool, n_way, n_shot, n_query
        self.seed, self.stream, self.num_episodes = seed, stream, num_episodes
        self._sizes = np.array(pool.class_sizes())
        self._domain_position = {domain: i for i, domain in enumerate(pool.domains())}
        grouped = pool.groups is not None
        self._patients = [_patients_of(pool, c) for c in range(pool.num_classes)] if grouped else None

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("an unbounded episode stream has no length; index it with a sampler")
        return self.num_episodes

    def __getitem__(self, episode: int) -> tuple[Task, int]:
        rng = np.random.default_rng([self.seed, self.stream, episode])
        # Only same-domain pools draw a domain, so other pools keep the episodes of earlier versions.
        domain = self._domains[rng.integers(len(self._domains))] if self.pool.same_domain_episodes else None
        domain = self._domains[0] if domain is None else domain
        classes = domain[rng.choice(len(domain), size=self.n_way, replace=False)]
        rows = self._draw_examples(rng, classes, episode)
        return self.episode_task(
            classes, rows, self._positive_class(classes), self._domain_code(classes)
        ), episode

    def episode_task(self, classes: np.ndarray, rows: np.ndarray, positive_class: int, domain: int) -> Task:
        """The task of ``classes`` whose examples are ``rows (n_way, n_shot + n_query)``: support first."""
        support, query = rows[:, : self.n_shot].reshape(-1), rows[:, self.n_shot :].reshape(-1)
        labels = torch.arange(len(classes))
        return Task(
            support_x=self.pool.examples[support],
            support_y=labels.repeat_interleave(self.n_shot),
            query_x=self.pool.examples[query],
            query_y=labels.repeat_interleave(self.n_query),
            classes=torch.from_numpy(classes).long(),
            positive_class=torch.tensor(positive_class),
            domain=torch.tensor(domain),
            grades=self._grades(classes),
        )

    def _grades(self, classes: np.ndarray) -> torch.Tensor | None:
        """The grade of each class when all are grades of one scale (one domain, every class graded)."""
        infos = [self.pool.classes[c] for c in classes]
        if any(info.grade is None for info in infos) or len({info.domain for info in infos}) != 1:
            return None
        return torch.tensor([info.grade for info in infos])

    def _positive_class(self, classes: np.ndarray) -> int:
        """A binary episode's positive class: the one marked :attr:`ClassInfo.positive` (a data set's
        clinically positive label, e.g. ECG200's infarctions), else the one whose :attr:`ClassInfo.target`
        sorts last (``"1"`` of a ``"0"``/``"1"`` diagnosis, tables with ``positive_above``; the larger key
        otherwise), local class 1 when the targets are equal. Local ids are arbitrary, so this is what says
        which class is positive. -1 for episodes of more than two classes."""
        if len(classes) != 2:
            return -1
        infos = [self.pool.classes[c] for c in classes]
        marked = [info.positive for info in infos]
        if marked.count(True) == 1:
            return marked.index(True)
        first, second = (info.target for info in infos)
        return int(second >= first)

    def _domain_code(self, classes: np.ndarray) -> int:
        domains = {self.pool.classes[c].domain for c in classes}
        return self._domain_position[domains.pop()] if len(domains) == 1 else -1

    def _draw_examples(self, rng: np.random.Generator, classes: np.ndarray, episode: int) -> torch.Tensor:
        """Example indices ``(n_way, n_shot + n_query)``: support first, then query, per class."""
        per_class = self.n_shot + self.n_query
        if self._patients is None:
            picks = np.stack([rng.choice(self._sizes[c], size=per_class, replace=False) for c in classes])
            return torch.stack(
                [self.pool.class_indices[c][torch.from_numpy(p)] for c, p in zip(classes, picks, strict=True)]
            )
        used: set[int] = set()
        rows = []
        for c in classes:
            patients = [p for p in self._patients[c] if p[0] not in used]
            if len(patients) < per_class:
                info = self.pool.classes[c]
                raise DataError(
                    f"episode {episode} of stream {self.stream}: class {info.key} has {len(patients)} "
                    f"patients not already drawn for another class of this episode; {per_class} are needed"
                )
            chosen = [patients[i] for i in rng.choice(len(patients), size=per_class, replace=False)]
            used.update(patient for patient, _ in chosen)
            rows.append([examples[rng.integers(len(examples))] for _, examples in chosen])
        return torch.tensor(rows, dtype=torch.long)


def _patients_of(pool: ClassPool, c: int) -> list[tuple[int, np.ndarray]]:
    """``(patient id, example indices)`` of every patient with examples in class ``c``, by patient id."""
    assert pool.groups is not None
    examples = pool.class_indices[c].numpy()
    groups = pool.groups[pool.class_indices[c]].numpy()
    order = np.argsort(groups, kind="stable")
    patients, starts = np.unique(groups[order], return_index=True)
    return [(int(p), examples[chunk]) for p, chunk in zip(patients, np.split(order, starts[1:]), strict=True)]


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
            raise DataError(
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
