"""What the gradient-based algorithms (MAML, ANIL, Meta-SGD, Reptile) share: a learn2learn inner loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError


class InnerLoopModule(EpisodicModule):
    """An episodic module that adapts a learn2learn wrapper (``MAML``, ``MetaSGD``) to each support set.

    Training adapts with ``train_steps`` steps, second order unless ``first_order``; evaluation adapts with
    ``eval_steps`` steps, always first order (only the query is scored, so a second-order graph would be
    memory spent for nothing) and with gradients enabled only inside the inner loop.

    Args:
        n_way: width of the classification head; episodes must have this many classes.
        inner_lr: step size of the inner (adaptation) loop during meta-training.
        train_steps: inner-loop steps during meta-training.
        eval_steps: inner-loop steps during validation and test.
        eval_inner_lr: inner step size during validation and test (default: ``inner_lr``).
        first_order: drop second-order terms from the meta-gradient.
        optimizer: outer-loop optimizer.
        scheduler: optional outer-loop learning-rate scheduler.
    """

    def __init__(
        self,
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
        self.n_way, self.inner_lr, self.first_order = n_way, inner_lr, first_order
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr

    def check_episode(self, batch: TaskBatch) -> None:
        if batch.n_way != self.n_way:
            raise DataError(
                f"{type(self).__name__} was built with a {self.n_way}-way head but the episodes are "
                f"{batch.n_way}-way; set model.init_args.n_way to data.init_args.n_way"
            )

    def inner_loop(self, wrapper: nn.Module, support_x: Tensor, support_y: Tensor) -> nn.Module:
        """Returns a clone of ``wrapper`` (learn2learn ``MAML`` or ``MetaSGD``) adapted to the support set."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd during evaluation for its inner loop, but the Trainer "
                "runs evaluation in inference mode. Create it with Trainer(inference_mode=False)."
            )
        training = self.training
        steps = self.train_steps if training else self.eval_steps
        first_order = self.first_order if training else True
        with torch.enable_grad():
            learner = wrapper.clone()
            if hasattr(learner, "lr"):  # MAML's single step size; Meta-SGD learns its own
                learner.lr = self.inner_lr if training else self.eval_inner_lr
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(support_x), support_y), first_order=first_order)
        return learner
