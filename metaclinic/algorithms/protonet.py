"""Prototypical Networks: Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning",
NeurIPS 2017, https://arxiv.org/abs/1703.05175.

A class is represented by its prototype, the mean embedding of its support examples; a query's logits
are its negative squared Euclidean distances to the prototypes (or scaled cosine similarities).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from metaclinic.algorithms.adapted import PrototypeClassifier
from metaclinic.algorithms.metric import MetricModule
from metaclinic.algorithms.pooling import class_means, prototype_logits
from metaclinic.data.task import TaskBatch


class ProtoNet(MetricModule):
    """Prototypical Networks, batched over the whole meta-batch (unless batch norm embeds each episode alone).

    Args:
        backbone: maps inputs to embeddings.
        distance: ``euclidean`` (squared, as in the paper) or ``cosine``.
        temperature: scale of cosine similarities before the softmax (cosine only).
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        temperature: float = 10.0,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.distance, self.temperature = distance, temperature

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        support, query = self.embed_episodes(self.backbone, batch)
        prototypes = class_means(support, batch.support_y, batch.n_way)
        return prototype_logits(query, prototypes, self.distance, self.temperature)

    def adapted_classifier(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> nn.Module:
        return PrototypeClassifier(self.backbone, support_x, support_y, self.distance, self.temperature)
