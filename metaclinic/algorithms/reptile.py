"""Reptile: Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018,
https://arxiv.org/abs/1803.02999.

Each task's clone takes ``train_steps`` plain gradient steps on its support set (first order); the
meta-parameters then move towards the adapted ones: ``theta <- theta + epsilon * mean_i(phi_i - theta)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaclinic.algorithms.maml import MAML
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.models.normalization import forward_queries


class Reptile(MAML):
    """Reptile with learn2learn clones, as a manual-optimisation LightningModule.

    The outer update is done by the configured optimizer: the mean of ``theta - phi_i`` is written into
    ``theta.grad`` and ``optimizer.step()`` is called, so plain ``torch.optim.SGD(lr=epsilon)`` gives
    exactly the formula above, and schedulers, precision plugins and checkpointing work as for any
    Lightning optimizer. Evaluation adapts like MAML (``eval_steps`` steps on the support set).

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        **kwargs: inner-loop and optimizer settings of :class:`InnerLoopModule`; ``first_order`` is
            always true.
    """

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        if not kwargs.pop("first_order", True):
            raise DataError("Reptile is first order by definition; remove model.init_args.first_order")
        super().__init__(backbone, first_order=True, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        self.check_episode(batch)
        params = list(self.learner.parameters())
        step = [torch.zeros_like(p) for p in params]
        logits = []
        for task in batch:
            adapted = self.inner_loop(self.learner, task.support_x, task.support_y)
            for total, old, new in zip(step, params, adapted.parameters(), strict=True):
                total.add_(old.detach() - new.detach(), alpha=1 / len(batch))
            with torch.no_grad():
                logits.append(forward_queries(adapted, task.support_x, task.query_x))
        # Each process averaged over its own tasks; averaging over processes gives the global mean (no
        # backward pass runs, so DDP's gradient hooks never fire: the reduction is explicit).
        flat = self.trainer.strategy.reduce(torch.cat([s.flatten() for s in step]), reduce_op="mean")
        optimizer = self.optimizers()
        optimizer.zero_grad()
        for param, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
            param.grad = grad.view_as(param)
        optimizer.step()
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()
        loss, accuracy = self.query_metrics(torch.stack(logits), batch)
        self.log_training(loss, accuracy)
        return loss
