"""ANIL: Raghu, Raghu, Bengio and Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, https://arxiv.org/abs/1909.09157.

Almost No Inner Loop: only the linear head adapts to the support set; the backbone is meta-learned in
the outer loop alone. The head adapts to the support embeddings; the adapted model embeds its inputs together
with the support set (whose moments the default normalisation takes) and applies the adapted head.
"""

from __future__ import annotations

from torch import nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.adapted import AdaptedHead
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.data.task import Task, TaskBatch


class ANIL(InnerLoopModule):
    """ANIL with the head's inner loop through ``learn2learn.algorithms.MAML``.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        **kwargs: inner-loop and optimizer settings of :class:`InnerLoopModule`.
    """

    # The head's inner loops are small and the backbone's graph is the bulk: one backward per meta-batch.
    backward_per_task = False

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        head = nn.Linear(backbone.out_features, self.n_way)
        self.head = l2l.algorithms.MAML(head, lr=self.inner_lr, first_order=self.first_order)

    def adapt(self, task: Task) -> nn.Module:
        support, _ = self.embed_episodes(self.backbone, TaskBatch.of(task))
        head = self.inner_loop(self.head, support[0], task.support_y)
        return AdaptedHead(self.backbone, head.module, task.support_x)
