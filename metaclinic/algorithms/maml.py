"""MAML: Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, https://arxiv.org/abs/1703.03400.

The whole network (backbone and a linear ``n_way`` head) is adapted to each support set by a few steps of
gradient descent; the meta-update differentiates the query loss through those steps (second order), or
treats the adapted gradients as constants (``first_order=True``, FOMAML). The inner loop is learn2learn's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.task import Task, TaskBatch
from metaclinic.errors import DataError


class MAML(EpisodicModule):
    """Model-Agnostic Meta-Learning through ``learn2learn.algorithms.MAML``.

    Evaluation always adapts first-order: the query is only scored there, so the second-order graph would
    cost memory for nothing, and the adapted weights are the same.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        n_way: width of the classification head; episodes must have this many classes.
        inner_lr: step size of the inner (adaptation) loop during meta-training.
        train_steps: inner-loop steps during meta-training.
        eval_steps: inner-loop steps during validation and test.
        eval_inner_lr: inner step size during validation and test (default: ``inner_lr``).
        first_order: drop second-order terms from the meta-gradient (FOMAML).
        optimizer: outer-loop optimizer.
        scheduler: optional outer-loop learning-rate scheduler.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_way: int = 5,
        inner_lr: float = 0.01,
        train_steps: int = 5,
        eval_steps: int = 10,
        eval_inner_lr: float | None = None,
        first_order: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        network = nn.Sequential(backbone, nn.Linear(backbone.out_features, n_way))
        self.maml = l2l.algorithms.MAML(network, lr=inner_lr, first_order=first_order)
        self.n_way, self.inner_lr, self.first_order = n_way, inner_lr, first_order
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr

    @property
    def backbone(self) -> nn.Module:
        return self.maml.module[0]

    def check_episode(self, batch: TaskBatch) -> None:
        if batch.n_way != self.n_way:
            raise DataError(
                f"MAML was built with a {self.n_way}-way head but the episodes are {batch.n_way}-way; "
                "set model.init_args.n_way to data.init_args.n_way"
            )

    def adapt(self, task: Task) -> l2l.algorithms.MAML:
        """Returns a clone of the network adapted to ``task``'s support set."""
        steps, lr = (
            (self.train_steps, self.inner_lr) if self.training else (self.eval_steps, self.eval_inner_lr)
        )
        with torch.enable_grad():
            learner = self.maml.clone(first_order=self.first_order if self.training else True)
            learner.lr = lr
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(task.support_x), task.support_y))
        return learner

    def adapt_and_score(self, task: Task) -> Tensor:
        return self.adapt(task)(task.query_x)
