"""Reptile: Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018,
https://arxiv.org/abs/1803.02999.

Each task's clone takes ``train_steps`` plain gradient steps on its support set (first order); the
meta-parameters then move towards the adapted ones: ``theta <- theta + epsilon * mean_i(phi_i - theta)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metaclinic.algorithms.maml import MAML
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError


class Reptile(MAML):
    """Reptile with learn2learn clones; the outer update is an ordinary Lightning optimizer step.

    Each task's share of the meta-gradient is ``(theta - phi_i) / tasks`` (``task_meta_gradient``), which the
    base class sums into the gradient of its training loss as it does MAML's, so the configured optimizer
    steps on the mean of ``theta - phi_i``: plain ``torch.optim.SGD(lr=epsilon)`` gives exactly the formula
    above, and DDP's gradient averaging, accumulation, clipping, schedulers and checkpoints work unchanged.
    Evaluation adapts like MAML (``eval_steps`` steps on the support set).

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        **kwargs: inner-loop and optimizer settings of :class:`InnerLoopModule`; ``first_order`` is
            always true.
    """

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        if not kwargs.pop("first_order", True):
            raise DataError("Reptile is first order by definition; remove model.init_args.first_order")
        super().__init__(backbone, first_order=True, **kwargs)

    def task_meta_gradient(
        self, task: TaskBatch, params: list[nn.Parameter], weight: float
    ) -> tuple[Tensor, Tensor, Sequence[Tensor | None]]:
        self.check_episode(task)
        (episode,) = task
        adapted = self.adapt(episode)
        fast = dict(zip(map(id, self.learner.module.parameters()), adapted.network.parameters(), strict=True))
        directions = [weight * (p.detach() - fast[id(p)].detach()) for p in params]
        with torch.no_grad():
            logits = adapted(episode.query_x).unsqueeze(0)
        loss, accuracy = self.query_metrics(logits, task)
        return loss, accuracy, directions
