"""The Conv-4 backbone of the few-shot literature."""

from __future__ import annotations

import torch
from torch import nn


class Conv4(nn.Module):
    """Four blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool, flattened to an embedding.

    The backbone of Vinyals et al. (2016), Finn et al. (2017) and Snell et al. (2017). Batch norm uses the
    statistics of the current batch by default (``track_running_stats=False``), as in the original MAML
    code: running averages mix support and query sets of unrelated tasks and make evaluation depend on
    the order episodes were seen.

    Args:
        in_channels: channels of the input images.
        image_size: height and width of the (square) input images; sets ``out_features``.
        hidden: filters in every block.
        track_running_stats: keep BatchNorm running averages and use them in eval mode.
    """

    def __init__(
        self, in_channels: int = 3, image_size: int = 28, hidden: int = 64, track_running_stats: bool = False
    ) -> None:
        super().__init__()
        blocks, channels, size = [], in_channels, image_size
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=track_running_stats),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels, size = hidden, size // 2
        if size < 1:
            raise ValueError(f"Conv4 needs images of at least 16x16 pixels, got image_size={image_size}")
        self.in_channels, self.image_size = in_channels, image_size
        self.features = nn.Sequential(*blocks)
        self.out_features = hidden * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_channels, image_size, image_size)`` -> ``(batch, out_features)``."""
        return self.features(x).flatten(1)
