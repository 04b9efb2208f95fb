"""MAML++: Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019, https://arxiv.org/abs/1810.09502.

MAML with the paper's fixes for unstable, slow meta-training (Section 4), each switchable:

- LSLR: a learned inner step size per parameter tensor and per inner step, meta-learned with the weights.
- Multi-step loss (MSL): the meta-loss weighs the query loss after every inner step, uniformly at first and
  then, linearly, more and more on the last step only, which stabilises early training. The paper anneals
  per epoch (keeping a small floor on the earlier steps); here the weights move over optimizer steps
  (``global_step``) and end exactly on the last step.
- Derivative-order annealing: first-order meta-gradients for the first optimizer steps (cheap and stable
  while the weights move fast), second order after.
- Cosine annealing of the outer learning rate is a scheduler setting, not code here:
  ``torch.optim.lr_scheduler.CosineAnnealingLR`` in ``configs/mamlpp_medmnist.yaml``.

Left out: per-step batch-norm running statistics (BNRS) and per-step batch-norm weights and biases (BNWB).
The paper needs BNRS because its batch norm uses running statistics; metaclinic's default ``norm="support"``
(:mod:`metaclinic.models.normalization`) takes the support set's moments at the current weights at every
inner step, so there are no running statistics to keep per step. BNWB (a copy of every norm's affine
parameters per step) would need per-step norm layers in the backbones, and is left for later.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.adapted import AdaptedNetwork
from metaclinic.algorithms.maml import MAML
from metaclinic.data.task import Task, TaskBatch
from metaclinic.errors import DataError


class MAMLPlusPlus(MAML):
    """MAML with learned per-step, per-layer step sizes, a multi-step loss and derivative-order annealing.

    With ``learn_inner_lr=False``, ``multi_step_loss_steps=0`` and ``first_order_until_step=0`` it is MAML.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        learn_inner_lr: LSLR; the step sizes start at ``inner_lr``. There is one row per training step;
            evaluation steps beyond ``train_steps`` use the last row (no other was trained for them), and
            ``eval_inner_lr`` must be unset (as for Meta-SGD).
        multi_step_loss_steps: optimizer steps over which the MSL weights move from uniform onto the last
            inner step; 0 disables MSL (the last step's query loss only, as MAML).
        first_order_until_step: first-order meta-gradients for this many optimizer steps, then second order
            (unless ``first_order``, which keeps them first order throughout).
        **kwargs: settings of :class:`MAML` (``n_way``, ``inner_lr``, ``train_steps``, ``eval_steps``,
            ``eval_inner_lr``, ``first_order``, ``optimizer``, ``scheduler``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        learn_inner_lr: bool = True,
        multi_step_loss_steps: int = 0,
        first_order_until_step: int = 0,
        **kwargs,
    ) -> None:
        if learn_inner_lr and kwargs.get("eval_inner_lr") is not None:
            raise DataError("MAMLPlusPlus learns its inner step sizes; remove model.init_args.eval_inner_lr")
        super().__init__(backbone, **kwargs)
        self.learn_inner_lr, self.multi_step_loss_steps = learn_inner_lr, multi_step_loss_steps
        self.first_order_until_step = first_order_until_step
        # (train_steps, parameter tensors): step k scales parameter i's gradient by inner_lrs[k, i].
        rates = torch.full((self.train_steps, len(list(self.learner.parameters()))), float(self.inner_lr))
        self.inner_lrs = nn.Parameter(rates) if learn_inner_lr else None

    # -- LSLR and derivative-order annealing -----------------------------------------------------------------
    def inner_step(self, learner: nn.Module, loss: Tensor, step: int, first_order: bool) -> None:
        """``theta_i - lr[step, i] * grad_i`` for each parameter tensor ``i``, as learn2learn's MAML.adapt.

        In evaluation (always first order) and with ``learn_inner_lr=False`` the rates are constants.
        """
        first_order = first_order or (self.training and self.global_step < self.first_order_until_step)
        params = list(learner.module.parameters())
        grads = torch.autograd.grad(loss, params, retain_graph=not first_order, create_graph=not first_order)
        if self.inner_lrs is None:
            lrs = [self.inner_lr if self.training else self.eval_inner_lr] * len(params)
        else:
            row = self.inner_lrs[min(step, self.train_steps - 1)]
            lrs = row if self.training else row.detach()  # evaluation builds no graph back to the rates
        l2l.utils.update_module(learner.module, updates=[-lr * g for lr, g in zip(lrs, grads, strict=True)])

    # -- the multi-step loss ---------------------------------------------------------------------------------
    def step_loss_weights(self) -> Tensor:
        """MSL weights ``(train_steps,)`` of the query loss after each inner step at the current step.

        Uniform at optimizer step 0, then moved linearly onto the last inner step, which holds all the
        weight from ``multi_step_loss_steps`` on (and always when MSL is off). They sum to 1.
        """
        n, total = self.train_steps, self.multi_step_loss_steps
        progress = 1.0 if total <= 0 else min(self.global_step / total, 1.0)
        weights = torch.full((n,), (1.0 - progress) / n)
        weights[-1] += progress
        return weights

    def uses_multi_step_loss(self) -> bool:
        """Whether this training step scores the query set after every inner step (weights not one-hot)."""
        return self.training and self.train_steps > 1 and bool(self.step_loss_weights()[-1] < 1)

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Final-step query logits; while MSL is on in training, all steps: ``(tasks, steps, q, n_way)``."""
        if not self.uses_multi_step_loss():
            return super().score_tasks(batch)
        return torch.stack([self.every_step_logits(task) for task in batch])

    def every_step_logits(self, task: Task) -> Tensor:
        """The query logits after each inner step, ``(steps, queries, n_way)`` (the multi-step loss)."""
        logits: list[Tensor] = []

        def score(learner: nn.Module) -> None:
            logits.append(AdaptedNetwork(learner.module, task.support_x)(task.query_x))

        self.inner_loop(self.learner, task.support_x, task.support_y, on_step=score)
        return torch.stack(logits)

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """The MSL-weighted sum of every step's query loss for per-step scores; MAML's loss otherwise."""
        if scores.dim() != 4:
            return super().query_loss(scores, batch)
        labels = batch.query_y.flatten()
        losses = torch.stack(
            [F.cross_entropy(scores[:, k].flatten(0, 1), labels) for k in range(scores.shape[1])]
        )
        return (self.step_loss_weights().to(losses) * losses).sum()

    def class_logits(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """The last inner step's logits: accuracy is the adapted model's, as in evaluation."""
        return scores[:, -1] if scores.dim() == 4 else scores
