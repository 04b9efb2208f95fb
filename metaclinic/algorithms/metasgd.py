"""Meta-SGD: Li, Zhou, Chen and Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017,
https://arxiv.org/abs/1707.09835.

MAML with a learned step size for every parameter element: the inner update is
``theta - alpha * grad`` with ``alpha`` (same shape as ``theta``) meta-learned in the outer loop.
"""

from __future__ import annotations

from torch import nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.maml import MAML
from metaclinic.errors import DataError


class MetaSGD(MAML):
    """Meta-SGD through ``learn2learn.algorithms.MetaSGD``; ``inner_lr`` initialises the learned step sizes.

    The learned step sizes are used in evaluation too, so ``eval_inner_lr`` does not apply.
    """

    def __init__(self, backbone: nn.Module, **kwargs) -> None:
        if kwargs.get("eval_inner_lr") is not None:
            raise DataError("MetaSGD learns its inner step sizes; remove model.init_args.eval_inner_lr")
        super().__init__(backbone, **kwargs)

    def wrap(self, network: nn.Module) -> nn.Module:
        return l2l.algorithms.MetaSGD(network, lr=self.inner_lr, first_order=self.first_order)
