"""Matching Networks: Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, "Matching Networks for One
Shot Learning", NeurIPS 2016, https://arxiv.org/abs/1606.04080.

A query's class distribution is an attention-weighted sum of the support labels, the attention being a
softmax over cosine similarities of embeddings. With full-context embeddings (FCE) a bidirectional LSTM
embeds each support example in the context of the whole support set, and an attention LSTM embeds the
query in that context over ``fce_steps`` read steps (paper, appendix A).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.metric_based import MetricModule
from metaclinic.data.task import TaskBatch


class MatchingNet(MetricModule):
    """Matching Networks with cosine attention, batched over the meta-batch; FCE optional.

    Returns log-probabilities as logits, so the base class's cross-entropy is the paper's loss.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features`` when ``fce`` is on.
        fce: use full-context embeddings.
        fce_steps: read steps of the query's attention LSTM.
        temperature: scale of the cosine similarities before the attention softmax; the paper uses 1.
            Cosines lie in [-1, 1], so with 1 the attention is nearly uniform at first and learning is slow;
            10 learns several times faster.
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    def __init__(
        self, backbone: nn.Module, fce: bool = False, fce_steps: int = 5, temperature: float = 1.0, **kwargs
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.fce, self.fce_steps, self.temperature = fce, fce_steps, temperature
        if fce:
            size = self.embedding_size
            self.support_lstm = nn.LSTM(size, size, batch_first=True, bidirectional=True)
            self.query_cell = nn.LSTMCell(size, size)

    def contextualise(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """Full-context embeddings ``g(x_i, S)`` and ``f(x, S)``."""
        forward, backward = self.support_lstm(support)[0].chunk(2, dim=-1)
        support = support + forward + backward
        hidden, cell = torch.zeros_like(query), torch.zeros_like(query)
        readout = torch.zeros_like(query)
        tasks, n_queries, size = query.shape
        for _ in range(self.fce_steps):
            hidden, cell = self.query_cell(
                query.reshape(-1, size), ((hidden + readout).reshape(-1, size), cell.reshape(-1, size))
            )
            hidden, cell = hidden.view(tasks, n_queries, size) + query, cell.view(tasks, n_queries, size)
            readout = torch.softmax(hidden @ support.transpose(1, 2), dim=-1) @ support
        return support, hidden

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        support, query = self.embed_episodes(self.backbone, batch)
        if self.fce:
            support, query = self.contextualise(support, query)
        similarity = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
        attention = torch.softmax(self.temperature * similarity, dim=-1)  # (tasks, queries, supports)
        probabilities = attention @ F.one_hot(batch.support_y, batch.n_way).to(attention.dtype)
        return probabilities.clamp_min(1e-8).log()
