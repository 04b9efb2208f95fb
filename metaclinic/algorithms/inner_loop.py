"""What the gradient-based algorithms (MAML, ANIL, Meta-SGD, Reptile) share: a learn2learn inner loop.

Mixed precision: the adaptation (support forward, support loss and its gradients) runs with autocast
turned off, in the dtype of the meta-parameters (float32 under ``bf16-mixed`` and ``16-mixed``); the
query forward (and ANIL's backbone) stays under autocast. Half-precision inner loops give wrong
meta-gradients: the second-order terms go through a half-precision Hessian-vector product at every step
and the error compounds. On Conv4 with 5 inner steps (tests/test_precision.py) a bf16 inner loop gave a
meta-gradient with cosine similarity 0.27-0.58 to the fp32 one, the fp32 inner loop 0.993-0.999 (plain
bf16 training of Conv4 gets 0.987). In fp16 the double backward overflows (pytorch #64655): with the
outer loss scaled by 2**8 or more, as Lightning's ``16-mixed`` GradScaler does (it starts at 2**16 and
scales only the outer loss), every meta-gradient entry was NaN, so the scaler would skip step after
step; an inner-loop scaler of its own could not skip a bad inner step without changing the algorithm.
The fp32 inner loop is finite at any scale. The price: the support passes run at fp32 speed, on small
support sets (``n_way * n_shot`` examples).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from metaclinic.algorithms.base import EpisodicModule, full_precision


class InnerLoopModule(EpisodicModule):
    """An episodic module that adapts a learn2learn wrapper (``MAML``, ``MetaSGD``) to each support set.

    Training adapts with ``train_steps`` steps, second order unless ``first_order``; evaluation adapts with
    ``eval_steps`` steps, always first order (only the query is scored, so a second-order graph would be
    memory spent for nothing), from a copy of the meta-parameters cut off from their graph, and with
    gradients enabled only inside the inner loop. The adaptation runs without autocast, in the precision
    of the meta-parameters (see the module docstring).

    Args:
        n_way: width of the classification head; episodes must have this many classes.
        inner_lr: step size of the inner (adaptation) loop during meta-training.
        train_steps: inner-loop steps during meta-training.
        eval_steps: inner-loop steps during validation and test.
        eval_inner_lr: inner step size during validation and test (default: ``inner_lr``).
        first_order: drop second-order terms from the meta-gradient.
        optimizer: outer-loop optimizer.
        scheduler: optional outer-loop learning-rate scheduler.
        init_from: checkpoint of a finished run whose backbone weights meta-training starts from.
    """

    # Each task's inner loop builds a graph of its own: differentiated task by task (see training_loss).
    backward_per_task = True
    fixed_ways = True

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
        init_from: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, init_from)
        self.n_way, self.inner_lr, self.first_order = n_way, inner_lr, first_order
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr

    def inner_step(self, learner: nn.Module, loss: Tensor, step: int, first_order: bool) -> None:
        """One inner-loop step of ``learner`` on its support loss; ``step`` counts from 0.

        The wrapper's own update (``lr`` times the gradient, or Meta-SGD's learned ``lrs``); a subclass
        overrides it to choose the step size per step (MAML++).
        """
        learner.adapt(loss, first_order=first_order)

    def inner_loop(
        self,
        wrapper: nn.Module,
        support_x: Tensor,
        support_y: Tensor,
        on_step: Callable[[nn.Module], None] | None = None,
    ) -> nn.Module:
        """Returns a clone of ``wrapper`` (learn2learn ``MAML`` or ``MetaSGD``) adapted to the support set.

        ``support_x`` may come from an autocast region (ANIL's embeddings); it is cast to the parameters'
        dtype, and gradients still flow back through the cast. ``on_step`` is called with the learner after
        every step (MAML++ scores the query set there), outside the full-precision region, so a query
        forward it runs stays under autocast as the final one does.
        """
        self.require_autograd()
        training = self.training
        steps = self.train_steps if training else self.eval_steps
        first_order = self.first_order if training else True
        with torch.enable_grad(), full_precision(support_x.device):
            support_x = support_x.to(next(wrapper.module.parameters()).dtype)
            if training:
                learner = wrapper.clone()
            else:  # adapted weights with no graph back to the meta-parameters: nothing kept but the result
                with torch.no_grad():
                    learner = wrapper.clone()
                for meta, fast in zip(wrapper.module.parameters(), learner.module.parameters(), strict=True):
                    fast.requires_grad_(meta.requires_grad)
            if hasattr(learner, "lr"):  # MAML's single step size; Meta-SGD learns its own
                learner.lr = self.inner_lr if training else self.eval_inner_lr
        for step in range(steps):
            with torch.enable_grad(), full_precision(support_x.device):
                self.inner_step(learner, F.cross_entropy(learner(support_x), support_y), step, first_order)
            if on_step is not None:
                on_step(learner)
        return learner
