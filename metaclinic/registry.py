"""The one list of methods: what the comparison script runs, the parametrised tests cover, the README lists.

Adding an algorithm is its module, its config (``configs/<config>.yaml``, which says only what differs from
the shared parts in ``configs/parts/``) and its entry here; ``tests/test_registry.py`` fails while one of
them is missing, and every test parametrised over :data:`METHODS` then covers it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metaclinic import algorithms, baselines
from metaclinic.algorithms.base import EpisodicModule

_ADAM = functools.partial(torch.optim.Adam, lr=3e-3)
_INNER: dict[str, Any] = dict(inner_lr=0.4, train_steps=1, eval_steps=3, optimizer=_ADAM)


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    Attributes:
        name: its name in reports, tables and the README.
        model: its class.
        config: the stem of its comparison config, ``configs/<config>_medmnist.yaml`` (same data, backbone
            and budget as every other).
        args: command-line arguments on top of the config (Baseline++: the Baseline config, another class).
        paper: authors, title, venue and year of the method.
        settings: constructor settings (besides the backbone and ``n_way``) under which it learns the tests'
            synthetic 5-way tasks within 60 steps of a small Conv-4: what the parametrised tests build.
    """

    name: str
    model: type[EpisodicModule]
    config: str
    paper: str
    args: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def config_file(self) -> str:
        return f"configs/{self.config}_medmnist.yaml"

    @property
    def is_baseline(self) -> bool:
        return self.model.is_baseline

    def build(self, backbone: nn.Module, n_way: int = 5, **overrides: Any) -> EpisodicModule:
        """The method on ``backbone`` with its test settings (``overrides`` win)."""
        settings = {**self.settings, **overrides}
        if "n_way" in inspect.signature(self.model).parameters:  # a head of fixed width, or MetaGAN's
            settings.setdefault("n_way", n_way)
        return self.model(backbone, **settings)


METHODS: list[Method] = [
    # Baselines first: the comparison's references.
    Method("SimpleShot", baselines.SimpleShot, "simpleshot",
           'Wang et al., "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning", '
           "arXiv 2019"),
    Method("Baseline", baselines.Baseline, "baseline",
           'Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019'),
    Method("Baseline++", baselines.BaselinePlusPlus, "baseline",
           'Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019',
           args=("--model=metaclinic.baselines.BaselinePlusPlus",)),
    Method("MAML", algorithms.MAML, "maml",
           'Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", '
           "ICML 2017", settings=_INNER),
    Method("FOMAML", algorithms.MAML, "fomaml",
           "Finn, Abbeel and Levine, ICML 2017 (section 5.2, first-order approximation)",
           settings={**_INNER, "first_order": True}),
    Method("ANIL", algorithms.ANIL, "anil",
           'Raghu et al., "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of '
           'MAML", ICLR 2020',
           settings={**_INNER, "inner_lr": 1.0, "optimizer": functools.partial(torch.optim.Adam, lr=1e-2)}),
    Method("Meta-SGD", algorithms.MetaSGD, "metasgd",
           'Li et al., "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv 2017',
           settings=_INNER),
    Method("MAML++", algorithms.MAMLPlusPlus, "mamlpp",
           'Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019',
           # every switch on: learned rates, multi-step loss, first order for the first steps
           settings={**_INNER, "train_steps": 2, "multi_step_loss_steps": 30, "first_order_until_step": 15}),
    Method("Reptile", algorithms.Reptile, "reptile",
           'Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", arXiv 2018',
           settings={**_INNER, "train_steps": 3, "optimizer": functools.partial(torch.optim.SGD, lr=0.5)}),
    Method("ProtoNet", algorithms.ProtoNet, "protonet",
           'Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017',
           settings={"optimizer": _ADAM}),
    Method("MatchingNet", algorithms.MatchingNet, "matchingnet",
           'Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016',
           settings={"temperature": 10.0, "optimizer": _ADAM}),
    Method("RelationNet", algorithms.RelationNet, "relationnet",
           'Sung et al., "Learning to Compare: Relation Network for Few-Shot Learning", CVPR 2018',
           settings={"optimizer": _ADAM}),
    Method("Siamese", algorithms.Siamese, "siamese",
           'Koch, Zemel and Salakhutdinov, "Siamese Neural Networks for One-shot Image Recognition", '
           "ICML Deep Learning Workshop 2015", settings={"optimizer": _ADAM}),
    Method("LSTM meta-learner", algorithms.LSTMMetaLearner, "lstm_meta_learner",
           'Ravi and Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017',
           settings=_INNER),
    Method("MetaNet", algorithms.MetaNetwork, "metanet",
           'Munkhdalai and Yu, "Meta Networks", ICML 2017',
           settings={"hidden": 32, "key_size": 32, "optimizer": _ADAM}),
    Method("LEO", algorithms.LEO, "leo",
           'Rusu et al., "Meta-Learning with Latent Embedding Optimization", ICLR 2019',
           settings={"optimizer": _ADAM}),
    Method("MetaGAN", algorithms.MetaGAN, "metagan",
           'Zhang, Che, Ghahramani, Bengio and Song, "MetaGAN: An Adversarial Approach to Few-Shot '
           'Learning", NeurIPS 2018', settings={"optimizer": _ADAM}),
    Method("MANN", algorithms.MANN, "mann",
           'Santoro et al., "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016',
           settings={"controller_size": 64, "memory_slots": 16, "memory_size": 32,
                     "optimizer": functools.partial(torch.optim.Adam, lr=1e-2)}),
]  # fmt: skip


def method(name: str) -> Method:
    """The entry called ``name``; the error lists the names there are."""
    for entry in METHODS:
        if entry.name == name:
            return entry
    raise KeyError(f"no method {name!r}; the methods are {[m.name for m in METHODS]}")


def register(entry: Method) -> Method:
    """Adds ``entry`` (a method defined outside metaclinic, or in a test); its name must be new."""
    if any(m.name == entry.name for m in METHODS):
        raise ValueError(f"a method called {entry.name!r} is registered already")
    METHODS.append(entry)
    return entry


def meta_learners() -> list[Method]:
    return [m for m in METHODS if not m.is_baseline]
