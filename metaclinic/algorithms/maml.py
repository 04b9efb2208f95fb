"""MAML: Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, https://arxiv.org/abs/1703.03400.

The whole network (backbone and a linear ``n_way`` head) is adapted to each support set by a few steps of
gradient descent; the meta-update differentiates the query loss through those steps (second order), or
treats the adapted gradients as constants (``first_order=True``: FOMAML, same paper, section 5.2).
"""

from __future__ import annotations

from torch import nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.adapted import AdaptedNetwork
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.data.task import Task


class MAML(InnerLoopModule):
    """Model-Agnostic Meta-Learning through ``learn2learn.algorithms.MAML``.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        **kwargs: inner-loop and optimizer settings of :class:`InnerLoopModule` (``n_way``, ``inner_lr``,
            ``train_steps``, ``eval_steps``, ``eval_inner_lr``, ``first_order``, ``optimizer``,
            ``scheduler``).
    """

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.learner = self.wrap(nn.Sequential(backbone, nn.Linear(backbone.out_features, self.n_way)))

    def wrap(self, network: nn.Module) -> nn.Module:
        """The learn2learn wrapper whose ``clone``/``adapt`` make the inner loop."""
        return l2l.algorithms.MAML(network, lr=self.inner_lr, first_order=self.first_order)

    @property
    def backbone(self) -> nn.Module:
        return self.learner.module[0]

    def adapt(self, task: Task) -> nn.Module:
        learner = self.inner_loop(self.learner, task.support_x, task.support_y)
        return AdaptedNetwork(learner.module, task.support_x)
