"""LSTM meta-learner: Ravi and Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017,
https://openreview.net/forum?id=rJY0-Kcll.

The learner (backbone and a linear ``n_way`` head) is trained on the support set by a learned optimizer: a
coordinate-wise LSTM whose cell state is the learner's parameters. For every coordinate, with gradient
``grad_t`` and support loss ``loss_t`` at ``theta_{t-1}``,
``i_t = sigmoid(W_I [grad_t, loss_t, theta_{t-1}, i_{t-1}] + b_I)``,
``f_t = sigmoid(W_F [grad_t, loss_t, theta_{t-1}, f_{t-1}] + b_F)`` and
``theta_t = c_t = f_t * c_{t-1} + i_t * (-grad_t)``: gradient descent with a learned, per-coordinate step
size ``i_t`` and shrinkage ``f_t`` (``f = 1``, ``i = lr`` is plain SGD). The cell's initial state ``c_0`` is
the learner's own meta-learned weights. Gradient and loss enter the gates preprocessed as in the paper's
appendix (``log|x| / p`` and ``sign x``, ``p = 10``), and, as in the paper, as constants: the meta-gradient
does not go through the learner's gradients (first order), but reaches ``c_0`` and the gate weights through
the updates. The adapted model is the learner with the final weights.

Simplified: the gates read the preprocessed inputs directly, without the paper's first LSTM layer (20
hidden units) in front of them; the gate weights start at zero, so meta-training starts from gradient descent
with step ``inner_lr`` (the paper: small uniform weights, input-gate bias in [-5, -4]); every step takes the
whole support set as one batch; batch norm is the backbone's own (by default the support set's moments, so
nothing is kept per step).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.adapted import AdaptedNetwork
from metaclinic.algorithms.base import full_precision
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.data.task import Task
from metaclinic.errors import DataError


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """``(..., 2)``: ``(log|x| / p, sign x)`` where ``|x| >= e^-p``, else ``(-1, e^p x)`` (the paper's
    appendix A, after Andrychowicz et al.): gradients and losses of any magnitude on one scale."""
    large = x.abs() >= math.exp(-p)
    magnitude = torch.where(large, x.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(x))
    direction = torch.where(large, x.sign(), x * math.exp(p))
    return torch.stack([magnitude, direction], -1)


def with_weights(network: nn.Module, weights: dict[str, Tensor]) -> nn.Module:
    """A copy of ``network`` whose parameters are ``weights``: in training tensors with a graph back to the
    meta-parameters, as learn2learn's adapted clones hold (``frozen`` makes them plain for export), in
    evaluation constant parameters."""
    clone = copy.deepcopy(network)
    for name, weight in weights.items():
        owner, _, attribute = name.rpartition(".")
        constant = weight.is_leaf and not isinstance(weight, nn.Parameter)
        clone.get_submodule(owner)._parameters[attribute] = (
            nn.Parameter(weight, False) if constant else weight
        )
    return clone


class LSTMMetaLearner(InnerLoopModule):
    """A learner adapted to the support set by a meta-learned coordinate-wise LSTM update.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        forget_gate_bias: initial bias of the forget gate (the paper: 4 to 6, ``f`` close to 1).
        preprocessing_p: ``p`` of the gradient and loss preprocessing.
        first_order: must be ``True``: the paper's meta-gradient ignores second derivatives.
        **kwargs: settings of :class:`InnerLoopModule`: ``n_way``, ``inner_lr`` (the initial input gate,
            that is the initial step size, in (0, 1)), ``train_steps``, ``eval_steps``, ``optimizer``,
            ``scheduler``, ``init_from``; the step sizes are learned, so ``eval_inner_lr`` is refused.
    """

    # The support passes are outside the graph (gradients enter as constants): one backward per meta-batch.
    backward_per_task = False

    def __init__(
        self,
        backbone: nn.Module,
        forget_gate_bias: float = 5.0,
        preprocessing_p: float = 10.0,
        first_order: bool = True,
        **kwargs,
    ) -> None:
        if not first_order:
            raise DataError("LSTMMetaLearner ignores second derivatives, as the paper; set first_order: true")
        if kwargs.get("eval_inner_lr") is not None:
            raise DataError("LSTMMetaLearner learns its step sizes; remove model.init_args.eval_inner_lr")
        super().__init__(first_order=True, **kwargs)
        if not 0 < self.inner_lr < 1:
            raise DataError(
                f"inner_lr is the initial input gate (a sigmoid): it must be in (0, 1), not {self.inner_lr}"
            )
        self.forget_gate_bias, self.preprocessing_p = forget_gate_bias, preprocessing_p
        self.network = nn.Sequential(backbone, nn.Linear(backbone.out_features, self.n_way))
        # Inputs per coordinate: gradient (2), loss (2), parameter, the gate's previous value (0 at first).
        self.input_gate, self.forget_gate = nn.Linear(6, 1), nn.Linear(6, 1)
        nn.init.zeros_(self.input_gate.weight)
        nn.init.zeros_(self.forget_gate.weight)
        nn.init.constant_(self.input_gate.bias, math.log(self.inner_lr / (1 - self.inner_lr)))  # i = inner_lr
        nn.init.constant_(self.forget_gate.bias, forget_gate_bias)

    @property
    def backbone(self) -> nn.Module:
        return self.network[0]

    def lstm_step(
        self, theta: Tensor, grad: Tensor, loss: Tensor, gates: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``c_t`` and ``(i_t, f_t)`` from the flat weights ``c_{t-1}``, their gradient, ``(i, f)_{t-1}``."""
        p = self.preprocessing_p
        shared = torch.cat(
            [preprocess(grad, p), preprocess(loss, p).expand(len(theta), 2), theta[:, None]], 1
        )
        i, f = (
            torch.sigmoid(gate(torch.cat([shared, previous[:, None]], 1))).squeeze(1)
            for gate, previous in zip((self.input_gate, self.forget_gate), gates, strict=True)
        )
        return f * theta - i * grad, (i, f)

    def adapted_weights(self, support_x: Tensor, support_y: Tensor) -> dict[str, Tensor]:
        """The learner's weights after the LSTM's steps on the support set (``c_T``), by parameter name.

        The graph back to ``c_0`` and the gates is kept only in training with gradients on; the support
        passes run on detached weights (gradients and losses are the LSTM's constant inputs).
        """
        self.require_autograd()
        keep_graph = self.training and torch.is_grad_enabled()
        names = [name for name, _ in self.network.named_parameters()]
        meta = list(self.network.parameters())
        shapes = [p.shape for p in meta]
        with full_precision(support_x.device), torch.set_grad_enabled(keep_graph):
            support_x = support_x.to(meta[0].dtype)
            theta = torch.cat([p.flatten() for p in meta])
            gates = (torch.zeros_like(theta), torch.zeros_like(theta))
            for _ in range(self.train_steps if self.training else self.eval_steps):
                with torch.enable_grad():
                    current = theta.detach().requires_grad_()
                    weights = dict(zip(names, self.unflatten(current, shapes), strict=True))
                    logits = torch.func.functional_call(self.network, weights, (support_x,))
                    loss = F.cross_entropy(logits, support_y)
                    (grad,) = torch.autograd.grad(loss, current)
                theta, gates = self.lstm_step(theta, grad, loss.detach(), gates)
        return dict(zip(names, self.unflatten(theta, shapes), strict=True))

    @staticmethod
    def unflatten(flat: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
        sizes = [math.prod(shape) for shape in shapes]
        return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]

    def adapt(self, task: Task) -> nn.Module:
        weights = self.adapted_weights(task.support_x, task.support_y)
        return AdaptedNetwork(with_weights(self.network, weights), task.support_x)
