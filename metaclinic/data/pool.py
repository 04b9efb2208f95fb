"""Examples grouped by class: what the episode sampler draws from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from metaclinic.errors import DataError


@dataclass(frozen=True)
class ClassInfo:
    """One class of the pool.

    ``key`` is how configs name it (``"bloodmnist:3"``, ``"cleveland/1"``), ``domain`` its source (a dataset,
    a hospital, a label column) and ``label`` the outcome it stands for across domains (``"1"`` for the
    diseased patients of every hospital), which supervised baselines pool over; by default the key.
    ``grade``: the class's value on an ordinal scale (RetinaMNIST's grades 0-4), when its domain's classes
    are grades of one scale; the report then scores episodes by grade too (kappa, grade error).
    ``positive``: the class is its domain's clinically positive one (ECG200's infarctions against its normal
    beats), so a binary episode with it scores sensitivity and specificity for it, whatever the keys say.
    """

    key: str
    name: str
    domain: str
    label: str = ""
    grade: int | None = None
    positive: bool = False

    @property
    def target(self) -> str:
        return self.label or self.key


@dataclass
class ClassPool:
    """All examples of one meta-split in a single tensor, with the indices of each class.

    Keeping examples in one tensor makes an episode a single gather, whatever the number of classes.

    ``groups`` (optional, one integer per example) marks examples of the same patient: an episode then
    draws distinct patients, and never puts one patient in both its support and its query set.
    ``same_domain_episodes`` makes every episode draw its classes from a single domain (one hospital, one
    label column), so that a task is "diagnose in this hospital", not a mix of hospitals.
    """

    examples: Tensor
    class_indices: list[Tensor]
    classes: list[ClassInfo]
    groups: Tensor | None = None
    same_domain_episodes: bool = False

    def __post_init__(self) -> None:
        if len(self.class_indices) != len(self.classes):
            raise DataError("ClassPool needs one index tensor per class")
        if self.groups is not None and len(self.groups) != len(self.examples):
            raise DataError("ClassPool needs one group id per example")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_sizes(self) -> list[int]:
        return [len(idx) for idx in self.class_indices]

    def class_units(self) -> list[int]:
        """What one class can give an episode: its distinct patients when grouped, else its examples."""
        if self.groups is None:
            return self.class_sizes()
        return [len(torch.unique(self.groups[idx])) for idx in self.class_indices]

    @property
    def unit_name(self) -> str:
        return "patients" if self.groups is not None else "examples"

    def domains(self) -> dict[str, list[int]]:
        """Class ids of each domain, in class order."""
        by_domain: dict[str, list[int]] = {}
        for i, info in enumerate(self.classes):
            by_domain.setdefault(info.domain, []).append(i)
        return by_domain

    def eligible_classes(self, needed: int) -> list[int]:
        """Classes with at least ``needed`` units (examples or patients)."""
        return [i for i, n in enumerate(self.class_units()) if n >= needed]

    def fingerprint(self) -> str:
        """A short hash of the class keys and their sizes: identifies the split in checkpoints."""
        text = ";".join(f"{c.key}={n}" for c, n in zip(self.classes, self.class_sizes(), strict=True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def short_classes(self, needed: int) -> list[str]:
        """The classes with fewer than ``needed`` units, as ``"key (name): count"`` for messages."""
        return [
            f"{c.key} ({c.name}): {n}"
            for c, n in zip(self.classes, self.class_units(), strict=True)
            if n < needed
        ]

    def check_enough_examples(self, needed: int, split: str, what: str) -> None:
        """Raises when a class has fewer examples (patients) than an episode needs, naming each such class."""
        short = self.short_classes(needed)
        if short:
            raise DataError(
                f"{split}: {len(short)} class(es) have fewer than {needed} {self.unit_name}, which {what} "
                f"needs: {', '.join(short)}. Lower n_shot/n_query, or move these classes out of {split}."
            )

    @staticmethod
    def concat(pools: list[ClassPool]) -> ClassPool:
        """Joins ungrouped pools (e.g. one per dataset) into one, shifting each pool's indices."""
        if any(p.groups is not None or p.same_domain_episodes for p in pools):
            raise DataError("ClassPool.concat joins ungrouped pools only")
        offset, indices, classes = 0, [], []
        for pool in pools:
            indices += [idx + offset for idx in pool.class_indices]
            classes += pool.classes
            offset += len(pool.examples)
        examples = torch.cat([p.examples for p in pools]) if pools else torch.empty(0)
        return ClassPool(examples, indices, classes)
