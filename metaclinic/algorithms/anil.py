"""ANIL: Raghu, Raghu, Bengio and Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, https://arxiv.org/abs/1909.09157.

Almost No Inner Loop: only the linear head adapts to the support set; the backbone is meta-learned in
the outer loop alone. The backbone embeds the whole meta-batch before any inner loop runs.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.adapted import AdaptedHead, one_episode, with_weights
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.data.task import TaskBatch


class ANIL(InnerLoopModule):
    """ANIL with the head's inner loop through ``learn2learn.algorithms.MAML``.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        **kwargs: inner-loop and optimizer settings of :class:`InnerLoopModule`.
    """

    # One backbone call embeds the whole meta-batch, so every task's loss shares that graph: its backward
    # runs once, for the meta-batch (the head's inner loops are small).
    backward_per_task = False

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        head = nn.Linear(backbone.out_features, self.n_way)
        self.head = l2l.algorithms.MAML(head, lr=self.inner_lr, first_order=self.first_order)

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        support, query = self.embed_episodes(self.backbone, batch)
        return torch.stack(
            [
                self.inner_loop(self.head, s, y)(q)
                for s, y, q in zip(support, batch.support_y, query, strict=True)
            ]
        )

    def adapted_classifier(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> nn.Module:
        # The head adapts to support embeddings normalised together with query_x, as in evaluation.
        episode = one_episode(support_x, support_y, query_x, self.n_way)
        support, _ = self.embed_episodes(self.backbone, episode)
        head = with_weights(self.head.module, self.inner_loop(self.head, support[0], support_y).module)
        return AdaptedHead(copy.deepcopy(self.backbone), head, support_x)
