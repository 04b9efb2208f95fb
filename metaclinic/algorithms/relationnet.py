"""Relation Networks: Sung, Yang, Zhang, Xiang, Torr and Hospedales, "Learning to Compare: Relation Network
for Few-Shot Learning", CVPR 2018, https://arxiv.org/abs/1711.06025.

A learned relation module scores each (query, class) pair from the query's embedding and the class's
embedding, trained by regressing the scores onto one-hot targets with a mean squared error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.metric_based import MetricModule
from metaclinic.algorithms.pooling import class_means
from metaclinic.data.task import TaskBatch


class RelationNet(MetricModule):
    """Relation Networks over embedding vectors, batched over the meta-batch.

    The paper's relation module convolves concatenated feature maps; here it is an MLP on concatenated
    embedding vectors, so any backbone that outputs vectors works. A class's embedding is the mean of its
    support embeddings (the paper sums them), which keeps scores comparable across shot counts.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        hidden: width of the relation module's hidden layer.
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    def __init__(self, backbone: nn.Module, hidden: int = 64, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        size = self.embedding_size
        self.relation = nn.Sequential(
            nn.Linear(2 * size, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Relation logits ``(tasks, queries, n_way)``; the relation score is their sigmoid."""
        support, query = self.embed_episodes(self.backbone, batch)
        classes = class_means(support, batch.support_y, batch.n_way)
        pairs = torch.cat(
            torch.broadcast_tensors(query.unsqueeze(2), classes.unsqueeze(1)), dim=-1
        )  # (tasks, queries, n_way, 2d)
        return self.relation(pairs).squeeze(-1)

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        targets = F.one_hot(batch.query_y, batch.n_way).to(scores.dtype)
        return F.mse_loss(torch.sigmoid(scores), targets)
