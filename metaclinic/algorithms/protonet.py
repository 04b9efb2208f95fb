"""Prototypical Networks: Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning",
NeurIPS 2017, https://arxiv.org/abs/1703.05175.

A class is represented by its prototype, the mean embedding of its support examples; a query's logits
are its negative squared Euclidean distances to the prototypes (or scaled cosine similarities).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from metaclinic.algorithms.finetune import EmbeddingScores, SupportFineTuning
from metaclinic.algorithms.metric_based import MetricModule
from metaclinic.algorithms.pooling import class_means, prototype_logits


class ProtoNet(EmbeddingScores, MetricModule):
    """Prototypical Networks, batched over the whole meta-batch (unless batch norm embeds each episode alone).

    Args:
        backbone: maps inputs to embeddings.
        distance: ``euclidean`` (squared, as in the paper) or ``cosine``.
        temperature: scale of cosine similarities before the softmax (cosine only).
        support_finetuning: fine-tune the backbone on each support set at validation and test (P>M>F,
            :mod:`metaclinic.algorithms.finetune`); ``None``: score with the meta-trained backbone.
        **kwargs: ``optimizer``, ``scheduler`` and ``init_from``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        temperature: float = 10.0,
        support_finetuning: SupportFineTuning | None = None,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.distance, self.temperature = distance, temperature
        self.support_finetuning = support_finetuning

    def episode_logits(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        prototypes = class_means(support, support_y, n_way)
        return prototype_logits(query, prototypes, self.distance, self.temperature)
