"""The fully convolutional network (FCN) of Wang, Yan and Oates for time series: the 1-D baseline backbone."""

from __future__ import annotations

import torch
from torch import nn

from metaclinic.models.normalization import Norm, make_norm


class FCN1D(nn.Module):
    """Three blocks of 1-D convolution, normalisation and ReLU, then global average pooling over time.

    Wang, Yan and Oates, "Time series classification from scratch with deep neural networks: a strong
    baseline", IJCNN 2017, https://arxiv.org/abs/1611.06455: 128, 256 and 128 filters of widths 8, 5 and 3,
    stride 1 and "same" padding, so that the series keeps its length until the average over time, which
    makes the embedding (the last block's filters, ``out_features``) independent of the series' length. With
    the classification layer removed, it is the embedding network that metric and optimisation-based
    meta-learners adapt.

    As in :class:`~metaclinic.models.Conv4`, the normalisation takes the moments of the episode's support set
    by default (``norm="support"``), so that a query's prediction depends only on the support set and itself
    (the paper's batch norm on the current batch is ``norm="transductive"``), and the convolutions have no
    bias, which the normalisation would subtract again.

    Args:
        input_shape: ``(channels, length)`` of one series; the command line fills it in from the data.
        filters: filters of each block; ``(128, 256, 128)`` in the paper, e.g. ``(16, 32, 16)`` for tests.
        kernel_sizes: the convolution width of each block, one per entry of ``filters``.
        norm: ``"support"`` (support-set moments), ``"task_norm"`` (TaskNorm-I), ``"transductive"`` (batch
            statistics of whatever is in the batch) or ``"running"`` (running averages in eval mode).
    """

    def __init__(
        self,
        input_shape: tuple[int, int] = (1, 140),
        filters: tuple[int, ...] = (128, 256, 128),
        kernel_sizes: tuple[int, ...] = (8, 5, 3),
        norm: Norm = "support",
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"FCN1D takes series (channels, length), got input_shape={input_shape}")
        filters, kernel_sizes = tuple(filters), tuple(kernel_sizes)
        if not filters or len(filters) != len(kernel_sizes):
            raise ValueError(
                f"FCN1D needs one kernel size per block, got filters={filters}, kernel_sizes={kernel_sizes}"
            )
        if any(n < 1 for n in (*filters, *kernel_sizes)):
            raise ValueError(
                f"FCN1D filters and kernel sizes must be positive, got {filters}, {kernel_sizes}"
            )
        channels = input_shape[0]
        blocks: list[nn.Module] = []
        for width, kernel in zip(filters, kernel_sizes, strict=True):
            # "Same" padding, an even kernel's extra zero on the right (as Keras and torch pad); explicit,
            # since torch's padding="same" copies the input for even kernels anyway, with a warning.
            left = (kernel - 1) // 2
            blocks += [
                nn.ConstantPad1d((left, kernel - 1 - left), 0.0),
                nn.Conv1d(channels, width, kernel_size=kernel, bias=False),
                make_norm(norm, width, dims=1),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.input_shape = tuple(input_shape)
        self.features = nn.Sequential(*blocks)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, length)`` -> ``(batch, out_features)``: the last block averaged over time."""
        return self.features(x).mean(-1)
