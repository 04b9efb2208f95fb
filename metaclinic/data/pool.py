"""Examples grouped by class: what the episode sampler draws from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from metaclinic.errors import DataError


@dataclass(frozen=True)
class ClassInfo:
    """One class of the pool. ``key`` is how configs name it (``"bloodmnist:3"``); ``domain`` its source."""

    key: str
    name: str
    domain: str


@dataclass
class ClassPool:
    """All examples of one meta-split in a single tensor, with the indices of each class.

    Keeping examples in one tensor makes an episode a single gather, whatever the number of classes.
    """

    examples: Tensor
    class_indices: list[Tensor]
    classes: list[ClassInfo]

    def __post_init__(self) -> None:
        if len(self.class_indices) != len(self.classes):
            raise DataError("ClassPool needs one index tensor per class")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_sizes(self) -> list[int]:
        return [len(idx) for idx in self.class_indices]

    def fingerprint(self) -> str:
        """A short hash of the class keys and their sizes: identifies the split in checkpoints."""
        text = ";".join(f"{c.key}={n}" for c, n in zip(self.classes, self.class_sizes(), strict=True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_enough_examples(self, needed: int, split: str, what: str) -> None:
        """Raises when a class has fewer examples than one episode needs, naming every such class."""
        short = [
            (c.key, c.name, n) for c, n in zip(self.classes, self.class_sizes(), strict=True) if n < needed
        ]
        if short:
            listed = ", ".join(f"{key} ({name}): {n}" for key, name, n in short)
            raise DataError(
                f"{split}: {len(short)} class(es) have fewer than {needed} examples, which {what} needs: "
                f"{listed}. Lower n_shot/n_query, or move these classes out of {split}."
            )

    @staticmethod
    def concat(pools: list[ClassPool]) -> ClassPool:
        """Joins pools (e.g. one per dataset) into one, shifting each pool's indices."""
        offset, indices, classes = 0, [], []
        for pool in pools:
            indices += [idx + offset for idx in pool.class_indices]
            classes += pool.classes
            offset += len(pool.examples)
        examples = torch.cat([p.examples for p in pools]) if pools else torch.empty(0)
        return ClassPool(examples, indices, classes)
