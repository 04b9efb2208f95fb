"""The episode types every data source produces and every algorithm consumes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# What the data layer tells the report about each episode.
EPISODE_FACTS = ("positive_class", "domain", "grades")


@dataclass
class Task:
    """One N-way K-shot episode, split into support and query once, by the data layer.

    Labels are episode-local (``0 .. n_way-1``); ``classes[j]`` is the pool-wide id of local class ``j``.

    Shapes: ``support_x (n_way * n_shot, *example)``, ``support_y (n_way * n_shot,)``,
    ``query_x (n_way * n_query, *example)``, ``query_y (n_way * n_query,)``, ``classes (n_way,)``.

    What the report needs to know of the episode, set by the data layer (``None`` in episodes built by
    hand): ``positive_class``, the local id of a binary episode's positive class (-1 otherwise), and
    ``domain``, the position of the episode's domain (hospital, data set) among its split's domains (-1 when
    its classes come from several); both scalars, ``(tasks,)`` in a :class:`TaskBatch`. ``grades (n_way,)``
    (``(tasks, n_way)`` in a batch): the grade of each local class when the episode's classes are grades of
    one ordinal scale, else ``None``; the report maps predictions to grades with it. ``episode_index``
    identifies the episode in its seeded stream (algorithms that draw random numbers per episode seed them
    with it, so a score does not depend on evaluation order).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor
    positive_class: Tensor | None = field(default=None, kw_only=True)
    domain: Tensor | None = field(default=None, kw_only=True)
    grades: Tensor | None = field(default=None, kw_only=True)
    episode_index: Tensor | None = field(default=None, kw_only=True)

    @property
    def n_way(self) -> int:
        return self.classes.shape[-1]


@dataclass
class TaskBatch(Task):
    """A meta-batch: the fields of :class:`Task` stacked along a leading task dimension.

    ``episode_index`` identifies each episode in its (seeded) stream, ``meta_batch_index`` the position of
    this meta-batch in the training stream; the sampler uses it to resume exactly.
    """

    episode_index: Tensor  # required here, in the position after ``classes``
    meta_batch_index: int = -1
    # Unlabelled images of the target domain served with a training meta-batch (data.unlabelled), or None.
    unlabelled_x: Tensor | None = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, tasks: slice) -> TaskBatch:
        """The meta-batch of the tasks in the slice ``tasks``: ``batch[i : i + 1]`` holds task ``i`` alone."""
        if not isinstance(tasks, slice):
            raise TypeError(f"a TaskBatch is indexed with a slice (batch[i : i + 1]), not {tasks!r}")
        fields = ("support_x", "support_y", "query_x", "query_y", "classes", "episode_index")
        sliced = {f: getattr(self, f)[tasks] for f in fields}
        about = {f: None if getattr(self, f) is None else getattr(self, f)[tasks] for f in EPISODE_FACTS}
        return TaskBatch(**sliced, **about, meta_batch_index=self.meta_batch_index)

    def __iter__(self) -> Iterator[Task]:
        for i in range(len(self)):
            about = {f: None if getattr(self, f) is None else getattr(self, f)[i] for f in EPISODE_FACTS}
            pairs = (self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i])
            yield Task(*pairs, self.classes[i], **about, episode_index=self.episode_index[i])

    @classmethod
    def collate(cls, tasks: Sequence[tuple[Task, int]], meta_batch_size: int | None = None) -> TaskBatch:
        """Stacks ``(task, episode_index)`` pairs; all tasks must share ways, shots and queries.

        With ``meta_batch_size`` (global, across processes) the batch also records which training
        meta-batch it is, for exact resumption.
        """
        fields = ("support_x", "support_y", "query_x", "query_y", "classes")
        stacked = {f: torch.stack([getattr(t, f) for t, _ in tasks]) for f in fields}
        for f in EPISODE_FACTS:
            known = [getattr(t, f) for t, _ in tasks]
            stacked[f] = None if any(v is None for v in known) else torch.stack(known)
        episodes = torch.tensor([i for _, i in tasks], dtype=torch.long)
        meta_batch = tasks[0][1] // meta_batch_size if meta_batch_size else -1
        return cls(**stacked, episode_index=episodes, meta_batch_index=meta_batch)

    @classmethod
    def of(cls, task: Task) -> TaskBatch:
        """The meta-batch of the one task ``task`` (episode index 0 unless it has one)."""
        fields = ("support_x", "support_y", "query_x", "query_y", "classes")
        stacked = {f: getattr(task, f).unsqueeze(0) for f in fields}
        about = {
            f: None if getattr(task, f) is None else getattr(task, f).unsqueeze(0) for f in EPISODE_FACTS
        }
        index = torch.zeros((), dtype=torch.long) if task.episode_index is None else task.episode_index
        return cls(**stacked, **about, episode_index=index.reshape(1))
