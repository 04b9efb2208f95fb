"""Siamese networks: Koch, Zemel and Salakhutdinov, "Siamese Neural Networks for One-shot Image
Recognition", ICML Deep Learning Workshop 2015.

Twin embeddings are compared by a learned weighted L1 distance, ``sigmoid(sum_j w_j |h1_j - h2_j| + b)``,
trained as a same/different classifier on pairs. A query takes the class of its most similar support
example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.metric_based import MetricModule
from metaclinic.data.task import TaskBatch


class Siamese(MetricModule):
    """Siamese networks trained on every (query, support) pair of each episode.

    Pairs of the same class are ``1/(n_way-1)`` of all pairs, so positives are weighted by ``n_way - 1``
    to balance the binary cross-entropy.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        self.similarity = nn.Linear(self.embedding_size, 1)

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Same-class logits of every (query, support) pair: ``(tasks, queries, supports)``."""
        support, query = self.embed_episodes(self.backbone, batch)
        return self.similarity((query.unsqueeze(2) - support.unsqueeze(1)).abs()).squeeze(-1)

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        same = (batch.query_y.unsqueeze(2) == batch.support_y.unsqueeze(1)).to(scores.dtype)
        weight = torch.tensor(batch.n_way - 1.0, dtype=scores.dtype, device=scores.device)
        return F.binary_cross_entropy_with_logits(scores, same, pos_weight=weight)

    def class_logits(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """Each class scores as its most similar support example."""
        member = F.one_hot(batch.support_y, batch.n_way).bool().unsqueeze(1)  # (tasks, 1, supports, n_way)
        return scores.unsqueeze(-1).masked_fill(~member, float("-inf")).amax(dim=2)
