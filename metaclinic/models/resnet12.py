"""The ResNet-12 backbone of the few-shot literature."""

from __future__ import annotations

import torch
from torch import nn

from metaclinic.models.max_pool import MaxPool2d
from metaclinic.models.normalization import Norm, make_norm


class ResidualBlock(nn.Module):
    """Three 3x3 conv + norm layers (LeakyReLU 0.1 between them), a 1x1 conv + norm shortcut, then a pool.

    The convolutions have no bias, for the reason :class:`~metaclinic.models.Conv4` gives: the norm after
    each one subtracts it again.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels, dims=2)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels, dims=2)
        self.conv3 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm3 = make_norm(norm, out_channels, dims=2)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            make_norm(norm, out_channels, dims=2),
        )
        self.activation = nn.LeakyReLU(0.1)
        self.pool = MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.norm1(self.conv1(x)))
        out = self.activation(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.pool(self.activation(out + self.shortcut(x)))


class ResNet12(nn.Module):
    """Four residual blocks of widths ``widths``, each ending in a 2x2 max-pool, global-average-pooled.

    The ResNet-12 of Oreshkin, Rodríguez and Lacoste, "TADAM: Task dependent adaptive metric for improved
    few-shot learning", NeurIPS 2018 (https://arxiv.org/abs/1805.10123), with the widths (64, 160, 320, 640)
    of Lee, Maji, Ravichandran and Soatto, "Meta-Learning with Differentiable Convex Optimization"
    (MetaOptNet), CVPR 2019 (https://arxiv.org/abs/1904.03758). Each block is three 3x3 convolutions with
    norm and LeakyReLU(0.1) (no activation after the third, before the sum), a 1x1 convolution + norm
    shortcut, LeakyReLU after the sum and a 2x2 max-pool (:class:`~metaclinic.models.max_pool.MaxPool2d`,
    torch's outputs and gradients, faster on CPU). The embedding is the global average of the last block's
    maps, so ``out_features = widths[-1]`` whatever the image size: MedMNIST's 28x28 images are 1x1 after
    four pools anyway (28, 14, 7, 3, 1), and averaging keeps larger images (84x84: 5x5 maps) at the same
    width instead of a 25x wider flattened vector. MetaOptNet's DropBlock regularisation is left out: it is
    random per forward pass, which would make an inner loop's steps and a query's prediction stochastic.

    The norms are those of :mod:`metaclinic.models.normalization`, by default the support set's moments
    (``norm="support"``): a query's embedding depends only on the support set and the query. Plain
    ``nn.Conv2d`` layers, so learn2learn's MAML ``clone``/``adapt`` updates every weight.

    Args:
        input_shape: ``(channels, height, width)`` of one image; the command line fills it in from the data.
        widths: output channels of each block (one block per entry; four in the standard network).
        norm: ``"support"``, ``"task_norm"``, ``"transductive"`` or ``"running"``, as for Conv-4.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 28, 28),
        widths: tuple[int, ...] = (64, 160, 320, 640),
        norm: Norm = "support",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"ResNet12 takes images (channels, height, width), got input_shape={input_shape}"
            )
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"ResNet12 widths must be positive integers, got widths={widths}")
        channels, height, width = input_shape
        smallest = 2 ** len(widths)
        if height < smallest or width < smallest:
            raise ValueError(
                f"ResNet12 with {len(widths)} blocks needs images of at least {smallest}x{smallest} pixels, "
                f"got input_shape={input_shape}"
            )
        blocks = []
        for out_channels in widths:
            blocks.append(ResidualBlock(channels, out_channels, norm))
            channels = out_channels
        self.input_shape = tuple(input_shape)
        self.widths = widths
        self.features = nn.Sequential(*blocks)
        self.out_features = widths[-1]
        for module in self.modules():  # MetaOptNet's initialisation; the norms start at weight 1, bias 0
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, *input_shape)`` -> ``(batch, out_features)``."""
        return self.features(x).mean((2, 3))
