"""Adapted models: a meta-trained model after adapting to one support set, as a plain ``nn.Module``.

Each maps preprocessed inputs ``(batch, *example)`` to class logits ``(batch, n_classes)`` (made probabilities
with the model's temperature by :class:`CalibratedProbabilities`) and holds
only tensors and standard layers, so ``torch.export`` saves it to load without metaclinic, learn2learn or
Lightning. Every algorithm returns its own from :meth:`EpisodicModule.adapted_classifier`.

Networks that normalise with the support set's moments (Conv4's default, see
:mod:`metaclinic.models.normalization`) hold those moments as buffers (``freeze_support_statistics``), so
every case is scored on its own, as in evaluation. With transductive batch norm (batch statistics),
evaluation normalises each episode's inputs together, so the adapted models embed their inputs together
with the support set (or, for a whole network, the inputs alone as a query set): called with all the cases
of an episode at once, they give exactly the probabilities evaluation gives.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from metaclinic.algorithms.pooling import class_means, prototype_logits
from metaclinic.data.task import TaskBatch
from metaclinic.models.normalization import freeze_support_statistics, uses_batch_statistics


def one_episode(support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> TaskBatch:
    """A meta-batch of one episode whose query set is ``query_x`` (its labels are placeholders, unused)."""
    return TaskBatch(
        support_x=support_x.unsqueeze(0),
        support_y=support_y.unsqueeze(0),
        query_x=query_x.unsqueeze(0),
        query_y=query_x.new_zeros(query_x.shape[0], dtype=torch.long).unsqueeze(0),
        classes=torch.arange(n_way, device=query_x.device).unsqueeze(0),
        episode_index=torch.zeros(1, dtype=torch.long),
    )


def with_weights(template: nn.Module, adapted: nn.Module) -> nn.Module:
    """A copy of ``template`` holding the (plain-tensor) weights of a learn2learn clone as parameters."""
    network = copy.deepcopy(template)
    network.load_state_dict(adapted.state_dict())
    return network.requires_grad_(False)


class CalibratedProbabilities(nn.Module):
    """An adapted model's logits divided by the temperature (``metaclinic.calibration``), softmaxed."""

    def __init__(self, adapted: nn.Module, temperature: float) -> None:
        super().__init__()
        self.adapted, self.temperature = adapted, temperature

    def forward(self, x: Tensor) -> Tensor:
        return (self.adapted(x) / self.temperature).softmax(-1)


class AdaptedNetwork(nn.Module):
    """A whole network with adapted weights (MAML, FOMAML, Meta-SGD, Reptile) and its support's moments."""

    def __init__(self, network: nn.Module, support_x: Tensor) -> None:
        super().__init__()
        self.network = freeze_support_statistics(network, support_x)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


class AdaptedHead(nn.Module):
    """A meta-learned (or pretrained) backbone with a head fitted to the support set (ANIL, Baseline)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, support_x: Tensor) -> None:
        super().__init__()
        self.backbone, self.head = freeze_support_statistics(backbone, support_x), head
        self.register_buffer("support_x", support_x.clone())
        self.joint = uses_batch_statistics(backbone)

    def forward(self, x: Tensor) -> Tensor:
        if self.joint:
            embeddings = self.backbone(torch.cat([self.support_x, x]))[self.support_x.shape[0] :]
        else:
            embeddings = self.backbone(x)
        return self.head(embeddings)


class PrototypeClassifier(nn.Module):
    """A backbone with the class prototypes of the support set (ProtoNet).

    Scores by ProtoNet's own ``prototype_logits``. With a batch-statistics backbone, prototypes are
    recomputed at every call.
    """

    def __init__(
        self, backbone: nn.Module, support_x: Tensor, support_y: Tensor, distance: str, temperature: float
    ) -> None:
        super().__init__()
        self.backbone = freeze_support_statistics(copy.deepcopy(backbone), support_x)
        self.distance, self.temperature = distance, temperature
        self.n_way = int(support_y.max()) + 1
        self.joint = uses_batch_statistics(self.backbone)
        self.register_buffer("support_x", support_x.clone())
        self.register_buffer("support_y", support_y.clone())
        if not self.joint:
            with torch.no_grad():
                self.register_buffer("prototypes", self._prototypes(self.backbone(support_x)))

    def _prototypes(self, support: Tensor) -> Tensor:
        return class_means(support.unsqueeze(0), self.support_y.unsqueeze(0), self.n_way)[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.joint:
            embeddings = self.backbone(torch.cat([self.support_x, x]))
            n_support = self.support_x.shape[0]
            prototypes, query = self._prototypes(embeddings[:n_support]), embeddings[n_support:]
        else:
            prototypes, query = self.prototypes, self.backbone(x)
        return prototype_logits(query, prototypes, self.distance, self.temperature)


class SupportSetClassifier(nn.Module):
    """An algorithm with its support set as buffers: every call scores the inputs as one query set.

    The default adapted model (Matching, Relation and Siamese networks, SimpleShot): evaluation's own
    ``score_tasks`` and ``class_logits``, so it needs nothing per algorithm.
    """

    def __init__(self, algorithm: nn.Module, support_x: Tensor, support_y: Tensor) -> None:
        super().__init__()
        self.algorithm = copy.deepcopy(algorithm)
        self.register_buffer("support_x", support_x.clone())
        self.register_buffer("support_y", support_y.clone())
        self.n_way = int(support_y.max()) + 1

    def forward(self, x: Tensor) -> Tensor:
        batch = one_episode(self.support_x, self.support_y, x, self.n_way)
        return self.algorithm.class_logits(self.algorithm.score_tasks(batch), batch)[0]
