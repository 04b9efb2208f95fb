"""The Conv-4 backbone of the few-shot literature."""

from __future__ import annotations

import torch
from torch import nn

from metaclinic.models.max_pool import MaxPool2d
from metaclinic.models.normalization import Norm, make_norm


class Conv4(nn.Module):
    """Four blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool, flattened to an embedding.

    The backbone of Vinyals et al. (2016), Finn et al. (2017) and Snell et al. (2017). Its batch norm
    normalises with the moments of the episode's support set by default (``norm="support"``, see
    :mod:`metaclinic.models.normalization`), so that a query's prediction depends only on the support set
    and the query itself; the original MAML code's batch statistics over support and query together are
    ``norm="transductive"``. The convolutions have no bias: batch norm subtracts it again, so its
    gradient is zero up to rounding, and Adam would turn that rounding noise into full-size random steps
    (which made runs differ between one and several processes).

    Args:
        input_shape: ``(channels, height, width)`` of one image; the command line fills it in from the data.
        hidden: filters in every block.
        norm: ``"support"`` (support-set moments), ``"task_norm"`` (TaskNorm-I), ``"transductive"`` (batch
            statistics of whatever is in the batch) or ``"running"`` (running averages in eval mode).
        channels_last: compute in the channels-last memory layout (for accelerators whose kernels prefer
            it). On CPU it gains nothing since the max-pool finds its maxima with the channels-last kernel
            anyway (ProtoNet 13.7 against 14.1 tasks/s) and slows second-order MAML (5.5 against 6.8); see
            the README's performance section.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 28, 28),
        hidden: int = 64,
        norm: Norm = "support",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"Conv4 takes images (channels, height, width), got input_shape={input_shape}")
        channels, height, width = input_shape
        blocks = []
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, hidden, kernel_size=3, padding=1, bias=False),
                make_norm(norm, hidden, dims=2),
                nn.ReLU(inplace=True),
                MaxPool2d(2),
            ]
            channels, height, width = hidden, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"Conv4 needs images of at least 16x16 pixels, got input_shape={input_shape}")
        self.input_shape = tuple(input_shape)
        self.features = nn.Sequential(*blocks)
        self.out_features = hidden * height * width
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.features.to(memory_format=self.memory_format)  # the convolution weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, *input_shape)`` -> ``(batch, out_features)``."""
        return self.features(x.contiguous(memory_format=self.memory_format)).flatten(1)
